"""`conveyor token create|ls|revoke`: API tokens of `conveyor server` (docs/server.md)."""
from __future__ import annotations

import json
import time

import click

from coordinator.terminal import clean
from shared.tokens import SCOPES


def _tokens():
    from coordinator.cli.options import cli_settings
    from shared.tokens import open_tokens

    settings = cli_settings()
    if settings.embedded:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return open_tokens(settings.effective_state_url)


@click.group()
def token() -> None:
    """API tokens: create (printed once), list, revoke. Only their hashes are stored."""


@token.command()
@click.argument("name")
@click.option("--scope", type=click.Choice(SCOPES), default="read", show_default=True,
              help="read < trigger < approve < admin; each includes the ones before it.")
def create(name: str, scope: str) -> None:
    """Create a token NAME and print it (the only time it is shown)."""
    from shared.tokens import TokenError

    try:
        value = _tokens().create(name, scope)
    except TokenError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(value)
    click.echo(f"token {name!r} ({scope}) created; store it now, it is not shown again", err=True)


@token.command(name="ls")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def list_tokens(fmt: str) -> None:
    """The tokens: name, scope, created."""
    tokens = _tokens().list()
    if fmt == "json":
        click.echo(json.dumps([{"name": t.name, "scope": t.scope, "created_at": t.created_at} for t in tokens],
                              indent=2))
        return
    for t in tokens:
        created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(t.created_at))
        click.echo(clean(f"{t.name:24} {t.scope:8} {created} UTC"))  # names are read from the store


@token.command()
@click.argument("name")
def revoke(name: str) -> None:
    """Revoke the token NAME (requests with it are refused from now on)."""
    if not _tokens().revoke(name):
        raise click.ClickException(f"no token named {name!r}")
    click.echo(f"token {name!r} revoked")
