"""Starting a worker process: checks, reaping, metrics, the reaper, then Celery's loop.

`conveyor worker` parses its options and calls `start_worker`; everything a worker does
before it takes its first job is here, in order, so it can be read (and changed) in one
place. Problems an operator must fix raise `WorkerStartError` with one line saying what.
"""
from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shared.celery_app import BrokerUnavailable, check_redis_urls, create_app
from shared import worker_labels
from shared.config import ConfigError, JobPolicy, Settings, job_policy
from worker import metrics, tasks
from worker.context import process_context, worker_name
from worker.executors import resolve_user
from worker.executors.contract import InfrastructureError
from worker.reaper import start_reaper

log = logging.getLogger("conveyor.worker")


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
    # `linux,docker,gpu`: the worker also takes the jobs whose `runs_on` these include
    # (shared/worker_labels.py); empty: only jobs without `runs_on`.
    labels: str = ""


def check_local_user(policy: JobPolicy, data_dir: Path) -> None:
    """With CONVEYOR_LOCAL_USER set, local steps run as that user: it must exist, and
    reach its workspace and home under ``data_dir``; the worker's full logs and artifacts
    are closed to it. Raises WorkerStartError (one line) otherwise."""
    if policy.local_user is None:
        return
    try:
        uid, gid = resolve_user(policy.local_user)
    except KeyError:
        raise WorkerStartError(f"CONVEYOR_LOCAL_USER={policy.local_user}: no such user on this host") from None
    if uid != 0 and os.geteuid() != 0:
        raise WorkerStartError(f"CONVEYOR_LOCAL_USER={policy.local_user} needs the worker to run as root "
                               "(it starts the steps as that user)")
    data_dir.mkdir(parents=True, exist_ok=True)
    for directory in (data_dir.resolve(), *data_dir.resolve().parents):
        mode = directory.stat()
        if uid == 0 or mode.st_uid == uid:
            continue
        if not mode.st_mode & (stat.S_IXGRP if mode.st_gid == gid else stat.S_IXOTH):
            raise WorkerStartError(
                f"local steps run as {policy.local_user}, who cannot reach {directory} (mode "
                f"{stat.S_IMODE(mode.st_mode):o}): set CONVEYOR_DATA_DIR to a directory it can traverse, "
                "e.g. /var/lib/conveyor")
    # Steps reach their workspace and home by path; the rest of the data directory is
    # the worker's alone.
    for private in ("logs", "artifacts"):
        (data_dir / private).mkdir(exist_ok=True)
        os.chmod(data_dir / private, 0o700)


def announce_presence(settings: Settings, hostname: str, labels: tuple[str, ...], queues: list[str],
                      interval: float = worker_labels.ANNOUNCE_INTERVAL_S) -> None:
    """Once Celery consumes, write this worker's labels and queues to the state store's Redis
    every ``interval`` seconds (shared/worker_labels.py), and that it stopped when it stops.
    Nothing with a state store other than Redis (no other process could read it)."""
    from celery.signals import worker_ready, worker_shutdown

    client = getattr(process_context(settings).store, "client", None)
    if client is None:
        return
    stopping = threading.Event()

    def beat(stopped: bool = False) -> None:
        try:
            worker_labels.announce(client, hostname, labels, queues, stopped=stopped)
        except Exception as exc:  # Redis restarting: the next beat tries again
            log.warning("cannot record this worker's presence: %s", exc)

    def loop() -> None:
        while not stopping.is_set():
            beat()
            stopping.wait(interval)

    @worker_ready.connect(weak=False)
    def start(**_: object) -> None:
        threading.Thread(target=loop, name="conveyor-presence", daemon=True).start()

    @worker_shutdown.connect(weak=False)
    def stop(**_: object) -> None:
        stopping.set()
        beat(stopped=True)


def start_worker(settings: Settings, options: WorkerOptions, say: Callable[[str], None]) -> None:
    """Run a worker until it is stopped. ``say`` prints this function's own messages
    (the metrics address, reaped containers) as text, whatever the log format."""
    if settings.embedded:
        raise WorkerStartError("a worker needs CONVEYOR_BROKER_URL (e.g. redis://host:6379/0)")
    try:
        labels = worker_labels.parse_labels(options.labels)
    except ValueError as exc:
        raise WorkerStartError(f"--labels: {exc}") from None
    queues = [queue.strip() for queue in options.queues.split(",") if queue.strip()]
    consumed = worker_labels.consumed_queues(queues, labels)
    if not consumed:
        raise WorkerStartError("--queues names no queue and there are no --labels: the worker would take nothing")
    try:
        # Every job's limits, from the operator's settings and this host (docs/configuration.md).
        policy = job_policy(settings, options.concurrency)
    except ConfigError as exc:
        raise WorkerStartError(str(exc)) from None
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
        # The process's context, with the job limits (with the thread pool every job runs
        # here). CONVEYOR_EXECUTOR unset means Docker: with no engine the worker does not
        # start (select_executor says to set CONVEYOR_EXECUTOR=local to run jobs unisolated).
        executor = process_context(settings, policy).executor
        # Step containers mount workspaces by host path: a containerised worker whose data
        # directory the engine cannot see would fail every job as if its script were wrong.
        executor.check_data_dir(settings.data_dir)
        if executor.name == "local":
            check_local_user(policy, settings.data_dir)
        # Containers (and networks) a previous life of this worker left behind (it was
        # killed mid-job) carry its name in their labels: remove them before taking work.
        reaped = executor.reap_orphans(hostname)
    except (InfrastructureError, ValueError) as exc:  # ValueError: an unknown CONVEYOR_EXECUTOR
        raise WorkerStartError(str(exc)) from None
    if reaped:
        say(f"removed {reaped} container(s), network(s) or step(s) left by a previous run of {hostname}")
    if executor.name == "local":
        who = policy.local_user or ("root without capabilities" if os.geteuid() == 0 else "this worker's user")
        say(f"local executor: jobs run unisolated on this host as {who}; memory, CPU and pids limits "
            "are not enforced (docs/executors.md)")
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
    if labels:
        say(f"labels {', '.join(labels)}: taking jobs whose runs_on they include "
            f"({len(worker_labels.label_queues(labels))} label queues)")
    # Which labels are live is what `conveyor status` shows a waiting job, and what its
    # queue_timeout counts from (worker/reaper.py).
    announce_presence(settings, hostname, labels, queues)
    # Re-queues a dead worker's job about one lease after it died, not after the broker's
    # 2 h visibility timeout (docs/operations.md, "Lost-job recovery").
    start_reaper(app, settings)
    # Threads: a job task mostly waits on a container or process, so threads keep RSS low
    # and let one worker supervise many jobs.
    argv = [
        "worker", f"--queues={','.join(consumed)}", f"--concurrency={options.concurrency}", f"--hostname={hostname}",
        "--pool=threads", f"--loglevel={options.loglevel}", "--without-mingle",
    ]
    if options.json_logs:
        # The start-up banner is printed, not logged: it would be the only non-JSON output.
        argv = ["--quiet", *argv]
    app.worker_main(argv)
