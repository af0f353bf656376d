"""Celery task definitions. Arguments are the run id and job name only: Flower shows
task kwargs, and secrets never travel through the broker."""
from __future__ import annotations

import logging
import os
import socket
import threading

from celery import Celery

from shared.celery_app import RUN_JOB_TASK
from shared.config import Settings

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

    @app.task(name=RUN_JOB_TASK, bind=True, max_retries=None, acks_late=True)
    def run_job(self, run_id: str, job: str) -> dict:
        from worker.job_runner import Reschedule, run_job as run

        try:
            return run(context(settings), run_id, job)
        except Reschedule as again:
            raise self.retry(countdown=again.countdown, max_retries=None)

    from worker import deploy_tasks

    deploy_tasks.register(app, settings)
