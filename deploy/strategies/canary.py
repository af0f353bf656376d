"""Canary: one instance of the new version on a spare address, fed a growing share of traffic.

Steps run in order: `set_weight` gives the canary that percentage (the stable pool shares
the rest), `pause` waits that many seconds, a gate (`approval`, or `pause: {}`) waits for
`conveyor approve|reject` until its deadline. From the first weight above zero, analysis
judges the canary's router counters every `interval`; `failure_limit` failing windows
in a row abort. An inconclusive window (under `min_requests`) is never a pass: a pause
ends only after at least one passing window at the current weight, and gives up (abort)
when none came within `interval x failure_limit` after its end. Promotion updates the
stable pool in place (the rolling machine, one at a time, the canary covering capacity),
then shifts all weight back to the pool and removes the canary.
"""
from __future__ import annotations

from deploy.analysis import FAIL, PASS, evaluate
from deploy.config import DeployConfig, RollingConfig
from deploy.record import (
    FINALIZING,
    PAUSED,
    PROGRESSING,
    PROMOTING,
    SUCCEEDED,
    WAITING,
    Record,
    StrategyData,
    event,
    replace,
    set_router,
    set_state,
    settled,
    weight_shares,
)
from deploy.routers.base import DRAIN, MAINT, READY, Counters
from deploy.strategies.base import (
    Observation,
    begin_abort,
    config_of,
    drained,
    healthy,
    in_router,
    out_of_router,
    router_matches,
    succeed,
    unhealthy,
)
from deploy.strategies.rolling import RollingStatus, step_rolling

ACTIVE = (PROGRESSING, PAUSED, WAITING, PROMOTING)


def _data(rec: Record) -> StrategyData:
    data = rec["data"]
    if "canary" not in data:
        live = rec["live"]
        free = sorted((n for n in rec["slots"] if n not in live), key=lambda n: rec["slots"][n]["kind"] != "spare")
        data.update({"canary": free[0], "step": 0, "step_started": None, "weight": 0, "window": None,
                     "failures": 0, "passes": 0, "step_passes": 0, "gate": None, "analysed": False})
    return data


def apply_weight(rec: Record, weight: int, now_ms: int) -> None:
    """Canary at `weight` percent, the stable pool sharing the rest."""
    data = rec["data"]
    canary = rec["slots"][data["canary"]]
    if data["weight"] != weight:
        data["weight"] = weight
        data["step_passes"] = 0
    canary["weight"] = weight
    for name, share in weight_shares(rec["live"], 100 - weight).items():
        rec["slots"][name]["weight"] = share
    event(rec, now_ms, "weight", weights={n: rec["slots"][n]["weight"] for n in [*rec["live"], data["canary"]]})


def weights_applied(rec: Record, obs: Observation) -> bool:
    names = [*rec["live"], rec["data"]["canary"]]
    return all(router_matches(rec["slots"][n], obs.servers.get(n)) for n in names)


def _analyse(rec: Record, obs: Observation, now_ms: int, config: DeployConfig) -> None:
    """Close the analysis window when due; abort after `failure_limit` failing windows in a row."""
    analysis = config.canary.analysis
    data = rec["data"]
    name = data["canary"]
    server = obs.servers.get(name)
    if analysis is None or server is None or server.admin != READY or server.weight == 0:
        data["window"] = None  # no traffic, nothing to judge; start afresh when traffic comes
        return
    data["analysed"] = True
    window = data["window"]
    if window is None:
        data["window"] = {"start": now_ms, "baseline": server.counters.to_dict()}
        return
    if now_ms - window["start"] < analysis.interval * 1000:
        return
    measurement = evaluate({name: Counters.from_dict(window["baseline"])}, {name: server.counters}, analysis)
    data["window"] = {"start": now_ms, "baseline": server.counters.to_dict()}
    event(rec, now_ms, "analysis", server=name, weight=data["weight"], **measurement.to_dict())
    if measurement.verdict == PASS:
        data["passes"] += 1
        data["step_passes"] += 1
        data["failures"] = 0
    elif measurement.verdict == FAIL:
        data["failures"] += 1
        if data["failures"] >= analysis.failure_limit:
            begin_abort(rec, now_ms, "script_failure",
                        f"canary analysis failed {data['failures']} window(s) in a row: {measurement.why}")


def _needs_pass(rec: Record, config: DeployConfig) -> bool:
    """Whether a passing window is still owed (analysis on, data expected, none yet at this weight)."""
    analysis = config.canary.analysis
    return (analysis is not None and analysis.min_requests > 0 and rec["data"]["weight"] > 0
            and rec["data"]["step_passes"] == 0)


def _grace_ms(config: DeployConfig) -> int:
    analysis = config.canary.analysis
    return int(analysis.interval * max(analysis.failure_limit, 1) * 1000) if analysis else 0


def _next_step(rec: Record, now_ms: int) -> None:
    rec["data"]["step"] += 1
    rec["data"]["step_started"] = now_ms
    rec["data"]["gate"] = None


def _steps(rec: Record, obs: Observation, now_ms: int, config: DeployConfig) -> None:
    data = rec["data"]
    steps = config.canary.steps
    canary = rec["slots"][data["canary"]]
    while rec["state"] in (PROGRESSING, PAUSED, WAITING) and data["step"] < len(steps):
        step = steps[data["step"]]
        started = data["step_started"]
        if started is None:
            started = data["step_started"] = now_ms
        if step.kind == "set_weight":
            set_state(rec, PROGRESSING, now_ms)
            if step.weight > 0 and not (healthy(canary) and in_router(canary, obs.servers.get(data["canary"]))):
                return  # the canary gets traffic only once it is up
            if canary["weight"] != step.weight or data["weight"] != step.weight:
                apply_weight(rec, step.weight, now_ms)
            if not weights_applied(rec, obs):
                return
            _next_step(rec, now_ms)
        elif step.kind == "pause":
            set_state(rec, PAUSED, now_ms)
            end = started + int(step.seconds * 1000)
            if now_ms < end:
                return
            if _needs_pass(rec, config):
                if now_ms >= end + _grace_ms(config):
                    begin_abort(rec, now_ms, "script_failure",
                                f"analysis inconclusive: no window reached min_requests at weight {data['weight']}")
                return
            _next_step(rec, now_ms)
        else:
            gate = step.gate
            assert gate is not None
            waiting = data["gate"]
            if waiting is None:
                deadline = started + int(gate.timeout * 1000) if gate.timeout else None
                waiting = data["gate"] = {"name": gate.name, "since": started, "deadline": deadline}
                event(rec, now_ms, "gate", name=gate.name, status="waiting", deadline=deadline)
            set_state(rec, WAITING, now_ms)
            answer = obs.gates.get(gate.name)
            if answer is not None:
                decision, by = answer.get("decision"), answer.get("by")
                event(rec, now_ms, "gate", name=gate.name, status=decision, by=by, answered_at=answer.get("at"))
                if decision != "approve":
                    begin_abort(rec, now_ms, "script_failure", f"gate {gate.name} rejected by {by}", by, False)
                    return
                _next_step(rec, now_ms)
                continue
            deadline = waiting["deadline"]
            if deadline is not None and now_ms >= deadline:
                event(rec, now_ms, "gate", name=gate.name, status="expired", on_timeout=gate.on_timeout)
                if gate.on_timeout == "promote":
                    _next_step(rec, now_ms)
                    continue
                begin_abort(rec, now_ms, "script_failure", f"gate {gate.name} expired after {gate.timeout:.0f}s")
            return
    if rec["state"] in (PROGRESSING, PAUSED, WAITING) and data["step"] >= len(steps):
        # Never promote on no data: at least one passing window, at the last weight or before.
        analysis = config.canary.analysis
        if analysis is not None and analysis.min_requests > 0 and data["analysed"] and data["passes"] == 0:
            if now_ms >= (data["step_started"] or now_ms) + _grace_ms(config):
                begin_abort(rec, now_ms, "script_failure", "analysis inconclusive: no passing window before promotion")
            return
        set_state(rec, PROMOTING, now_ms)
        event(rec, now_ms, "promote", version=rec["new_version"])


def advance(rec: Record, obs: Observation, now_ms: int) -> None:
    """The canary strategy, one tick."""
    if rec["state"] not in (*ACTIVE, FINALIZING):
        return
    config = config_of(rec)
    data = _data(rec)
    name = data["canary"]
    canary = rec["slots"][name]
    if rec["state"] in ACTIVE:
        if canary["want"] != rec["new_version"]:
            replace(canary, rec["new_version"], now_ms)
            canary["weight"] = data["weight"]
        if settled(canary) and unhealthy(canary):
            begin_abort(rec, now_ms, "script_failure",
                        f"canary {name} failed its health checks: {canary['health'].get('detail')}")
            return
        if settled(canary) and healthy(canary) and canary["router"] == MAINT:
            # ready at its weight, even 0: the router then checks it and reports it UP
            set_router(canary, READY, now_ms, data["weight"])
        _analyse(rec, obs, now_ms, config)
        _steps(rec, obs, now_ms, config)
    if rec["state"] == PROMOTING:
        live = rec["live"]
        settings = RollingConfig(batch_size=1, max_unavailable=0, max_surge=0,
                                 drain_timeout=config.rolling.drain_timeout,
                                 progress_deadline=config.rolling.progress_deadline)
        status, message = step_rolling(rec, obs, now_ms, key="promotion", targets=live,
                                       weights=weight_shares(live, 100 - data["weight"]), settings=settings,
                                       free=[], extra_serving=[name])
        if status == RollingStatus.FAILED:
            begin_abort(rec, now_ms, "script_failure", f"promotion: {message}")
        elif status == RollingStatus.DONE:
            for slot_name, share in weight_shares(live, 100).items():
                rec["slots"][slot_name]["weight"] = share
            set_router(canary, DRAIN, now_ms, 0)
            set_state(rec, FINALIZING, now_ms)
            event(rec, now_ms, "weight", weights={n: rec["slots"][n]["weight"] for n in [*live, name]})
    if rec["state"] == FINALIZING:
        server = obs.servers.get(name)
        if canary["want"] is not None and drained(canary, server, now_ms, config.rolling.drain_timeout):
            replace(canary, None, now_ms)
            set_router(canary, out_of_router(canary), now_ms)
        if settled(canary) and router_matches(canary, server) and all(
                router_matches(rec["slots"][n], obs.servers.get(n)) for n in rec["live"]):
            succeed(rec, now_ms, SUCCEEDED, f"canary promoted: {len(rec['live'])} instance(s) on {rec['new_version']}")
