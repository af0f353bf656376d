"""The `deployment` record shown by `conveyor status RUN --format json` under a deployment job.

    {"strategy", "state", "stable_version", "new_version",
     "weights": {server: weight},        # what the router is set to send each server (0: draining/maint)
     "events": [{"at", "type", ...}],    # ISO-8601 UTC with milliseconds, oldest first
     "environment", "gate", "approvals", "abort", "result"}

`gate` is the approval gate the deployment waits at (name, since, deadline) or None;
`approvals` the run's gate answers (decision, by, at).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, TypedDict

from deploy.record import AbortInfo, Event, GateAnswer, JobResult, effective_weights
from deploy.store import DeployStore, deploy_store_for
from shared.state.base import StateStore, iso_ms


class GateView(TypedDict):
    name: str
    since: str | None  # ISO-8601
    deadline: str | None  # ISO-8601; None: waits for ever


class AbortView(TypedDict):
    reason: str | None
    message: str | None
    by: str | None
    at: str | None  # ISO-8601


class DeploymentView(TypedDict):
    strategy: str
    state: str
    stable_version: str | None
    new_version: str
    weights: dict[str, int]
    events: list[Event]
    environment: str | None
    gate: GateView | None
    approvals: dict[str, GateAnswer]
    abort: AbortView | None
    result: JobResult | None


def deployment_view(state_url_or_store: str | StateStore | DeployStore, run_id: str,
                    job: str) -> DeploymentView | None:
    """The job's deployment record for status output, or None when the job has none (yet)."""
    deploys = deploy_store_for(state_url_or_store)
    loaded = deploys.load(run_id, job)
    if loaded is None:
        return None
    rec = loaded[0]
    waiting = rec.get("data", {}).get("gate")
    gate: GateView | None = None
    if waiting is not None and rec["state"] == "waiting_approval":
        gate = {"name": waiting["name"], "since": iso_ms(waiting.get("since")),
                "deadline": iso_ms(waiting.get("deadline"))}
    return {
        "strategy": rec["strategy"],
        "state": rec["state"],
        "stable_version": rec["stable_version"],
        "new_version": rec["new_version"],
        "weights": effective_weights(rec),
        "events": list(rec["events"]),
        "environment": rec.get("config", {}).get("environment"),
        "gate": gate,
        "approvals": deploys.gate_answers(run_id),
        "abort": _abort(rec.get("abort")),
        "result": rec.get("result"),
    }


def _abort(abort: AbortInfo | None) -> AbortView | None:
    if not abort:
        return None
    return {"reason": abort.get("reason"), "message": abort.get("message"), "by": abort.get("by"),
            "at": iso_ms(abort.get("at"))}


def summary(view: DeploymentView) -> str:
    """One line for `conveyor status` text output."""
    parts = [f"{view['strategy']} {view['state']}", f"{view['stable_version'] or '?'} -> {view['new_version']}"]
    if view["weights"]:
        parts.append(" ".join(f"{n}={w}" for n, w in view["weights"].items()))
    if view["gate"]:
        parts.append(f"waiting for gate {view['gate']['name']}")
    # an `analysis` event: the Event's fields and the measurement's (deploy.analysis.AnalysisResult)
    analysis: Mapping[str, Any] | None = next(
        (e for e in reversed(view["events"]) if e.get("type") == "analysis"), None)
    if analysis is not None and "verdict" in analysis:
        rate = analysis.get("error_rate")
        figures = [f"{analysis.get('requests', 0)} req"]
        if rate is not None:
            figures.append(f"{rate:.1%} 5xx")
        if analysis.get("latency_ms") is not None:
            figures.append(f"{analysis['latency_ms']:.0f} ms")
        parts.append(f"analysis {analysis['verdict']} ({', '.join(figures)})")
    return ", ".join(parts)


def deployment_extras(store: StateStore) -> Callable[[str, str], dict[str, DeploymentView | None]]:
    """For `status_json(..., extras=...)`: `{"deployment": view}` for deployment jobs (None before they start)."""
    deploys = deploy_store_for(store)
    plans: dict[str, dict] = {}

    def extras(run_id: str, job: str) -> dict[str, DeploymentView | None]:
        if run_id not in plans:
            try:
                plans[run_id] = store.get_plan(run_id).get("jobs", {})
            except LookupError:
                plans[run_id] = {}
        if not (plans[run_id].get(job) or {}).get("deploy"):
            return {}
        return {"deployment": deployment_view(deploys, run_id, job)}

    return extras
