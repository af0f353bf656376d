"""How a finished job task shows in Celery events, and so in Flower.

A job task never raises for a failed job (a raising chord header would break the
chord), so the result backend stores SUCCESS for every finished job task. Only the
*events* a worker sends for it tell the job's outcome: `JobRequest` turns the worker's
`task-succeeded` into `task-failed`, `task-revoked` or `task-skipped` (`job_event`), so
Flower shows FAILURE, REVOKED or SKIPPED with the reason (docs/observability.md, "Flower").
"""
from __future__ import annotations

import ast
import threading
from typing import Any, Mapping

from celery.worker.request import Request

from shared.state.base import CANCELLED, FAILED, SKIPPED

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


def remember_outcome(task_id: str | None, outcome: Mapping[str, Any]) -> None:
    """Called by the job task with what it returns, for its request's success event."""
    _last_outcome.remember(task_id, outcome)


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
