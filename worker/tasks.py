"""Celery task definitions. Arguments are the run id and job name only: Flower shows
task kwargs, and secrets never travel through the broker.

A job task never raises for a failed job (a raising chord header would break the
chord), so the result backend stores SUCCESS for every finished job task. Only the
*events* a worker sends for it tell the job's outcome: `JobRequest` turns the worker's
`task-succeeded` into `task-failed`, `task-revoked` or `task-skipped` (`job_event`), so
Flower shows FAILURE, REVOKED or SKIPPED with the reason (docs/observability.md, "Flower").
"""
from __future__ import annotations

import ast
import logging
import os
import socket
import threading
from typing import Any, Mapping

from celery import Celery
from celery.worker.request import Request

from shared.celery_app import RUN_JOB_TASK
from shared.config import Settings
from shared.state.base import CANCELLED, FAILED, SKIPPED

log = logging.getLogger("conveyor.worker")

_context = None
_context_lock = threading.Lock()


def worker_name(settings: Settings) -> str:
    return os.environ.get("CONVEYOR_WORKER_NAME") or f"conveyor@{socket.gethostname()}"


def context(settings: Settings):
    """One WorkerContext per process, created on first use (after fork, not before)."""
    global _context
    with _context_lock:
        if _context is None:
            from shared.state import open_state
            from worker.executors import select_executor
            from worker.artifacts import ArtifactAccess
            from worker.job_runner import WorkerContext

            settings.data_dir.mkdir(parents=True, exist_ok=True)
            _context = WorkerContext(
                artifacts=ArtifactAccess(
                    artifacts_url=settings.effective_artifacts_url,
                    state_url=settings.effective_state_url,
                    s3_endpoint_url=settings.s3_endpoint_url,
                    expire_in_s=settings.artifacts_expire_in,
                ),
                store=open_state(settings.effective_state_url),
                executor=select_executor(settings.executor, settings.data_dir),
                worker_name=worker_name(settings),
                data_dir=settings.data_dir,
                lease_seconds=settings.lease_seconds,
            )
        return _context


def register(app: Celery) -> None:
    settings: Settings = app.conf.conveyor_settings
    if not settings.embedded:
        from celery.signals import worker_ready

        @worker_ready.connect(weak=False)
        def start_collector(**_: object) -> None:
            from worker.artifact_gc import start_periodic_gc

            start_periodic_gc(settings, worker_name(settings))

    @app.task(name=RUN_JOB_TASK, bind=True, max_retries=None, acks_late=True, Request=JobRequest)
    def run_job(self, run_id: str, job: str) -> dict:
        from worker.job_runner import Reschedule, run_job as run

        try:
            outcome = run(context(settings), run_id, job)
        except Reschedule as again:
            raise self.retry(countdown=again.countdown, max_retries=None)
        _last_outcome.remember(self.request.id, outcome)
        return outcome

    from worker import deploy_tasks

    deploy_tasks.register(app, settings)


# -- how a finished job task shows in Celery events (Flower) ----------------------------

SKIPPED_EVENT = "task-skipped"  # not a Celery event: Flower shows its state as SKIPPED

# What each non-success job status becomes: (event type, exception class name shown).
# `lost`: a newer attempt owns the job and this one's result was thrown away;
# `unknown`: the run had expired, the job was dropped without running.
_EVENTS = {
    FAILED: ("task-failed", "JobFailed"),
    "lost": ("task-failed", "JobLost"),
    "unknown": ("task-failed", "JobDropped"),
    CANCELLED: ("task-revoked", "JobCancelled"),
    SKIPPED: (SKIPPED_EVENT, "JobSkipped"),
}
_DEFAULT_WHY = {
    "lost": "a newer attempt owns the job; this attempt's result was discarded",
    "unknown": "the run is unknown (expired?); the job was dropped",
}


def job_event(outcome: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The event reporting a finished job task, and the fields to add to it.

    `outcome` is what the job task returned (`{"status", "reason", "exit_code", ...}`).
    A succeeded job, or one whose status is not final here (a deployment that was only
    started), keeps `task-succeeded` and adds nothing. Any other outcome gets an
    `exception` text `JobFailed: script_failure (exit code 3)`: Flower shows it in the
    task list and on the task's page, whatever the state.
    """
    status = outcome.get("status")
    if status not in _EVENTS:
        return "task-succeeded", {}
    event, name = _EVENTS[status]
    why = str(outcome.get("reason") or _DEFAULT_WHY.get(status, status))
    if outcome.get("exit_code") is not None:
        why += f" (exit code {outcome['exit_code']})"
    fields: dict[str, Any] = {"exception": f"{name}: {why}"}
    if event == "task-revoked":
        # The fields Celery's own task-revoked carries: not terminated by a signal, not expired.
        fields.update(terminated=False, signum=None, expired=False)
    return event, fields


def outcome_of(result: object) -> dict[str, Any] | None:
    """The job outcome in a `task-succeeded` event's `result`, or None when it has none.

    In the worker's main process `result` is Celery's saferepr of the returned dict: a
    Python literal, cut with `...` past 1 KiB (then it does not parse and None is returned).
    """
    if isinstance(result, dict):
        return result
    if not isinstance(result, str):
        return None
    try:
        value = ast.literal_eval(result)  # literals only: never evaluates code
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


class _LastOutcome(threading.local):
    """The outcome the job task just returned, per pool thread.

    With the thread (and solo) pool, the worker calls the request's success handler in
    the thread that ran the task, right after it returned: this hands it the outcome as
    it was, where the event's saferepr'd `result` may be cut. Other pools fall back to
    parsing that text (`outcome_of`).
    """

    task_id: str | None = None
    outcome: Mapping[str, Any] | None = None

    def remember(self, task_id: str | None, outcome: Mapping[str, Any]) -> None:
        self.task_id, self.outcome = task_id, outcome

    def take(self, task_id: str) -> Mapping[str, Any] | None:
        outcome = self.outcome if self.task_id == task_id else None
        self.task_id = self.outcome = None
        return outcome


_last_outcome = _LastOutcome()


class JobRequest(Request):
    """The worker-side request of a job task: reports the job's outcome in its events.

    The result backend is not touched (it stores SUCCESS, which keeps chords counting);
    only the event that would say `task-succeeded` changes (see `job_event`).
    """

    def send_event(self, type: str, **fields: Any) -> None:
        type, fields = reported_event(self.id, type, fields)
        super().send_event(type, **fields)


def reported_event(task_id: str, type: str, fields: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The event a job task's request sends in place of Celery's `(type, fields)`.

    Only `task-succeeded` changes: to `job_event` of the outcome the task returned (from
    this thread's `_last_outcome`, else parsed from the event's `result`). An outcome
    that cannot be read leaves the event as it was.
    """
    if type != "task-succeeded":
        return type, fields
    outcome = _last_outcome.take(task_id) or outcome_of(fields.get("result"))
    if outcome is None:
        return type, fields
    event, extra = job_event(outcome)
    return event, {**fields, **extra}
