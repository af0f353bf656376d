"""Embedded mode: the same canvas and task code, run by a worker inside this process.

With no `CONVEYOR_BROKER_URL`, `conveyor run` uses Celery's in-memory transport and a
thread-pool worker started here; state lives in SQLite under `CONVEYOR_DATA_DIR`, so
`runs`, `status` and `logs` work after the process exits.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

from celery import Celery

from shared.celery_app import settings_of
from shared.config import job_policy
from worker.context import process_context


@contextlib.contextmanager
def embedded_worker(app: Celery, concurrency: int) -> Iterator[None]:
    """Register the tasks on ``app``, start a thread-pool worker consuming every queue;
    stop it on exit."""
    from worker import tasks

    tasks.register(app)  # without it the worker drops every job as an unregistered task
    # This process's worker context, with the same job limits as a worker running
    # `concurrency` jobs (docs/configuration.md).
    settings = settings_of(app)
    process_context(settings, job_policy(settings, concurrency))
    ready = threading.Event()
    # Canvas code paths that resolve `current_app` (chord upgrades in the worker thread)
    # must see this app and its result backend, not Celery's default app.
    app.set_current()
    app.set_default()
    worker = app.WorkController(
        pool_cls="threads",
        concurrency=concurrency,
        queues=["jobs", "deploy"],
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        loglevel="WARNING",
        hostname="embedded@conveyor",
        ready_callback=lambda consumer: ready.set(),
        optimization="fair",
    )
    # Celery installs signal handlers only in the main thread's worker_main; none here.
    thread = threading.Thread(target=worker.start, name="conveyor-embedded-worker", daemon=True)
    thread.start()
    if not ready.wait(30):
        raise RuntimeError("the embedded worker did not start within 30 s")
    try:
        yield
    finally:
        worker.stop(in_sighandler=False)
        thread.join(timeout=10)
