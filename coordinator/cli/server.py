"""`conveyor server`: the API for people and forges without broker credentials."""
from __future__ import annotations

import click


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--concurrency", type=click.IntRange(1, 256), default=2, show_default=True,
              help="Jobs at once in embedded mode (no CONVEYOR_BROKER_URL), where the server runs them itself.")
def server(host: str, port: int, concurrency: int) -> None:
    """Serve the API, webhooks, schedules and the web UI (docs/server.md).

    With a broker it never runs jobs and is stateless: several may run behind one
    address. Without one (embedded, one machine) it also runs the jobs, in-process, as
    `conveyor run` does.
    """
    import contextlib

    import uvicorn

    from coordinator.cli.options import cli_settings
    from coordinator.server.app import create_app
    from coordinator.server.repositories import RepositoryConfigError
    from coordinator.server.runtime import build_runtime
    from coordinator.server.plan_cache import PlanCachingStore
    from shared.state import open_state

    settings = cli_settings()
    with contextlib.ExitStack() as stack:
        celery_app = None
        if settings.embedded:
            from coordinator.embedded import embedded_worker
            from shared.celery_app import create_app as create_celery_app

            settings.data_dir.mkdir(parents=True, exist_ok=True)
            celery_app = create_celery_app(settings)
            stack.enter_context(embedded_worker(celery_app, concurrency))
            click.echo(f"embedded: jobs run in this process ({concurrency} at once), state in {settings.data_dir}",
                       err=True)
        store = PlanCachingStore(open_state(settings.effective_state_url))
        try:
            runtime = build_runtime(settings, store, celery_app)  # type: ignore[arg-type]
        except RepositoryConfigError as exc:
            raise click.ClickException(str(exc)) from None
        # One process, the default loop; proxy headers off: it answers clients directly.
        uvicorn.run(create_app(settings, store, runtime=runtime), host=host, port=port,  # type: ignore[arg-type]
                    log_level="info", proxy_headers=False, server_header=False)


@click.command()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def schedules(fmt: str) -> None:
    """List every `on.schedule` entry of the configured repositories and when it fires next.

    Reads each repository's pipeline at the tip of its default branch (fetching it into
    the server's mirror), as the server does.
    """
    import json
    from datetime import datetime, timezone

    from coordinator.cli.options import cli_settings
    from coordinator.git_mirror import Mirror, MirrorError
    from coordinator.server.repositories import Repositories, RepositoryConfigError, parse_repositories
    from coordinator.server.scheduler import read_schedules
    from coordinator.terminal import clean

    settings = cli_settings()
    try:
        repositories = Repositories(parse_repositories(settings.repositories))
    except RepositoryConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if not repositories.all:
        raise click.ClickException("no [[repositories]] in the configuration (conveyor.toml or CONVEYOR_CONFIG)")
    now = datetime.now(timezone.utc)
    rows = []
    for repository in repositories.all:
        try:
            entries = read_schedules(Mirror(settings.data_dir, repository.name, repository.url), repository)
        except MirrorError as exc:
            click.echo(clean(f"warning: {repository.name}: {exc}"), err=True)
            continue
        for entry in entries:
            rows.append({"repository": repository.name, "cron": entry.schedule.cron.source,
                         "timezone": entry.schedule.timezone, "branch": entry.branch,
                         "next": entry.next_fire(now).isoformat()})
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no schedules")
        return
    widths = {key: max(len(key), *(len(str(row[key])) for row in rows)) for key in rows[0]}
    click.echo("  ".join(key.upper().ljust(widths[key]) for key in rows[0]))
    for row in rows:
        click.echo(clean("  ".join(str(row[key]).ljust(widths[key]) for key in row)))

