"""The fake executor: steps that run nowhere, scripted by their environment.

Like Woodpecker's dummy backend, it lets the job runner's every path (retries, cancel,
timeouts, lost leases, engine failures) be tested in milliseconds without Docker. A step
does what these keys of its environment say (all optional):

- ``FAKE_OUTPUT``: lines printed on stdout (``\\n``-separated), before anything else;
- ``FAKE_SLEEP``: seconds the step "runs" (``wait`` honours ``step.timeout`` and ``kill``);
- ``FAKE_EXIT_CODE``: its exit code (default 0);
- ``FAKE_OOM``: ``1`` to end as OOM-killed (exit 137);
- ``FAKE_IMAGE_MISSING``: ``1`` for an image that cannot be pulled (fails before running);
- ``FAKE_START_ERROR``: ``1`` to make ``start`` raise InfrastructureError (engine down);
- ``FAKE_FAIL_TIMES``: ``N``: the first N starts of this step (same run, job and step
  name, on this executor) exit with ``FAKE_EXIT_CODE`` (default 1), later ones with 0.

``calls`` records what the worker asked, in order, for tests to assert on.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from worker.executors.contract import (
    InfrastructureError,
    JobSpec,
    LogLine,
    Reason,
    StepHandle,
    StepOutcome,
    StepSpec,
    classify,
)


class FakeStepHandle(StepHandle):
    """A scripted step: its lines, its planned exit and the event that ends it early."""

    def __init__(self, job: JobSpec, step: StepSpec, exit_code: int, oom: bool) -> None:
        super().__init__(job, step)
        self.planned_exit = exit_code
        self.oom = oom
        self.killed = threading.Event()


class FakeExecutor:
    """Satisfies ``Executor``; see the module docstring for how a step is scripted."""

    name = "fake"

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self._starts: Counter[tuple[str, str, str]] = Counter()
        self._lock = threading.Lock()
        self._prepared: set[tuple[str, str]] = set()

    def _record(self, *call: str) -> None:
        with self._lock:
            self.calls.append(call)

    def prepare(self, job: JobSpec) -> None:
        self._record("prepare", job.job)
        with self._lock:
            self._prepared.add((job.run_id, job.job))

    def start(self, job: JobSpec, step: StepSpec) -> FakeStepHandle:
        self._record("start", job.job, step.name)
        env = step.env
        if env.get("FAKE_START_ERROR") == "1":
            raise InfrastructureError("fake engine: cannot create the step's container")
        key = (job.run_id, job.job, step.name)
        with self._lock:
            self._starts[key] += 1
            starts = self._starts[key]
        exit_code = int(env.get("FAKE_EXIT_CODE", "0"))
        if "FAKE_FAIL_TIMES" in env:
            exit_code = (exit_code or 1) if starts <= int(env["FAKE_FAIL_TIMES"]) else 0
        handle = FakeStepHandle(job, step, exit_code, env.get("FAKE_OOM") == "1")
        if env.get("FAKE_IMAGE_MISSING") == "1":
            handle.fail_early("image_pull_failure", f"fake engine: image {step.image!r} not found")
        return handle

    def tail(self, handle: StepHandle) -> Iterator[LogLine]:
        assert isinstance(handle, FakeStepHandle)
        if handle.early_outcome is not None:
            yield from handle.early_lines
            return
        output = handle.step.env.get("FAKE_OUTPUT", "")
        for text in output.split("\n") if output else ():
            yield LogLine("stdout", text)
        handle.finished.wait()

    def wait(self, handle: StepHandle) -> StepOutcome:
        assert isinstance(handle, FakeStepHandle)
        if handle.outcome is not None:
            return handle.outcome
        runs_for = float(handle.step.env.get("FAKE_SLEEP", "0"))
        timed_out = False
        if runs_for > handle.step.timeout:
            timed_out = not handle.killed.wait(handle.step.timeout)
        else:
            handle.killed.wait(runs_for)
        if timed_out:
            handle.claim_kill("timeout")
        with handle.lock:
            if handle.outcome is None:
                kill: Reason | None = handle.kill_reason
                exit_code = 143 if kill is not None else (137 if handle.oom else handle.planned_exit)
                handle.outcome = StepOutcome(
                    exit_code, classify(exit_code, kill, handle.oom), time.monotonic() - handle.started
                )
            handle.finished.set()
        return handle.outcome

    def kill(self, handle: StepHandle, reason: Reason = "cancelled") -> None:
        assert isinstance(handle, FakeStepHandle)
        self._record("kill", handle.job.job, handle.step.name, reason)
        if handle.claim_kill(reason):
            handle.killed.set()

    def cleanup(self, job: JobSpec) -> None:
        self._record("cleanup", job.job)
        with self._lock:
            self._prepared.discard((job.run_id, job.job))

    def reap_orphans(self, worker_name: str) -> int:
        return 0

    def check_data_dir(self, data_dir: Path) -> None:
        """Fake steps touch no files: any data directory will do."""
