"""Blue-green: the new version on a second set of addresses, then all traffic at once.

Green instances start on free slots (spare addresses, or the instance addresses when the
previous blue-green left the spares live), join the router at weight 0 so the router's
own checks report them UP without sending them traffic, pass our health checks, then
optionally a pre-promotion analysis (synthetic requests) and a wait (`promote_after`) or
the `promote` gate. The switch is one router batch: every green server at its share,
every blue server draining. The job succeeds there; the blue instances keep running,
drained, for `keep_old_for` seconds, during which `conveyor rollback` is one batch back.
"""
from __future__ import annotations

from deploy.analysis import PASS
from deploy.config import PROMOTE_GATE, BlueGreenConfig
from deploy.record import (
    ANALYZING,
    PAUSED,
    PROGRESSING,
    PROMOTED,
    SUCCEEDED,
    SWITCHING,
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
from deploy.routers.base import DRAIN, MAINT, READY
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


def _data(rec: Record) -> StrategyData:
    data = rec["data"]
    if "green" not in data:
        live = rec["live"]
        free = [n for n in rec["slots"] if n not in live]
        # the other colour: spare slots first, then instance slots a previous switch left free
        free.sort(key=lambda n: rec["slots"][n]["kind"] != "spare")
        data.update({"green": free[: len(live)], "ready_at": None, "gate": None, "switched_at": None,
                     "keep_until": None})
    return data


def green_ready(rec: Record, obs: Observation) -> bool:
    """Every green instance healthy by our checks and UP in the router (still at weight 0)."""
    return all(healthy(rec["slots"][n]) and settled(rec["slots"][n]) and in_router(rec["slots"][n], obs.servers.get(n))
               for n in rec["data"]["green"])


def advance(rec: Record, obs: Observation, now_ms: int) -> None:
    """The blue-green strategy, one tick: each phase hands over to the next within the tick once it is done."""
    config = config_of(rec)
    settings = config.blue_green
    data = _data(rec)
    state = rec["state"]
    if state in (PROGRESSING, ANALYZING, PAUSED, WAITING) and not _start_green(rec, now_ms):
        return
    if state == PROGRESSING:
        if not _green_up(rec, obs, now_ms, settings):
            return
        state = rec["state"]
    if state == ANALYZING:
        if not _pre_promotion_analysis(rec, obs, now_ms):
            return
        state = rec["state"]
    if state in (PAUSED, WAITING):
        if _promotion_due(rec, obs, now_ms, settings):
            _switch(rec, now_ms)
        return
    if state == SWITCHING:
        _confirm_switch(rec, obs, now_ms, settings)
        return
    if state == PROMOTED:
        keep_until = data["keep_until"]
        assert keep_until is not None  # set by the switch that promoted
        if now_ms >= keep_until:
            _remove_blue(rec, obs, now_ms, config.rolling.drain_timeout)


def _start_green(rec: Record, now_ms: int) -> bool:
    """The new version on every green slot, ready at weight 0 once healthy; False when one failed (aborting)."""
    slots = rec["slots"]
    for name in rec["data"]["green"]:
        slot = slots[name]
        if slot["want"] != rec["new_version"]:
            replace(slot, rec["new_version"], now_ms)
            slot["weight"] = 0
        if settled(slot) and unhealthy(slot):
            begin_abort(rec, now_ms, "script_failure",
                        f"green instance {name} failed its health checks: {slot['health'].get('detail')}")
            return False
        if settled(slot) and healthy(slot) and slot["router"] == MAINT:
            set_router(slot, READY, now_ms, 0)
    return True


def _green_up(rec: Record, obs: Observation, now_ms: int, settings: BlueGreenConfig) -> bool:
    """Whether every green instance is ready; then on to the analysis, or straight to the wait."""
    if not green_ready(rec, obs):
        return False
    data = rec["data"]
    data["ready_at"] = now_ms
    event(rec, now_ms, "green_ready", servers=data["green"], version=rec["new_version"])
    set_state(rec, ANALYZING if settings.pre_promotion_analysis else PAUSED, now_ms)
    return True


def _pre_promotion_analysis(rec: Record, obs: Observation, now_ms: int) -> bool:
    """Whether the synthetic requests passed (then on to the wait); they run in the tick while ANALYZING."""
    if obs.smoke is None:
        return False
    event(rec, now_ms, "analysis", servers=rec["data"]["green"], **obs.smoke)
    if obs.smoke.get("verdict") != PASS:
        begin_abort(rec, now_ms, "script_failure", f"pre-promotion analysis: {obs.smoke.get('why')}")
        return False
    set_state(rec, PAUSED, now_ms)
    return True


def _promotion_due(rec: Record, obs: Observation, now_ms: int, settings: BlueGreenConfig) -> bool:
    """Whether to switch now: the `promote` gate approved (or `promote_after` passed) and green still ready."""
    if not settings.auto_promote:
        if not _promote_gate_approved(rec, obs, now_ms):
            return False
    else:
        ready_at = rec["data"]["ready_at"]
        assert ready_at is not None  # set when green became ready, before any wait
        if now_ms < ready_at + int(settings.promote_after * 1000):
            return False
    return green_ready(rec, obs)


def _promote_gate_approved(rec: Record, obs: Observation, now_ms: int) -> bool:
    """Wait at the `promote` gate; a rejection aborts."""
    data = rec["data"]
    if data["gate"] is None:
        data["gate"] = {"name": PROMOTE_GATE, "since": now_ms, "deadline": None}
        event(rec, now_ms, "gate", name=PROMOTE_GATE, status="waiting", deadline=None)
    set_state(rec, WAITING, now_ms)
    answer = obs.gates.get(PROMOTE_GATE)
    if answer is None:
        return False
    event(rec, now_ms, "gate", name=PROMOTE_GATE, status=answer.get("decision"), by=answer.get("by"),
          answered_at=answer.get("at"))
    if answer.get("decision") != "approve":
        begin_abort(rec, now_ms, "script_failure", f"gate {PROMOTE_GATE} rejected by {answer.get('by')}",
                    answer.get("by"), False)
        return False
    return True


def _switch(rec: Record, now_ms: int) -> None:
    """The switch: ONE batch, green at full share, blue draining."""
    slots, green, live = rec["slots"], rec["data"]["green"], rec["live"]
    for name, share in weight_shares(green, 100).items():
        set_router(slots[name], READY, now_ms, share)
    for name in live:
        set_router(slots[name], DRAIN, now_ms)
    set_state(rec, SWITCHING, now_ms)
    event(rec, now_ms, "weight", weights={n: slots[n]["weight"] if n in green else 0 for n in [*green, *live]})


def _confirm_switch(rec: Record, obs: Observation, now_ms: int, settings: BlueGreenConfig) -> None:
    """Once the router has the switch, the job succeeds; blue is kept for `keep_old_for`."""
    data, slots = rec["data"], rec["slots"]
    if all(router_matches(slots[n], obs.servers.get(n)) for n in [*data["green"], *rec["live"]]):
        data["switched_at"] = now_ms
        data["keep_until"] = now_ms + int(settings.keep_old_for * 1000)
        succeed(rec, now_ms, PROMOTED, f"switched to {rec['new_version']}; previous instances kept "
                                       f"{settings.keep_old_for:.0f}s for rollback")


def _remove_blue(rec: Record, obs: Observation, now_ms: int, drain_timeout: float) -> None:
    """After the keep window: blue drained, stopped and out of the router, then the deployment is over."""
    done = True
    for name in rec["live"]:
        slot, server = rec["slots"][name], obs.servers.get(name)
        if slot["want"] is not None:
            if drained(slot, server, now_ms, drain_timeout):
                replace(slot, None, now_ms)
                set_router(slot, out_of_router(slot), now_ms)
            else:
                done = False
        done = done and settled(slot) and router_matches(slot, server)
    if done:
        set_state(rec, SUCCEEDED, now_ms)
        event(rec, now_ms, "old_removed", servers=rec["live"])
