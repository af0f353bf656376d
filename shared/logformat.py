"""JSON-lines logging for long-running processes, and the run/job a log line belongs to.

A worker started with ``--log-format json`` writes one JSON object per line:

    {"ts": "2024-05-01T12:00:00.123Z", "level": "INFO", "logger": "celery.worker.strategy",
     "message": "...", "run_id": "...", "job": "build", "task_id": "..."}

``run_id`` and ``job`` appear on every line logged while the emitting thread is inside
``job_log_context``, ``task_id`` while it executes a Celery task. The context is a
``contextvars.ContextVar``: each thread has its own, so jobs running side by side in one
worker's thread pool never see each other's ids, and a thread a job starts does not
inherit them unless its target is wrapped with ``in_log_context``. See
docs/observability.md.
"""
from __future__ import annotations

import contextvars
import json
import logging
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

from shared.state.base import iso_ms

FORMATS = ("text", "json")

_current: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("conveyor_job", default=None)

T = TypeVar("T")


@contextmanager
def job_log_context(run_id: str, job: str) -> Iterator[None]:
    """Tag every log line this thread emits inside the block with `run_id` and `job`."""
    token = _current.set((run_id, job))
    try:
        yield
    finally:
        _current.reset(token)


def current_job() -> tuple[str, str] | None:
    """(run id, job name) of the job this thread is running, if any."""
    return _current.get()


def in_log_context(target: Callable[..., T]) -> Callable[..., T]:
    """`target` bound to the caller's log context, for threads a job starts (heartbeat, log pumps)."""
    context = contextvars.copy_context()

    def run(*args: Any, **kwargs: Any) -> T:
        return context.run(target, *args, **kwargs)

    return run


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, run_id/job in a job, exc on errors."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": iso_ms(record.created * 1000),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        job = _current.get()
        if job is not None:
            line["run_id"], line["job"] = job
        task = _current_task()
        if task is not None:
            line["task_id"] = task
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # default=str: a message argument that is not JSON-native must not lose the line.
        return json.dumps(line, ensure_ascii=False, default=str)


def _current_task() -> str | None:
    """The id of the Celery task this thread is executing (to find it in Flower), if any."""
    state = sys.modules.get("celery._state")  # never import Celery just to log
    if state is None:
        return None
    task = state.get_current_task()
    return getattr(task.request, "id", None) if task is not None else None


def use_json(logger: logging.Logger) -> None:
    """Give every handler of `logger` the JSON formatter."""
    formatter = JsonFormatter()
    for handler in logger.handlers:
        handler.setFormatter(formatter)


def _on_logger_setup(logger: logging.Logger | None = None, **_: Any) -> None:
    if logger is not None:
        use_json(logger)


def install_celery_json_logging() -> None:
    """Make Celery's own loggers (root and task logger) write JSON lines.

    Call before the worker starts: Celery sets up its handlers when it boots and then
    sends `after_setup_logger` / `after_setup_task_logger`, where the formatter is
    swapped. Python warnings are routed through logging so they come out as JSON too.
    """
    from celery import signals

    # dispatch_uid: calling this twice must not format twice (nor leak receivers).
    signals.after_setup_logger.connect(_on_logger_setup, weak=False, dispatch_uid="conveyor.json.root")
    signals.after_setup_task_logger.connect(_on_logger_setup, weak=False, dispatch_uid="conveyor.json.task")
    logging.captureWarnings(True)
