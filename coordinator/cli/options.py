"""Options shared by several commands."""
from __future__ import annotations

import dataclasses
import os
import re
import sys
from typing import TYPE_CHECKING, Any, Callable, NoReturn, TypeVar

import click

from coordinator.terminal import clean

if TYPE_CHECKING:
    from coordinator.api_client import ApiClient, ApiClientError

F = TypeVar("F", bound=Callable[..., Any])

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
EXIT_UNKNOWN_RUN = 3


def check_run_id(run_id: str) -> str:
    """`run_id` if it can be a run id; otherwise one line on stderr and exit 3.

    Every command taking RUN calls this first: a run id ends up in paths (workspaces,
    logs) and key names, so `../../etc` must be refused before anything is built from it.
    """
    from shared.state.base import RUN_ID_PATTERN  # what the stores enforce; loaded only here

    if not RUN_ID_PATTERN.fullmatch(run_id):
        click.echo(f"error: no run '{clean(run_id)}': not a run id "
                   "(letters, digits and '_.:-', like 20261127-015301-3f9a1c)", err=True)
        sys.exit(EXIT_UNKNOWN_RUN)
    return run_id


def _run_id_callback(ctx: click.Context, param: click.Parameter, value: str) -> str:
    return check_run_id(value)


def run_id_argument(function: F) -> F:
    """The RUN argument of a command, checked (`check_run_id`) as soon as it is parsed."""
    return click.argument("run_id", metavar="RUN", callback=_run_id_callback)(function)

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
    """Settings from the environment; a configuration error is a usage error (exit 2).

    ``executor`` (`--executor`) overrides CONVEYOR_EXECUTOR. With neither, embedded mode
    (`conveyor run` on one's own machine, no broker) picks Docker when an engine answers
    and else the local executor, with a warning; a worker (broker mode) never guesses:
    unset means Docker, or no start (worker.executors.select_executor).
    """
    from shared.config import ConfigError, load_settings

    try:
        settings = load_settings()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    if executor:
        settings = dataclasses.replace(settings, executor=executor)
    elif settings.embedded and not settings.executor:
        settings = dataclasses.replace(settings, executor="auto")
    return settings


def open_cli_store(settings):
    """The state store the settings name (creating the embedded data directory)."""
    from shared.state import open_state

    if settings.embedded:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return open_state(settings.effective_state_url)


def open_run_store(run_id: str):
    """(settings, state store) for a command about one run; exit 3 when the run is unknown
    or `run_id` is not a run id at all."""
    check_run_id(run_id)
    settings = cli_settings()
    store = open_cli_store(settings)
    if store.get_run(run_id) is None:
        click.echo(f"error: unknown run '{run_id}'", err=True)
        sys.exit(EXIT_UNKNOWN_RUN)
    return settings, store


# -- through the server ----------------------------------------------------------------------

SERVER_URL_ENV = "CONVEYOR_SERVER_URL"
TOKEN_ENV = "CONVEYOR_TOKEN"
EXIT_FAILED = 1


def api_mode() -> bool:
    """Whether commands go through `conveyor server` (CONVEYOR_SERVER_URL is set)."""
    return bool(os.environ.get(SERVER_URL_ENV, "").strip())


def api_client() -> "ApiClient | None":
    """The server's API client when CONVEYOR_SERVER_URL is set (then no broker or store is
    opened), else None. A missing or malformed token is a usage error (exit 2); the token
    itself is never printed."""
    if not api_mode():
        return None
    from coordinator.api_client import ApiClient, ApiClientError

    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise click.UsageError(f"{SERVER_URL_ENV} is set but {TOKEN_ENV} is not: create a token with "
                               "`conveyor token create NAME --scope read` on the server and export it")
    try:
        return ApiClient(os.environ[SERVER_URL_ENV], token)
    except ApiClientError as exc:
        raise click.UsageError(exc.message) from None


def api_failure(exc: "ApiClientError", run_id: str | None = None) -> NoReturn:
    """One `error:` line for a failed API call and the exit code the direct mode would use:
    3 for an unknown run, else 1. The server's message is untrusted text: it is cleaned."""
    if exc.status == 404 and exc.code == "not_found" and run_id is not None and exc.message.startswith("no run "):
        click.echo(f"error: unknown run '{run_id}'", err=True)
        sys.exit(EXIT_UNKNOWN_RUN)
    if exc.status == 401:
        message = f"the server refused the token ({exc.message}); check {TOKEN_ENV}"
    elif exc.status == 403:
        message = f"{exc.message} (ask for a token with that scope: `conveyor token create NAME --scope ...`)"
    else:
        message = exc.message
    click.echo(clean(f"error: {message}"), err=True)
    sys.exit(EXIT_FAILED)
