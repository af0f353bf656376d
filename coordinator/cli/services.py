"""`conveyor worker` and `conveyor flower`: long-running processes on the shared Celery app."""
from __future__ import annotations

import os

import click

from shared.logformat import FORMATS


@click.command()
@click.option("--queues", default="jobs,deploy", show_default=True, help="Comma-separated queues to consume.")
@click.option("--concurrency", type=click.IntRange(1, 512), default=2, show_default=True, help="Jobs at once.")
@click.option("--name", help="Worker name (default conveyor@HOST); shown in status and Flower.")
@click.option("--metrics-port", type=click.IntRange(0, 65535),
              help="Serve Prometheus metrics on this port (default CONVEYOR_METRICS_PORT; unset = off).")
@click.option("--metrics-address", default="0.0.0.0", show_default=True, help="Address the metrics server binds.")
@click.option("--log-format", type=click.Choice(FORMATS), envvar="CONVEYOR_LOG_FORMAT", default="text",
              show_default=True, help="Worker log lines as text or JSON lines (env CONVEYOR_LOG_FORMAT).")
@click.option("--loglevel", default="INFO", show_default=True)
def worker(queues: str, concurrency: int, name: str | None, metrics_port: int | None, metrics_address: str,
           log_format: str, loglevel: str) -> None:
    """A Celery worker for jobs (queue `jobs`) and deployments (queue `deploy`).

    Messages of this command itself (usage errors, the metrics address, reaped
    containers) are text on stderr whatever --log-format says; everything logged once
    the worker runs, Celery's lines included, follows --log-format.
    """
    from coordinator.cli.options import cli_settings
    from shared.celery_app import BrokerUnavailable, check_redis_urls, create_app
    from worker import metrics, tasks

    settings = cli_settings()
    if settings.embedded:
        raise click.UsageError("a worker needs CONVEYOR_BROKER_URL (e.g. redis://host:6379/0)")
    try:
        # Celery would retry a refused password or a failed TLS handshake forever, silently.
        check_redis_urls(settings)
    except BrokerUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    if name:
        os.environ["CONVEYOR_WORKER_NAME"] = name
    if log_format == "json":
        from shared.logformat import install_celery_json_logging

        install_celery_json_logging()
    app = create_app(settings)
    tasks.register(app)
    hostname = name or tasks.worker_name(settings)
    from worker.executors import InfrastructureError

    try:
        executor = tasks.context(settings).executor
        # Step containers mount workspaces by host path: a containerised worker whose data
        # directory the engine cannot see would fail every job as if its script were wrong.
        executor.check_data_dir(settings.data_dir)
    except InfrastructureError as exc:
        raise click.ClickException(str(exc)) from None
    # Containers a previous life of this worker left behind (it was killed mid-job) carry
    # its name in their labels: remove them before taking new work.
    reaped = executor.reap_orphans(hostname)
    if reaped:
        click.echo(f"removed {reaped} container(s) left by a previous run of {hostname}", err=True)
    port = metrics_port if metrics_port is not None else settings.metrics_port
    if port is not None:
        # Served from this process: with the thread pool every job runs here, so one
        # registry sees them all.
        try:
            server = metrics.serve(port, metrics_address)
        except OSError as exc:
            raise click.ClickException(f"cannot serve metrics on {metrics_address}:{port}: {exc}") from None
        click.echo(f"metrics on http://{metrics_address}:{server.server_port}/metrics", err=True)
    metrics.worker_info(hostname, executor.name)
    from worker.reaper import start_reaper

    # Re-queues a dead worker's job about one lease after it died, not after the broker's
    # 2 h visibility timeout (docs/operations.md, "Lost-job recovery").
    start_reaper(app, settings)
    # Threads: a job task mostly waits on a container or process, so threads keep RSS low
    # and let one worker supervise many jobs.
    argv = [
        "worker", f"--queues={queues}", f"--concurrency={concurrency}", f"--hostname={hostname}",
        "--pool=threads", f"--loglevel={loglevel}", "--without-mingle",
    ]
    if log_format == "json":
        # The start-up banner is printed, not logged: it would be the only non-JSON output.
        argv = ["--quiet", *argv]
    app.worker_main(argv)


@click.command()
@click.option("--port", type=click.IntRange(1, 65535), default=5555, show_default=True)
@click.option("--address", default="127.0.0.1", show_default=True)
@click.option("--no-auth", is_flag=True, help="Run without basic auth (never on a shared network).")
def flower(port: int, address: str, no_auth: bool) -> None:
    """Flower on the same Celery app, basic auth from CONVEYOR_FLOWER_AUTH=user:password."""
    from coordinator.cli.options import cli_settings
    from shared.celery_app import create_app

    settings = cli_settings()
    if settings.embedded:
        raise click.UsageError("Flower watches a broker: set CONVEYOR_BROKER_URL")
    args = ["flower", f"--port={port}", f"--address={address}"]
    if not no_auth:
        if not settings.flower_auth or ":" not in settings.flower_auth:
            raise click.UsageError("set CONVEYOR_FLOWER_AUTH=user:password (or pass --no-auth)")
        # through the environment, not argv: the password must not show up in `ps`
        os.environ["FLOWER_BASIC_AUTH"] = settings.flower_auth
    create_app(settings).start(argv=args)
