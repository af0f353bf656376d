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
@click.option("--executor", type=click.Choice(["docker", "local"]),
              help="Where steps run (default CONVEYOR_EXECUTOR, else docker; `local` isolates nothing).")
@click.option("--labels", envvar="CONVEYOR_WORKER_LABELS", default="", metavar="LABEL,...",
              help="This worker's labels, e.g. linux,docker,gpu (at most 8; env CONVEYOR_WORKER_LABELS): "
                   "it also takes the jobs whose runs_on they include.")
def worker(queues: str, concurrency: int, name: str | None, metrics_port: int | None, metrics_address: str,
           log_format: str, loglevel: str, executor: str | None, labels: str) -> None:
    """A Celery worker for jobs (queue `jobs`) and deployments (queue `deploy`).

    With `--labels`, it also takes the jobs whose `runs_on` names only labels it has
    (one queue per subset of its labels: `jobs.labels.gpu`, `jobs.labels.gpu+linux`, ...).

    Steps run in Docker containers unless `--executor local` (or CONVEYOR_EXECUTOR=local)
    says to run them on this host, unisolated; without an engine the worker does not start.

    Messages of this command itself (usage errors, the metrics address, reaped
    containers) are text on stderr whatever --log-format says; everything logged once
    the worker runs, Celery's lines included, follows --log-format.
    """
    from coordinator.cli.options import cli_settings
    from worker.main import WorkerOptions, WorkerStartError, start_worker

    options = WorkerOptions(queues=queues, concurrency=concurrency, name=name, metrics_port=metrics_port,
                            metrics_address=metrics_address, json_logs=log_format == "json", loglevel=loglevel,
                            labels=labels)
    try:
        start_worker(cli_settings(executor), options, say=lambda message: click.echo(message, err=True))
    except WorkerStartError as exc:
        raise click.ClickException(str(exc)) from None


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
