"""`conveyor worker` and `conveyor flower`: long-running processes on the shared Celery app."""
from __future__ import annotations

import os

import click


@click.command()
@click.option("--queues", default="jobs,deploy", show_default=True, help="Comma-separated queues to consume.")
@click.option("--concurrency", type=click.IntRange(1, 512), default=2, show_default=True, help="Jobs at once.")
@click.option("--name", help="Worker name (default conveyor@HOST); shown in status and Flower.")
@click.option("--metrics-port", type=click.IntRange(1, 65535), help="Serve Prometheus metrics on this port.")
@click.option("--loglevel", default="INFO", show_default=True)
def worker(queues: str, concurrency: int, name: str | None, metrics_port: int | None, loglevel: str) -> None:
    """A Celery worker for jobs (queue `jobs`) and deployments (queue `deploy`)."""
    from coordinator.cli.options import cli_settings
    from shared.celery_app import create_app
    from worker import tasks

    settings = cli_settings()
    if settings.embedded:
        raise click.UsageError("a worker needs CONVEYOR_BROKER_URL (e.g. redis://host:6379/0)")
    if metrics_port or settings.metrics_port:
        click.echo("warning: Prometheus metrics are not available in this version; "
                   "--metrics-port/CONVEYOR_METRICS_PORT is ignored", err=True)
    if name:
        os.environ["CONVEYOR_WORKER_NAME"] = name
    app = create_app(settings)
    tasks.register(app)
    hostname = name or tasks.worker_name(settings)
    # Containers a previous life of this worker left behind (it was killed mid-job) carry
    # its name in their labels: remove them before taking new work.
    reaped = tasks.context(settings).executor.reap_orphans(hostname)
    if reaped:
        click.echo(f"removed {reaped} container(s) left by a previous run of {hostname}", err=True)
    # Threads: a job task mostly waits on a container or process, so threads keep RSS low
    # and let one worker supervise many jobs.
    app.worker_main([
        "worker", f"--queues={queues}", f"--concurrency={concurrency}", f"--hostname={hostname}",
        "--pool=threads", f"--loglevel={loglevel}", "--without-mingle",
    ])


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
