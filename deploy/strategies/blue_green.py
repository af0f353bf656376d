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
from deploy.config import PROMOTE_GATE
from deploy.record import (
    ANALYZING,
    PAUSED,
    PROGRESSING,
    PROMOTED,
    SUCCEEDED,
    SWITCHING,
    WAITING,
    Record,
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


def _data(rec: Record) -> dict:
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
    """The blue-green strategy, one tick."""
    config = config_of(rec)
    settings = config.blue_green
    data = _data(rec)
    green = data["green"]
    live = rec["live"]
    slots = rec["slots"]
    state = rec["state"]
    if state in (PROGRESSING, ANALYZING, PAUSED, WAITING):
        for name in green:
            slot = slots[name]
            if slot["want"] != rec["new_version"]:
                replace(slot, rec["new_version"], now_ms)
                slot["weight"] = 0
            if settled(slot) and unhealthy(slot):
                begin_abort(rec, now_ms, "script_failure",
                            f"green instance {name} failed its health checks: {slot['health'].get('detail')}")
                return
            if settled(slot) and healthy(slot) and slot["router"] == MAINT:
                set_router(slot, READY, now_ms, 0)
    if state == PROGRESSING:
        if not green_ready(rec, obs):
            return
        data["ready_at"] = now_ms
        event(rec, now_ms, "green_ready", servers=green, version=rec["new_version"])
        state = ANALYZING if settings.pre_promotion_analysis else PAUSED
        set_state(rec, state, now_ms)
    if state == ANALYZING:
        if obs.smoke is None:
            return  # the tick runs the synthetic requests while in this state
        event(rec, now_ms, "analysis", servers=green, **obs.smoke)
        if obs.smoke.get("verdict") != PASS:
            begin_abort(rec, now_ms, "script_failure", f"pre-promotion analysis: {obs.smoke.get('why')}")
            return
        state = PAUSED
        set_state(rec, state, now_ms)
    if state in (PAUSED, WAITING):
        if not settings.auto_promote:
            if data["gate"] is None:
                data["gate"] = {"name": PROMOTE_GATE, "since": now_ms, "deadline": None}
                event(rec, now_ms, "gate", name=PROMOTE_GATE, status="waiting", deadline=None)
            set_state(rec, WAITING, now_ms)
            answer = obs.gates.get(PROMOTE_GATE)
            if answer is None:
                return
            event(rec, now_ms, "gate", name=PROMOTE_GATE, status=answer.get("decision"), by=answer.get("by"),
                  answered_at=answer.get("at"))
            if answer.get("decision") != "approve":
                begin_abort(rec, now_ms, "script_failure", f"gate {PROMOTE_GATE} rejected by {answer.get('by')}",
                            answer.get("by"), False)
                return
        elif now_ms < data["ready_at"] + int(settings.promote_after * 1000):
            return
        if not green_ready(rec, obs):
            return
        # The switch: ONE batch, green at full share, blue draining.
        for name, share in weight_shares(green, 100).items():
            set_router(slots[name], READY, now_ms, share)
        for name in live:
            set_router(slots[name], DRAIN, now_ms)
        state = SWITCHING
        set_state(rec, state, now_ms)
        event(rec, now_ms, "weight", weights={n: slots[n]["weight"] if n in green else 0 for n in [*green, *live]})
        return
    if state == SWITCHING:
        if all(router_matches(slots[n], obs.servers.get(n)) for n in [*green, *live]):
            data["switched_at"] = now_ms
            data["keep_until"] = now_ms + int(settings.keep_old_for * 1000)
            succeed(rec, now_ms, PROMOTED, f"switched to {rec['new_version']}; previous instances kept "
                                           f"{settings.keep_old_for:.0f}s for rollback")
        return
    if state == PROMOTED and now_ms >= data["keep_until"]:
        done = True
        for name in live:
            slot, server = slots[name], obs.servers.get(name)
            if slot["want"] is not None:
                if drained(slot, server, now_ms, config.rolling.drain_timeout):
                    replace(slot, None, now_ms)
                    set_router(slot, out_of_router(slot), now_ms)
                else:
                    done = False
            done = done and settled(slot) and router_matches(slot, server)
        if done:
            set_state(rec, SUCCEEDED, now_ms)
            event(rec, now_ms, "old_removed", servers=live)
