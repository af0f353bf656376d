"""Options shared by several commands."""
from __future__ import annotations

import dataclasses
import re
import sys

import click

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
EXIT_UNKNOWN_RUN = 3

var_option = click.option(
    "--var", "variables", multiple=True, metavar="K=V",
    help="A run parameter; overrides every environment. Repeatable.",
)


def parse_vars(items: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not _NAME.fullmatch(name):
            raise click.UsageError(f"--var '{item}': expected NAME=VALUE with NAME like [A-Za-z_][A-Za-z0-9_]*")
        out[name] = value
    return out


def cli_settings(executor: str | None = None):
    """Settings from the environment; a configuration error is a usage error (exit 2)."""
    from shared.config import ConfigError, load_settings

    try:
        settings = load_settings()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    if executor:
        settings = dataclasses.replace(settings, executor=executor)
    return settings


def open_cli_store(settings):
    """The state store the settings name (creating the embedded data directory)."""
    from shared.state import open_state

    if settings.embedded:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return open_state(settings.effective_state_url)


def open_run_store(run_id: str):
    """(settings, state store) for a command about one run; exit 3 when the run is unknown."""
    settings = cli_settings()
    store = open_cli_store(settings)
    if store.get_run(run_id) is None:
        click.echo(f"error: unknown run '{run_id}'", err=True)
        sys.exit(EXIT_UNKNOWN_RUN)
    return settings, store
