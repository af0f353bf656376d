"""Following a run while another thread drives it through a real state store."""
from __future__ import annotations

import io
import itertools
import re
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
from rich.console import Console

from coordinator.follow import DagView, follow, follow_logs, log_lines
from coordinator.status_view import ordered_jobs
from shared.state import Claim, JobMeta, StateStore, UnknownJob, UnknownRun, open_state

PLAN = {
    "levels": [["build"], ["lint", "test"]],
    "jobs": {"build": {"depends_on": []}, "lint": {"depends_on": ["build"]}, "test": {"depends_on": ["build"]}},
}
GIVE_UP_S = 10  # a follower that never ends fails the test instead of hanging the suite
_ids = itertools.count(1)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    state = open_state(f"sqlite:///{tmp_path}/state.db")
    yield state
    state.close()


def new_run(store: StateStore) -> str:
    run_id = f"run-{next(_ids)}"
    store.create_run(run_id, "demo", {"build": JobMeta(), "lint": JobMeta(allow_failure=True), "test": JobMeta()},
                     PLAN, {})
    return run_id


def claim(store: StateStore, run_id: str, job: str, worker: str = "celery@w1") -> int:
    result = store.claim(run_id, job, worker, 60_000)
    assert isinstance(result, Claim)
    return result.token


def pipeline(store: StateStore, run_id: str, pause: float = 0.05) -> None:
    """build succeeds; test fails once, is retried and succeeds; lint fails (allowed)."""
    time.sleep(pause)  # let the follower start first, so it sees the run live
    token = claim(store, run_id, "build")
    store.append_logs(run_id, "build", [("stdout", "compiling"), ("stderr", "warning: unused")])
    time.sleep(pause)
    store.append_logs(run_id, "build", [("stdout", "built")])
    assert store.finish(run_id, "build", token, "success", exit_code=0)
    token = claim(store, run_id, "test", "celery@w2")
    store.append_logs(run_id, "test", [("stdout", "test attempt 1\n")])
    assert store.finish(run_id, "test", token, "retrying", exit_code=1, reason="script_failure", retry_delay=0.1)
    lint = claim(store, run_id, "lint")
    store.append_logs(run_id, "lint", [("stdout", "\x1b[31mE501\x1b[0m line too long")])
    assert store.finish(run_id, "lint", lint, "failed", exit_code=1, reason="script_failure")
    time.sleep(pause)
    token = claim(store, run_id, "test", "celery@w2")
    store.append_logs(run_id, "test", [("stdout", "test attempt 2")])
    assert store.finish(run_id, "test", token, "success", exit_code=0)


class Driver:
    """Runs `steps` in a background thread; `join` re-raises whatever failed there."""

    def __init__(self, steps: Callable[[], None]) -> None:
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(steps,), daemon=True)
        self.thread.start()

    def _run(self, steps: Callable[[], None]) -> None:
        try:
            steps()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self.error = exc

    def join(self) -> None:
        self.thread.join(GIVE_UP_S)
        assert not self.thread.is_alive(), "driver did not finish"
        if self.error is not None:
            raise self.error


def run_follow(store: StateStore, run_id: str, steps: Callable[[], None] | None, **options) -> tuple[str, str]:
    """follow() while `steps` drive the run; returns (status, everything printed)."""
    console = options.pop("console", None) or Console(file=io.StringIO(), width=80)
    stop = threading.Event()
    timer = threading.Timer(GIVE_UP_S, stop.set)
    timer.start()
    driver = Driver(steps) if steps is not None else None
    try:
        status = follow(store, run_id, console=console, poll_ms=20, stop=stop, **options)
    finally:
        timer.cancel()
    if driver is not None:
        driver.join()
    assert not stop.is_set(), "follow did not notice the end of the run"
    return status, console.file.getvalue()


def positions(output: str, *needles: str) -> list[int]:
    found = [output.find(n) for n in needles]
    assert -1 not in found, [n for n, at in zip(needles, found) if at == -1]
    return found


def test_follow_prints_logs_transitions_and_summary_when_piped(store: StateStore) -> None:
    run_id = new_run(store)
    status, out = run_follow(store, run_id, lambda: pipeline(store, run_id))
    assert status == "success"
    assert "\x1b" not in out  # no colour or cursor codes when not a terminal, not even the job's own
    lines = out.splitlines()
    assert [line for line in lines if " | " in line or " ! " in line] == [
        "build | compiling",
        "build ! warning: unused",
        "build | built",
        "test  | test attempt 1",
        "lint  | E501 line too long",
        "test  | test attempt 2",
    ]
    transitions = [re.sub(r"^\[\d\d:\d\d:\d\d\] ", "", line) for line in lines if re.match(r"\[\d\d:", line)]
    assert transitions == [
        "build: running (attempt 1, on celery@w1)",
        "build: success (exit 0)",
        "test: running (attempt 1, on celery@w2)",
        "test: retrying (script_failure, exit 1, retry in 0.1s)",
        "lint: running (attempt 1, on celery@w1)",
        "lint: failed (script_failure, exit 1)",
        "test: running (attempt 2, on celery@w2)",
        "test: success (exit 0)",
    ]
    # A job's lines come between the line that starts it and the line that ends it.
    run_at, first, last, done = positions(out, "build: running", "build | compiling", "build | built", "build: success")
    assert run_at < first < last < done
    summary = lines[lines.index(next(l for l in lines if l.startswith("JOB"))):]
    assert summary[0].split() == ["JOB", "STATUS", "REASON", "ATTEMPTS", "DURATION", "WORKER"]
    rows = {row.split()[0]: row for row in summary[1:4]}
    assert rows["build"].split()[1] == "success" and rows["build"].split()[-1] == "celery@w1"
    assert "failed (allowed)" in rows["lint"] and "script_failure" in rows["lint"]
    assert rows["test"].split()[1:4] == ["success", "-", "2"]
    assert re.fullmatch(r"run run-\d+: success in \d+\.\ds", summary[4])


def test_follow_only_one_job_and_without_logs(store: StateStore) -> None:
    run_id = new_run(store)
    status, out = run_follow(store, run_id, lambda: pipeline(store, run_id), job="test")
    assert status == "success"
    assert [l for l in out.splitlines() if " | " in l] == ["test | test attempt 1", "test | test attempt 2"]
    assert "lint: failed" in out  # transitions of the other jobs still show the run's progress

    run_id = new_run(store)
    status, out = run_follow(store, run_id, lambda: pipeline(store, run_id), logs=False)
    assert status == "success"
    assert " | " not in out and " ! " not in out
    assert "test: retrying" in out


def test_follow_a_failing_run_returns_failed(store: StateStore) -> None:
    run_id = new_run(store)

    def steps() -> None:
        token = claim(store, run_id, "build")
        store.append_logs(run_id, "build", [("stderr", "boom")])
        store.finish(run_id, "build", token, "failed", exit_code=2, reason="script_failure")
        store.skip(run_id, "lint", "upstream_failed")
        store.skip(run_id, "test", "upstream_failed")

    status, out = run_follow(store, run_id, steps)
    assert status == "failed"
    assert "build ! boom" in out
    assert "test: skipped (upstream_failed)" in out
    assert re.search(r"^run run-\d+: failed in ", out, re.M)


def test_a_late_follower_replays_a_finished_run(store: StateStore) -> None:
    run_id = new_run(store)
    pipeline(store, run_id, pause=0)
    started = time.monotonic()
    status, out = run_follow(store, run_id, None)
    assert time.monotonic() - started < 2
    assert status == "success"
    assert "test  | test attempt 2" in out and "build: success (exit 0)" in out


def test_stop_gives_up_and_reports_the_status_so_far(store: StateStore) -> None:
    run_id = new_run(store)
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    console = Console(file=io.StringIO())
    started = time.monotonic()
    assert follow(store, run_id, console=console, poll_ms=20, stop=stop) == "running"
    assert time.monotonic() - started < 2
    assert "build" in console.file.getvalue()  # the summary of where things stand


def test_unknown_run_and_job(store: StateStore) -> None:
    console = Console(file=io.StringIO())
    with pytest.raises(UnknownRun):
        follow(store, "nope", console=console)
    with pytest.raises(UnknownJob):
        follow(store, new_run(store), console=console, job="nope")


def test_live_view_on_a_terminal(store: StateStore) -> None:
    run_id = new_run(store)
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    status, out = run_follow(store, run_id, lambda: pipeline(store, run_id), console=console)
    assert status == "success"
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
    assert "build | compiling" in plain and "test  | test attempt 2" in plain
    assert "test: retrying" not in plain  # the view shows transitions; no extra lines
    assert re.search(r"run run-\d+: success in", plain)
    assert re.search(r"test\s+success\s+-\s+2\s", plain)  # the summary table


def test_dag_view_shows_levels_states_and_a_retry_countdown(store: StateStore) -> None:
    run_id = new_run(store)
    token = claim(store, run_id, "build")
    store.finish(run_id, "build", token, "retrying", exit_code=1, reason="timeout", retry_delay=90)
    view = DagView(run_id, "demo", store.get_run(run_id).created_at, PLAN)
    view.update("running", ordered_jobs(store, run_id))
    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(view)
    rows = console.file.getvalue().splitlines()
    assert f"run {run_id} · demo · running" in rows[0] and "0/3 jobs done" in rows[0]
    assert re.search(r"L0 . build\s+retrying \(in 1m 2\ds\)\s+\S+\s+#1\s+timeout, exit 1", rows[1]), rows[1]
    assert re.search(r"L1 . lint\s+pending\s+after build", rows[2]), rows[2]
    assert re.search(r"^\s+. test\s+pending\s+after build", rows[3]), rows[3]


def test_follow_logs_prints_stored_lines_in_plan_order(store: StateStore) -> None:
    run_id = new_run(store)
    pipeline(store, run_id, pause=0)
    out = io.StringIO()
    follow_logs(store, run_id, out=out)
    assert out.getvalue().splitlines() == [
        "build | compiling",
        "build ! warning: unused",
        "build | built",
        "lint  | E501 line too long",  # not a terminal: the job's colours are left out
        "test  | test attempt 1",
        "test  | test attempt 2",
    ]
    coloured = io.StringIO()
    follow_logs(store, run_id, "lint", out=coloured, colour=True)  # a terminal with colour
    assert coloured.getvalue() == "\x1b[31mE501\x1b[0m line too long\x1b[0m\n"
    one = io.StringIO()
    follow_logs(store, run_id, "test", out=one)
    assert one.getvalue() == "test attempt 1\ntest attempt 2\n"
    with pytest.raises(UnknownJob):
        follow_logs(store, run_id, "nope", out=io.StringIO())
    with pytest.raises(UnknownRun):
        follow_logs(store, "nope", out=io.StringIO())


def test_follow_logs_of_a_job_ends_when_the_job_ends(store: StateStore) -> None:
    run_id = new_run(store)
    token = claim(store, run_id, "build")
    store.append_logs(run_id, "build", [("stdout", "one")])

    def steps() -> None:
        time.sleep(0.1)
        store.append_logs(run_id, "build", [("stdout", "two")])
        time.sleep(0.1)
        store.append_logs(run_id, "build", [("stdout", "three")])
        store.finish(run_id, "build", token, "success", exit_code=0)

    driver = Driver(steps)
    out = io.StringIO()
    started = time.monotonic()
    follow_logs(store, run_id, "build", follow=True, out=out, poll_ms=20)
    driver.join()
    assert time.monotonic() - started < GIVE_UP_S
    assert out.getvalue() == "one\ntwo\nthree\n"
    assert store.get_run(run_id).status == "running"  # the job ended, not the run


def test_follow_logs_of_a_run_ends_when_the_run_ends(store: StateStore) -> None:
    run_id = new_run(store)
    driver = Driver(lambda: pipeline(store, run_id))
    out = io.StringIO()
    follow_logs(store, run_id, follow=True, out=out, poll_ms=20)
    driver.join()
    assert store.get_run(run_id).status == "success"
    assert out.getvalue().splitlines()[-1] == "test  | test attempt 2"
    assert len(out.getvalue().splitlines()) == 6


@pytest.mark.parametrize(
    ("text", "lines"),
    [("a", ["a"]), ("a\n", ["a"]), ("a\nb", ["a", "b"]), ("", [""]), ("10%\r50%\r100%", ["100%"]),
     ("done\r", ["done"])],
)
def test_log_lines(text: str, lines: list[str]) -> None:
    assert log_lines(text) == lines


def test_follow_a_run_in_redis(redis_url: str) -> None:
    redis_store = open_state(redis_url)
    try:
        run_id = f"follow-{time.time_ns()}"  # the Redis server is shared by the session
        redis_store.create_run(run_id, "demo", {"build": JobMeta(), "lint": JobMeta(allow_failure=True),
                                                "test": JobMeta()}, PLAN, {})
        status, out = run_follow(redis_store, run_id, lambda: pipeline(redis_store, run_id))
        assert status == "success"
        assert [l for l in out.splitlines() if l.startswith("test  |")] == [
            "test  | test attempt 1", "test  | test attempt 2"]
        assert "test: retrying (script_failure, exit 1, retry in 0.1s)" in out
    finally:
        redis_store.close()


def test_dag_view_shows_a_running_deployment_s_weights_gate_and_analysis(store: StateStore) -> None:
    from deploy.view import summary

    run_id = new_run(store)
    claim(store, run_id, "build")
    plan = {**PLAN, "jobs": {**PLAN["jobs"], "build": {**PLAN["jobs"]["build"], "deploy": {"strategy": "canary"}}}}
    record = {
        "strategy": "canary", "state": "waiting_approval", "stable_version": "v1", "new_version": "v2",
        "weights": {"web1": 90, "canary": 10}, "gate": {"name": "go-live"},
        "events": [{"at": "x", "type": "analysis", "verdict": "inconclusive", "requests": 7, "error_rate": 0.0,
                    "latency_ms": 12.0}],
    }
    view = DagView(run_id, "demo", store.get_run(run_id).created_at, plan,
                   deployment=lambda job: summary(record) if job == "build" else None)
    view.update("running", ordered_jobs(store, run_id))
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(view)
    line = console.file.getvalue().splitlines()[1]
    assert "canary waiting_approval, v1 -> v2, web1=90 canary=10, waiting for gate go-live" in line, line
    assert "analysis inconclusive (7 req, 0.0% 5xx, 12 ms)" in line, line


def test_follow_logs_as_json_lines_carry_run_and_job(store: StateStore) -> None:
    import json

    run_id = new_run(store)
    pipeline(store, run_id, pause=0)
    out = io.StringIO()
    follow_logs(store, run_id, out=out, as_json=True)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["job"], r["stream"], r["message"]) for r in records][:3] == [
        ("build", "stdout", "compiling"), ("build", "stderr", "warning: unused"), ("build", "stdout", "built")]
    assert {r["run_id"] for r in records} == {run_id}
    assert all(r["ts"].endswith("Z") for r in records)


def test_dag_view_shows_hostile_names_and_details_as_plain_text(store: StateStore) -> None:
    """Job names (matrix values), worker names and reasons are text: no escapes, no rich markup."""
    name = "test[V=\x1b]0;pwned\x07[link=http://evil]x[/link]\x9b2J]"
    plan = {"levels": [[name]], "jobs": {name: {"depends_on": []}}}
    store.create_run("run-hostile", "demo\x1b[2J", {name: JobMeta()}, plan, {})
    claim(store, "run-hostile", name, worker="w\x1b]8;;http://evil\x1b\\1")
    view = DagView("run-hostile", "demo\x1b[2J", store.get_run("run-hostile").created_at, plan)
    view.update("running", ordered_jobs(store, "run-hostile"))
    console = Console(file=io.StringIO(), width=160, force_terminal=True)
    console.print(view)
    out = console.file.getvalue()
    assert "\x1b]" not in out and "\x1b[2J" not in out and "\x9b" not in out and "\x07" not in out
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)
    assert "test[V=[link=http://evil]x[/link]]" in plain and "on w1" in plain
