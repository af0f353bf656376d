"""Talking to running deployments: answering approval gates, asking for an abort or a rollback.

What `conveyor approve|reject|abort|rollback` and the server's approval and deployment
endpoints share (docs/deployments.md, docs/server.md). Answers and commands are written to
the deployment store beside the run state; the deployment's next tick acts on them. With a
broker configured, an immediate tick (a "nudge") is sent too, so nobody waits for the next
scheduled one; that is best effort and comes back as a warning, never an error.

Nothing here prints or exits: refusals are `ControlError`s whose message is the line the
CLI prints after `error: ` (and the server's error message).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Literal, Mapping

from shared.config import Settings
from shared.state.base import StateStore, iso_ms

Decision = Literal["approve", "reject"]
CommandKind = Literal["abort", "rollback"]
ControlErrorKind = Literal["unknown_gate", "already_decided", "unknown_job", "not_deployment", "ended"]
COMMENT_MAX = 1000  # characters; an answer's comment is for people, not for attachments


class ControlError(Exception):
    """A refused answer or command: ``kind`` says which refusal, the message says it to a person."""

    def __init__(self, kind: ControlErrorKind, message: str, answer: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.kind: ControlErrorKind = kind
        self.message = message
        self.answer = dict(answer) if answer is not None else None  # already_decided: the stored answer


@dataclass(frozen=True)
class GateAnswer:
    """An answer as stored (first one wins), the deployment jobs waiting at that gate, and
    the warning of a nudge that could not be sent."""

    run_id: str
    gate: str
    decision: Decision
    by: str
    at: str
    comment: str | None
    jobs: tuple[str, ...]
    warning: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "gate": self.gate, "decision": self.decision, "by": self.by, "at": self.at,
                "comment": self.comment, "jobs": list(self.jobs),
                **({"warning": self.warning} if self.warning else {})}


@dataclass(frozen=True)
class CommandResult:
    """A queued abort/rollback. ``state`` is the deployment's state when it was queued (None:
    not started yet); ``notice`` says what a rollback of an unfinished deployment means."""

    run_id: str
    job: str
    kind: CommandKind
    by: str
    at: str
    state: str | None
    notice: str | None = None
    warning: str | None = None

    @property
    def message(self) -> str:
        return command_message(self.kind, self.job, self.run_id, self.state)

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "job": self.job, "command": self.kind, "by": self.by, "at": self.at,
                "state": self.state, "queued": self.state is None, "message": self.message,
                **({"notice": self.notice} if self.notice else {}),
                **({"warning": self.warning} if self.warning else {})}


def answer_message(run_id: str, gate: str, decision: str, by: str) -> str:
    """The line `conveyor approve|reject` prints once the answer is stored."""
    return f"gate {gate} of run {run_id}: {'approved' if decision == 'approve' else 'rejected'} by {by}"


def command_message(kind: str, job: str, run_id: str, state: str | None) -> str:
    """The line `conveyor abort|rollback` prints once the command is queued."""
    if state is None:
        return f"{kind} of {job} in run {run_id} queued: the deployment has not started yet"
    return f"{kind} of {job} in run {run_id} requested ({state})"


def gates_of(plan: Mapping[str, Any]) -> dict[str, list[str]]:
    """Gate name -> the deployment jobs of the plan that have it."""
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


def answer_gate(settings: Settings, store: StateStore, run_id: str, gate: str, decision: Decision, by: str,
                comment: str | None = None) -> GateAnswer:
    """Store ``by``'s answer to ``gate`` of a known run; raises ControlError (unknown_gate,
    already_decided). The first answer wins, across every CLI and server at once."""
    from deploy.store import deploy_store_for

    if comment is not None and len(comment) > COMMENT_MAX:
        raise ValueError(f"a comment has at most {COMMENT_MAX} characters")  # callers check first
    gates = gates_of(store.get_plan(run_id))
    if gate not in gates:
        known = ", ".join(sorted(gates)) or "none"
        raise ControlError("unknown_gate", f"run '{run_id}' has no approval gate '{gate}' (its gates: {known})")
    answer: dict[str, Any] = {"decision": decision, "by": by, "at": iso_ms(time.time() * 1000)}
    if comment is not None:
        answer["comment"] = comment
    stored = deploy_store_for(store).answer_gate(run_id, gate, answer)  # type: ignore[arg-type]
    if stored != answer:
        verb = "approved" if stored.get("decision") == "approve" else "rejected"
        raise ControlError("already_decided",
                           f"gate '{gate}' was already {verb} by {stored.get('by')} at {stored.get('at')}", stored)
    warning = nudge(settings, run_id, gates[gate])
    return GateAnswer(run_id, gate, decision, by, answer["at"], comment, tuple(gates[gate]), warning)


def send_command(settings: Settings, store: StateStore, run_id: str, job: str, kind: CommandKind,
                 by: str) -> CommandResult:
    """Queue an abort or rollback of deployment ``job`` of a known run; raises ControlError
    (unknown_job, not_deployment, ended)."""
    from deploy.record import PROMOTED, TERMINAL
    from deploy.store import deploy_store_for

    jobs = store.get_plan(run_id).get("jobs", {})
    if job not in jobs:
        raise ControlError("unknown_job", f"run '{run_id}' has no job '{job}'")
    if not jobs[job].get("deploy"):
        raise ControlError("not_deployment", f"job '{job}' is not a deployment")
    deploys = deploy_store_for(store)
    loaded = deploys.load(run_id, job)
    state = loaded[0]["state"] if loaded else None
    if state in TERMINAL:
        hint = " (a blue-green deployment keeps the old instances for keep_old_for seconds only)" \
            if kind == "rollback" else ""
        raise ControlError("ended", f"deployment {job} of run {run_id} already ended ({state}); "
                                    f"nothing to {kind}{hint}")
    notice = None
    if kind == "rollback" and state is not None and state != PROMOTED:
        notice = f"deployment {job} is still in progress ({state}): rolling back means aborting it"
    at = iso_ms(time.time() * 1000)
    deploys.add_command(run_id, job, {"type": kind, "by": by, "at": at})
    return CommandResult(run_id, job, kind, by, at or "", state, notice, nudge(settings, run_id, [job]))


_apps: dict[tuple[str | None, str | None], Any] = {}
_apps_lock = threading.Lock()


def nudge(settings: Settings, run_id: str, jobs: list[str]) -> str | None:
    """An immediate tick for each job, so the answer is acted on now; the warning to show
    when it could not be sent (the scheduled tick still picks it up within its interval)."""
    if settings.embedded:
        return None
    try:
        from deploy.engine import NUDGE
        from worker.deploy_tasks import enqueue_tick

        app = _celery_app(settings)
        for job in jobs:
            enqueue_tick(app, run_id, job, NUDGE)
    except Exception as exc:
        return f"could not send an immediate tick ({_without_passwords(str(exc), settings)}); the next one will act"
    return None


def _without_passwords(text: str, settings: Settings) -> str:
    # The warning also goes to API clients: a broker error quoting its URL must not carry
    # the broker's password with it.
    from urllib.parse import urlsplit

    for url in (settings.broker_url, settings.result_backend):
        try:
            password = urlsplit(url).password if url else None
        except ValueError:
            password = None
        if password:
            text = text.replace(password, "***")
    return text


def _celery_app(settings: Settings) -> Any:
    # One Celery app per broker: a server answers many requests, and each new app would
    # open its own connection pool.
    from shared.celery_app import create_app

    key = (settings.broker_url, settings.result_backend)
    with _apps_lock:
        if key not in _apps:
            _apps[key] = create_app(settings)
        return _apps[key]
