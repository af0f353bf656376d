"""`conveyor approve|reject RUN GATE` and `conveyor abort|rollback RUN JOB`: talking to running deployments.

Answers and commands are written to the deployment store (beside the run state); the
deployment's next tick acts on them. With a broker configured, the command also sends
an immediate tick (a "nudge") so it does not wait for the next scheduled one.
"""
from __future__ import annotations

import getpass
import os
import sys
import time
from typing import Any

import click

from coordinator.cli.options import open_run_store, run_id_argument
from coordinator.terminal import clean

EXIT_REFUSED = 1


def _default_user() -> str:
    try:
        return os.environ.get("USER") or getpass.getuser()
    except Exception:
        return "unknown"


by_option = click.option("--by", "by", default=None, metavar="NAME", help="Who answers (default: $USER).")


def _open(run_id: str) -> tuple[Any, Any, dict]:
    """(settings, state store, plan dict); exit 3 when the run is unknown."""
    settings, store = open_run_store(run_id)
    return settings, store, store.get_plan(run_id)


def _refuse(message: str) -> None:
    click.echo(clean(f"error: {message}"), err=True)  # gate, job and state names come from the run
    sys.exit(EXIT_REFUSED)


def _gates(plan: dict) -> dict[str, list[str]]:
    """Gate name -> deployment jobs that have it."""
    from deploy.config import DeployConfigError, deploy_gates

    gates: dict[str, list[str]] = {}
    for name, job in plan.get("jobs", {}).items():
        if not job.get("deploy"):
            continue
        try:
            names = deploy_gates(job["deploy"])
        except (DeployConfigError, KeyError, TypeError, ValueError):
            continue
        for gate in names:
            gates.setdefault(gate, []).append(name)
    return gates


def _nudge(settings: Any, run_id: str, jobs: list[str]) -> None:
    """An immediate tick for each job, so the answer is acted on now (best effort)."""
    if settings.embedded:
        return
    try:
        from deploy.engine import NUDGE
        from shared.celery_app import create_app
        from worker.deploy_tasks import enqueue_tick

        app = create_app(settings)
        for job in jobs:
            enqueue_tick(app, run_id, job, NUDGE)
    except Exception as exc:  # the scheduled tick still picks it up within its interval
        click.echo(clean(f"warning: could not send an immediate tick ({exc}); the next one will act"), err=True)


def _answer(run_id: str, gate: str, decision: str, by: str | None) -> None:
    from deploy.store import deploy_store_for
    from shared.state.base import iso_ms

    settings, store, plan = _open(run_id)
    gates = _gates(plan)
    if gate not in gates:
        known = ", ".join(sorted(gates)) or "none"
        _refuse(f"run '{run_id}' has no approval gate '{gate}' (its gates: {known})")
    answer = {"decision": decision, "by": by or _default_user(), "at": iso_ms(time.time() * 1000)}
    stored = deploy_store_for(store).answer_gate(run_id, gate, answer)
    if stored != answer:
        verb = "approved" if stored.get("decision") == "approve" else "rejected"
        _refuse(f"gate '{gate}' was already {verb} by {stored.get('by')} at {stored.get('at')}")
    click.echo(clean(f"gate {gate} of run {run_id}: {'approved' if decision == 'approve' else 'rejected'} "
                     f"by {answer['by']}"))
    _nudge(settings, run_id, gates[gate])


@click.command()
@run_id_argument
@click.argument("gate")
@by_option
def approve(run_id: str, gate: str, by: str | None) -> None:
    """Approve a deployment's approval gate (the deployment goes on)."""
    _answer(run_id, gate, "approve", by)


@click.command()
@run_id_argument
@click.argument("gate")
@by_option
def reject(run_id: str, gate: str, by: str | None) -> None:
    """Reject a deployment's approval gate (the deployment aborts and restores the stable version)."""
    _answer(run_id, gate, "reject", by)


def _command(run_id: str, job: str, kind: str, by: str | None) -> None:
    from deploy.record import PROMOTED, TERMINAL
    from deploy.store import deploy_store_for
    from shared.state.base import iso_ms

    settings, store, plan = _open(run_id)
    jobs = plan.get("jobs", {})
    if job not in jobs:
        _refuse(f"run '{run_id}' has no job '{job}'")
    if not jobs[job].get("deploy"):
        _refuse(f"job '{job}' is not a deployment")
    deploys = deploy_store_for(store)
    loaded = deploys.load(run_id, job)
    state = loaded[0]["state"] if loaded else None
    if state in TERMINAL:
        hint = " (a blue-green deployment keeps the old instances for keep_old_for seconds only)" \
            if kind == "rollback" else ""
        _refuse(f"deployment {job} of run {run_id} already ended ({state}); nothing to {kind}{hint}")
    if kind == "rollback" and state is not None and state != PROMOTED:
        click.echo(clean(f"deployment {job} is still in progress ({state}): rolling back means aborting it"), err=True)
    deploys.add_command(run_id, job, {"type": kind, "by": by or _default_user(), "at": iso_ms(time.time() * 1000)})
    if loaded is None:
        click.echo(clean(f"{kind} of {job} in run {run_id} queued: the deployment has not started yet"))
    else:
        click.echo(clean(f"{kind} of {job} in run {run_id} requested ({state})"))
    _nudge(settings, run_id, [job])


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
