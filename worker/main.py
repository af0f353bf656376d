"""Starting a worker process: checks, reaping, metrics, the reaper, then Celery's loop.

`conveyor worker` parses its options and calls `start_worker`; everything a worker does
before it takes its first job is here, in order, so it can be read (and changed) in one
place. Problems an operator must fix raise `WorkerStartError` with one line saying what.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from shared.celery_app import BrokerUnavailable, check_redis_urls, create_app
from shared.config import Settings
from worker import metrics, tasks
from worker.context import process_context, worker_name
from worker.executors.contract import InfrastructureError
from worker.reaper import start_reaper


class WorkerStartError(Exception):
    """The worker cannot start; the message (one line) says why and what to do."""


@dataclass(frozen=True)
class WorkerOptions:
    """What `conveyor worker` was asked for."""

    queues: str = "jobs,deploy"
    concurrency: int = 2
    name: str | None = None
    metrics_port: int | None = None
    metrics_address: str = "0.0.0.0"
    json_logs: bool = False
    loglevel: str = "INFO"


def start_worker(settings: Settings, options: WorkerOptions, say: Callable[[str], None]) -> None:
    """Run a worker until it is stopped. ``say`` prints this function's own messages
    (the metrics address, reaped containers) as text, whatever the log format."""
    if settings.embedded:
        raise WorkerStartError("a worker needs CONVEYOR_BROKER_URL (e.g. redis://host:6379/0)")
    try:
        # Celery would retry a refused password or a failed TLS handshake forever, silently.
        check_redis_urls(settings)
    except BrokerUnavailable as exc:
        raise WorkerStartError(str(exc)) from None
    if options.name:
        os.environ["CONVEYOR_WORKER_NAME"] = options.name
    if options.json_logs:
        from shared.logformat import install_celery_json_logging

        install_celery_json_logging()
    app = create_app(settings)
    tasks.register(app)
    hostname = options.name or worker_name(settings)
    try:
        executor = process_context(settings).executor
        # Step containers mount workspaces by host path: a containerised worker whose data
        # directory the engine cannot see would fail every job as if its script were wrong.
        executor.check_data_dir(settings.data_dir)
        # Containers a previous life of this worker left behind (it was killed mid-job)
        # carry its name in their labels: remove them before taking new work.
        reaped = executor.reap_orphans(hostname)
    except (InfrastructureError, ValueError) as exc:  # ValueError: an unknown CONVEYOR_EXECUTOR
        raise WorkerStartError(str(exc)) from None
    if reaped:
        say(f"removed {reaped} container(s) left by a previous run of {hostname}")
    port = options.metrics_port if options.metrics_port is not None else settings.metrics_port
    if port is not None:
        # Served from this process: with the thread pool every job runs here, so one
        # registry sees them all.
        try:
            server = metrics.serve(port, options.metrics_address)
        except OSError as exc:
            raise WorkerStartError(f"cannot serve metrics on {options.metrics_address}:{port}: {exc}") from None
        say(f"metrics on http://{options.metrics_address}:{server.server_port}/metrics")
    metrics.worker_info(hostname, executor.name)
    # Re-queues a dead worker's job about one lease after it died, not after the broker's
    # 2 h visibility timeout (docs/operations.md, "Lost-job recovery").
    start_reaper(app, settings)
    # Threads: a job task mostly waits on a container or process, so threads keep RSS low
    # and let one worker supervise many jobs.
    argv = [
        "worker", f"--queues={options.queues}", f"--concurrency={options.concurrency}", f"--hostname={hostname}",
        "--pool=threads", f"--loglevel={options.loglevel}", "--without-mingle",
    ]
    if options.json_logs:
        # The start-up banner is printed, not logged: it would be the only non-JSON output.
        argv = ["--quiet", *argv]
    app.worker_main(argv)
