"""A job is reported finished only once its whole log is in the state store.

`conveyor logs RUN` right after the run ends must show the last line: the job runner
closes the log sink (a synchronous send) before it writes the job's terminal state, waits
for a step's output to drain however long it keeps coming, and retries a failing store for
a while. Checked at the moment the status is written, on a real SQLite store.
"""
from __future__ import annotations

import textwrap
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from coordinator.frontend import load_text
from shared.state import JobMeta, open_state
from shared.state.base import TERMINAL
from worker import job_runner
from worker.executors.contract import JobSpec, LogLine, StepHandle, StepOutcome, StepSpec
from worker.executors.local import LocalExecutor
from worker.job_runner import WorkerContext, await_reader, run_job
from worker.logs import LogSink
from worker.secrets import Masker

RUN = "20261127-033302-447b0a"
LINES = 20000


class WatchedStore:
    """The real store, plus what a reader could see the moment a job's status became final."""

    def __init__(self, store) -> None:
        self._store = store
        self.at_finish: dict[str, list[str]] = {}

    def __getattr__(self, name: str):
        return getattr(self._store, name)

    def finish(self, run_id: str, job: str, token: int, status: str, **kwargs) -> bool:
        if status in TERMINAL:
            self.at_finish[job] = stored_lines(self._store, run_id, job)
        return self._store.finish(run_id, job, token, status, **kwargs)


def stored_lines(store, run_id: str, job: str) -> list[str]:
    texts, cursor = [], None
    while True:
        batch, cursor = store.read_logs(run_id, job, after=cursor, count=1000)
        if not batch:
            return texts
        texts += [entry.text for entry in batch]


def start_run(tmp_path: Path, pipeline: str):
    result = load_text(textwrap.dedent(pipeline), "p.yml", parameters={}, run_id=RUN)
    assert result.ok, result.diagnostics
    plan = result.plan
    store = open_state("sqlite:///" + str(tmp_path / "state.db"))
    source = tmp_path / "src"
    source.mkdir()
    store.create_run(RUN, plan.pipeline, {name: JobMeta() for name in plan.jobs}, plan.to_dict(),
                     {"source": str(source)})
    return store


def context(store, executor, tmp_path: Path) -> WorkerContext:
    return WorkerContext(store=store, executor=executor, worker_name="w1", data_dir=tmp_path / "data",
                         lease_seconds=5.0)


@pytest.mark.parametrize("exit_code, status, last", [(0, "success", "job succeeded"),
                                                     (3, "failed", "job failed: script_failure (exit code 3)")])
def test_every_line_is_readable_when_the_terminal_state_is_written(tmp_path, exit_code, status, last) -> None:
    store = start_run(tmp_path, f"""
        name: chatty
        jobs:
          talk: {{steps: [{{name: s, script: ["echo first", "seq 1 {LINES}", "exit {exit_code}"]}}]}}
    """)
    watched = WatchedStore(store)
    try:
        result = run_job(context(watched, LocalExecutor(), tmp_path), RUN, "talk")
        assert result["status"] == status
        seen = watched.at_finish["talk"]
        numbers = [line for line in seen if line.isdigit()]
        assert numbers == [str(i) for i in range(1, LINES + 1)]
        assert seen[-1] == last  # the runner's own last line was stored too
        assert stored_lines(store, RUN, "talk") == seen  # nothing arrived afterwards
    finally:
        store.close()


class DrainingExecutor:
    """A step that has ended while its output is still being delivered, slowly.

    Like an engine log stream that lags behind a container that already exited.
    """

    name = "draining"

    def __init__(self, lines: int, gap: float) -> None:
        self.lines, self.gap = lines, gap

    def prepare(self, job: JobSpec) -> None:
        pass

    def start(self, job: JobSpec, step: StepSpec) -> StepHandle:
        return StepHandle(job, step)

    def tail(self, handle: StepHandle) -> Iterator[LogLine]:
        handle.finished.wait()
        for i in range(self.lines):
            time.sleep(self.gap)
            yield LogLine("stdout", f"late {i}")

    def wait(self, handle: StepHandle) -> StepOutcome:
        handle.finished.set()
        return StepOutcome(0, None, 0.0)

    def kill(self, handle: StepHandle, reason: str = "cancelled") -> None:
        pass

    def cleanup(self, job: JobSpec) -> None:
        pass

    def reap_orphans(self, worker_name: str) -> int:
        return 0

    def check_data_dir(self, data_dir: Path) -> None:
        pass


def test_output_still_draining_after_the_step_ended_is_waited_for(tmp_path, monkeypatch) -> None:
    # The reader is silent for at most 0.1 s at a time but needs ~1.2 s in all: far past
    # the idle limit, which only cuts a reader that stopped delivering.
    monkeypatch.setattr(job_runner, "READER_IDLE_LIMIT", 0.4)
    store = start_run(tmp_path, """
        name: lagging
        jobs:
          slow: {steps: [{name: s, script: ["true"]}]}
    """)
    watched = WatchedStore(store)
    try:
        assert run_job(context(watched, DrainingExecutor(lines=12, gap=0.1), tmp_path), RUN, "slow")["status"] \
            == "success"
        seen = watched.at_finish["slow"]
        assert [line for line in seen if line.startswith("late ")] == [f"late {i}" for i in range(12)]
    finally:
        store.close()


def test_a_reader_that_stopped_delivering_is_given_up_after_the_idle_limit() -> None:
    stuck = threading.Event()
    reader = threading.Thread(target=stuck.wait, daemon=True)
    reader.start()
    began = time.monotonic()
    assert await_reader(reader, lambda: 7, idle_limit=0.3, poll=0.05) is False
    assert 0.3 <= time.monotonic() - began < 3
    stuck.set()
    reader.join()
    assert await_reader(reader, lambda: 7, idle_limit=0.3) is True


class BlinkingStore:
    """A store whose log writes fail for `outage` seconds after the first one fails."""

    def __init__(self, store, outage: float) -> None:
        self.store, self.outage, self.down_until = store, outage, None

    def append_logs(self, run_id, job, entries) -> None:
        now = time.monotonic()
        if self.down_until is None:
            self.down_until = now + self.outage
        if now < self.down_until:
            raise ConnectionError("store unreachable")
        self.store.append_logs(run_id, job, entries)


def test_close_keeps_trying_a_failing_store_when_asked_to(tmp_path) -> None:
    store = start_run(tmp_path, """
        name: blink
        jobs:
          j: {steps: [{name: s, script: ["true"]}]}
    """)
    try:
        # An outage longer than the default close retries (~0.3 s), shorter than retry_for.
        sink = LogSink(BlinkingStore(store, outage=1.0), RUN, "j", tmp_path / "j.log", Masker([]),
                       flush_interval=10)
        for i in range(50):
            sink.write("stdout", f"line {i}")
        summary = sink.close(retry_for=5.0)
        assert summary.complete and summary.store_errors >= 3
        assert stored_lines(store, RUN, "j") == [f"line {i}" for i in range(50)]
    finally:
        store.close()
