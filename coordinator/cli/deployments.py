"""`conveyor approve|reject RUN GATE` and `conveyor abort|rollback RUN JOB`: talking to running deployments.

The logic lives in coordinator/deploy_control.py (shared with the server's endpoints);
here are the options, the output and the exit codes. With CONVEYOR_SERVER_URL set the
answer or command goes through the server's API instead, which records the token's name
as who answered (so `--by` is refused there).
"""
from __future__ import annotations

import getpass
import os
import sys
from typing import NoReturn

import click

from coordinator.cli.options import api_client, api_failure, open_run_store, run_id_argument
from coordinator.terminal import clean

EXIT_REFUSED = 1


def _default_user() -> str:
    try:
        return os.environ.get("USER") or getpass.getuser()
    except Exception:
        return "unknown"


by_option = click.option("--by", "by", default=None, metavar="NAME",
                         help="Who answers (default: $USER; through the server: the token's name).")
comment_option = click.option("--comment", default=None, metavar="TEXT",
                              help="A note stored with the answer (at most 1000 characters).")


def _refuse(message: str) -> NoReturn:
    click.echo(clean(f"error: {message}"), err=True)  # gate, job and state names come from the run
    sys.exit(EXIT_REFUSED)


def _warn(warning: str | None) -> None:
    if warning:
        click.echo(clean(f"warning: {warning}"), err=True)


def _no_by_through_the_server(by: str | None) -> None:
    if by is not None:
        raise click.UsageError("--by cannot be used with CONVEYOR_SERVER_URL: the server records the token's name "
                               "as who answered")


def _answer(run_id: str, gate: str, decision: str, by: str | None, comment: str | None) -> None:
    from coordinator.deploy_control import COMMENT_MAX, ControlError, answer_gate, answer_message

    if comment is not None and len(comment) > COMMENT_MAX:
        raise click.UsageError(f"--comment has at most {COMMENT_MAX} characters")
    client = api_client()
    if client is not None:
        from coordinator.api_client import ApiClientError

        _no_by_through_the_server(by)
        try:
            stored = client.answer_gate(run_id, gate, decision, comment)
        except ApiClientError as exc:
            api_failure(exc, run_id)
        click.echo(clean(answer_message(run_id, gate, stored.get("decision", decision), str(stored.get("by")))))
        _warn(stored.get("warning"))
        return
    settings, store = open_run_store(run_id)
    try:
        answer = answer_gate(settings, store, run_id, gate, decision, by or _default_user(), comment)  # type: ignore[arg-type]
    except ControlError as exc:
        _refuse(exc.message)
    click.echo(clean(answer_message(run_id, gate, decision, answer.by)))
    _warn(answer.warning)


@click.command()
@run_id_argument
@click.argument("gate")
@by_option
@comment_option
def approve(run_id: str, gate: str, by: str | None, comment: str | None) -> None:
    """Approve a deployment's approval gate (the deployment goes on)."""
    _answer(run_id, gate, "approve", by, comment)


@click.command()
@run_id_argument
@click.argument("gate")
@by_option
@comment_option
def reject(run_id: str, gate: str, by: str | None, comment: str | None) -> None:
    """Reject a deployment's approval gate (the deployment aborts and restores the stable version)."""
    _answer(run_id, gate, "reject", by, comment)


def _command(run_id: str, job: str, kind: str, by: str | None) -> None:
    from coordinator.deploy_control import ControlError, command_message, send_command

    client = api_client()
    if client is not None:
        from coordinator.api_client import ApiClientError

        _no_by_through_the_server(by)
        try:
            queued = client.deployment_command(run_id, job, kind)
        except ApiClientError as exc:
            api_failure(exc, run_id)
        if queued.get("notice"):
            click.echo(clean(str(queued["notice"])), err=True)
        click.echo(clean(command_message(kind, job, run_id, queued.get("state"))))
        _warn(queued.get("warning"))
        return
    settings, store = open_run_store(run_id)
    try:
        result = send_command(settings, store, run_id, job, kind, by or _default_user())  # type: ignore[arg-type]
    except ControlError as exc:
        _refuse(exc.message)
    if result.notice:
        click.echo(clean(result.notice), err=True)
    click.echo(clean(result.message))
    _warn(result.warning)


@click.command()
@run_id_argument
@click.argument("job")
@by_option
def abort(run_id: str, job: str, by: str | None) -> None:
    """Abort a deployment: stable version back at full weight, new instances stopped, job failed."""
    _command(run_id, job, "abort", by)


@click.command()
@run_id_argument
@click.argument("job")
@by_option
def rollback(run_id: str, job: str, by: str | None) -> None:
    """Switch back to the previous version (instant after a blue-green switch while the old instances are kept)."""
    _command(run_id, job, "rollback", by)
