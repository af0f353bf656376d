"""The job runner's paths, fast: a real SQLite state store and the fake executor.

Each test runs `run_job` as the `conveyor.run_job` task would, turning `Reschedule` into
another call (what Celery's retry does after the countdown), and checks what a user sees:
the job's status, reason, exit code and attempts in the store, and its log.
"""
from __future__ import annotations

import textwrap
import threading
import time
from pathlib import Path

import pytest

from coordinator.frontend import load_text
from shared.state import JobMeta, open_state
from shared.state.base import StateStore
from worker import job_runner
from worker.executors.fake import FakeExecutor
from worker.job_runner import Reschedule, WorkerContext, run_job

RUN = "20261203-120000-abcdef"


def start(tmp_path: Path, pipeline: str) -> StateStore:
    result = load_text(textwrap.dedent(pipeline), "p.yml", parameters={}, run_id=RUN)
    assert result.ok, result.diagnostics
    store = open_state("sqlite:///" + str(tmp_path / "state.db"))
    (tmp_path / "src").mkdir()
    store.create_run(RUN, result.plan.pipeline, {name: JobMeta() for name in result.plan.jobs},
                     result.plan.to_dict(), {"source": str(tmp_path / "src")})
    return store


@pytest.fixture
def executor() -> FakeExecutor:
    return FakeExecutor()


def context(store: StateStore, executor: FakeExecutor, tmp_path: Path, lease: float = 0.6) -> WorkerContext:
    # A short lease: heartbeats (lease / 3) notice a cancel or a lost lease within 0.2 s.
    return WorkerContext(store=store, executor=executor, worker_name="w1", data_dir=tmp_path / "data",
                         lease_seconds=lease)


def run_to_the_end(ctx: WorkerContext, job: str, max_tasks: int = 10) -> tuple[dict, int]:
    """The task's result and how many task executions it took (retries included)."""
    for executions in range(1, max_tasks + 1):
        try:
            return run_job(ctx, RUN, job), executions
        except Reschedule:
            continue
    raise AssertionError(f"{job} still rescheduling after {max_tasks} executions")


def log_of(store: StateStore, job: str) -> list[str]:
    entries, _ = store.read_logs(RUN, job, after=None, count=10_000)
    return [entry.text for entry in entries]


def job_record(store: StateStore, job: str):
    return store.get_jobs(RUN, [job])[job]


def test_success_runs_every_step_and_cleans_up(tmp_path, executor) -> None:
    store = start(tmp_path, """
        name: ok
        jobs:
          build:
            steps:
              - {name: one, script: [x], environment: {FAKE_OUTPUT: "hello\\nworld"}}
              - {name: two, script: [x]}
    """)
    result, executions = run_to_the_end(context(store, executor, tmp_path), "build")
    assert (result["status"], executions) == ("success", 1)
    record = job_record(store, "build")
    assert (record.status, record.exit_code, record.attempt) == ("success", 0, 1)
    assert ["hello", "world"] == [line for line in log_of(store, "build") if line in ("hello", "world")]
    assert [call[0] for call in executor.calls] == ["prepare", "start", "start", "cleanup"]


def test_script_failure_is_retried_up_to_retry_count_then_fails_with_the_exit_code(tmp_path, executor) -> None:
    store = start(tmp_path, """
        name: flaky
        jobs:
          test:
            retry_count: 2
            steps: [{name: s, script: [x], environment: {FAKE_EXIT_CODE: "3"}}]
    """)
    result, executions = run_to_the_end(context(store, executor, tmp_path), "test")
    assert executions == 3  # the first attempt and two retries
    record = job_record(store, "test")
    assert (record.status, record.reason, record.exit_code, record.attempt) == ("failed", "script_failure", 3, 3)
    assert [a.status for a in record.attempts] == ["retrying", "retrying", "failed"]
    assert result == {"run_id": RUN, "job": "test", "status": "failed", "reason": "script_failure", "exit_code": 3}
    assert any("retrying in" in line for line in log_of(store, "test"))


def test_a_retry_that_succeeds_ends_the_job_in_success(tmp_path, executor) -> None:
    store = start(tmp_path, """
        name: flaky
        jobs:
          test:
            retry_count: 3
            steps: [{name: s, script: [x], environment: {FAKE_FAIL_TIMES: "1", FAKE_EXIT_CODE: "2"}}]
    """)
    _, executions = run_to_the_end(context(store, executor, tmp_path), "test")
    record = job_record(store, "test")
    assert (executions, record.status, record.attempt) == (2, "success", 2)


def test_engine_failures_are_retried_beyond_retry_count_then_fail_as_infrastructure(tmp_path, executor) -> None:
    store = start(tmp_path, """
        name: engine
        jobs:
          build: {steps: [{name: s, script: [x], environment: {FAKE_START_ERROR: "1"}}]}
    """)
    _, executions = run_to_the_end(context(store, executor, tmp_path), "build")
    record = job_record(store, "build")
    assert (record.status, record.reason) == ("failed", "infrastructure")
    assert executions == 1 + job_runner_infra_retries()
    assert executor.calls.count(("cleanup", "build")) == executions  # cleaned up after every attempt


def job_runner_infra_retries() -> int:
    from worker.retry_policy import INFRA_RETRIES

    return INFRA_RETRIES


def test_a_step_retry_inside_the_job_is_not_a_new_attempt(tmp_path, executor, monkeypatch) -> None:
    monkeypatch.setattr(job_runner, "step_retry_delay", lambda retry, policy: 0.0)
    store = start(tmp_path, """
        name: steps
        jobs:
          build: {steps: [{name: s, retry_count: 2, script: [x], environment: {FAKE_FAIL_TIMES: "2"}}]}
    """)
    _, executions = run_to_the_end(context(store, executor, tmp_path), "build")
    record = job_record(store, "build")
    assert (executions, record.status, record.attempt) == (1, "success", 1)
    assert executor.calls.count(("start", "build", "s")) == 3


def test_oom_and_missing_images_are_their_own_reasons(tmp_path, executor) -> None:
    store = start(tmp_path, """
        name: reasons
        jobs:
          big: {steps: [{name: s, script: [x], environment: {FAKE_OOM: "1"}}]}
          gone: {steps: [{name: s, script: [x], environment: {FAKE_IMAGE_MISSING: "1"}}]}
    """)
    ctx = context(store, executor, tmp_path)
    run_to_the_end(ctx, "big")
    run_to_the_end(ctx, "gone")
    big, gone = job_record(store, "big"), job_record(store, "gone")
    assert (big.status, big.reason, big.exit_code) == ("failed", "oom", 137)
    assert (gone.status, gone.reason) == ("failed", "image_pull_failure")
    assert any("not found" in line for line in log_of(store, "gone"))


def test_step_timeout_stops_the_step_and_fails_the_job(tmp_path, executor) -> None:
    store = start(tmp_path, """
        name: slow
        jobs:
          build: {steps: [{name: s, timeout: 1, script: [x], environment: {FAKE_SLEEP: "30"}}]}
    """)
    started = time.monotonic()
    run_to_the_end(context(store, executor, tmp_path), "build")
    record = job_record(store, "build")
    assert (record.status, record.reason) == ("failed", "timeout")
    assert time.monotonic() - started < 10


def test_cancel_stops_the_running_step_and_is_never_retried(tmp_path, executor) -> None:
    store = start(tmp_path, """
        name: cancel
        jobs:
          build:
            retry_count: 3
            steps: [{name: s, script: [x], environment: {FAKE_SLEEP: "30"}}]
    """)
    ctx = context(store, executor, tmp_path)
    threading.Timer(0.5, store.request_cancel, args=(RUN,)).start()
    started = time.monotonic()
    result, executions = run_to_the_end(ctx, "build")
    record = job_record(store, "build")
    assert (record.status, record.reason, executions) == ("cancelled", "cancelled", 1)
    assert ("kill", "build", "s", "cancelled") in executor.calls
    assert time.monotonic() - started < 10
    assert result["status"] == "cancelled"


def test_the_pipeline_timeout_cancels_the_run_and_times_the_job_out(tmp_path, executor) -> None:
    store = start(tmp_path, """
        name: deadline
        timeout: 1
        jobs:
          build:
            retry_count: 3
            steps: [{name: s, script: [x], environment: {FAKE_SLEEP: "30"}}]
    """)
    run_to_the_end(context(store, executor, tmp_path), "build")
    record = job_record(store, "build")
    assert (record.status, record.reason) == ("failed", "timeout")
    assert store.get_run(RUN).cancel_requested


class LeaseThief:
    """The real store whose heartbeats answer "lost" once armed: another worker took the job."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self.armed = threading.Event()

    def __getattr__(self, name: str):
        return getattr(self._store, name)

    def heartbeat(self, run_id: str, job: str, token: int, lease_ms: int) -> str:
        return "lost" if self.armed.is_set() else self._store.heartbeat(run_id, job, token, lease_ms)


def test_a_lost_lease_stops_the_step_and_writes_nothing(tmp_path, executor) -> None:
    store = start(tmp_path, """
        name: lost
        jobs:
          build: {steps: [{name: s, script: [x], environment: {FAKE_SLEEP: "30"}}]}
    """)
    thief = LeaseThief(store)
    threading.Timer(0.5, thief.armed.set).start()
    result, _ = run_to_the_end(context(thief, executor, tmp_path), "build")  # type: ignore[arg-type]
    assert result["status"] == "lost"
    assert job_record(store, "build").status == "running"  # the newer attempt's to finish
    assert any("lease lost" in line for line in log_of(store, "build"))


def test_a_missing_secret_fails_at_once_without_retry(tmp_path, executor, monkeypatch) -> None:
    monkeypatch.delenv("CONVEYOR_SECRET_API_TOKEN", raising=False)
    store = start(tmp_path, """
        name: secret
        jobs:
          deploy: {retry_count: 3, secrets: [API_TOKEN], steps: [{name: s, script: [x]}]}
    """)
    _, executions = run_to_the_end(context(store, executor, tmp_path), "deploy")
    record = job_record(store, "deploy")
    assert (record.status, record.reason, executions) == ("failed", "infrastructure", 1)
    assert not [call for call in executor.calls if call[0] == "start"]
    assert any("API_TOKEN" in line for line in log_of(store, "deploy"))


def test_a_dependency_failure_skips_the_dependent_without_running_it(tmp_path, executor) -> None:
    store = start(tmp_path, """
        name: chain
        jobs:
          build: {steps: [{name: s, script: [x], environment: {FAKE_EXIT_CODE: "1"}}]}
          test: {depends_on: [build], steps: [{name: s, script: [x]}]}
    """)
    ctx = context(store, executor, tmp_path)
    with pytest.raises(Reschedule):
        run_job(ctx, RUN, "test")  # waits while build is not terminal
    run_to_the_end(ctx, "build")
    result, _ = run_to_the_end(ctx, "test")
    assert (result["status"], result["reason"]) == ("skipped", "upstream_failed")
    assert ("start", "test", "s") not in executor.calls
