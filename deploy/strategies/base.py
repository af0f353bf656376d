"""What every strategy shares: the observation it decides on, abort, restore, and the predicates.

Strategies are pure: `advance(record, observation, now_ms)` changes the record's desired
state (slot versions, router entries, phase) and nothing else. The reconciler turns the
difference between desired and observed into router and provider actions.

Abort always wins. `begin_abort` can be called from any state; `restore` then drives
every live slot back to the stable version at its full weight and every other slot out
of the router and stopped, whatever the strategy was doing. It is the only way back, for
every strategy, so "abort from any state restores stable" is one function to get right.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from deploy.config import DeployConfig
from deploy.record import (
    ABORTED,
    ABORTING,
    PROMOTED,
    ROLLED_BACK,
    ROLLING_BACK,
    TERMINAL,
    UNKNOWN,
    Record,
    event,
    replace,
    set_router,
    set_state,
    settled,
    weight_shares,
)
from deploy.routers.base import ABSENT, DRAIN, MAINT, READY, ServerState


@dataclass(frozen=True)
class Observation:
    """What a tick saw before deciding: the router's servers, gate answers, new commands."""

    servers: Mapping[str, ServerState] = field(default_factory=dict)
    gates: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    commands: Sequence[Mapping[str, Any]] = ()
    smoke: Mapping[str, Any] | None = None  # blue-green pre-promotion measurement, when taken this tick
    cancelled: bool = False


def config_of(rec: Record) -> DeployConfig:
    from deploy.config import config_from_dict

    return config_from_dict(rec["config"])


# -- predicates ---------------------------------------------------------------------------


def healthy(slot: Mapping) -> bool:
    return slot["health"].get("healthy") is True


def unhealthy(slot: Mapping) -> bool:
    return slot["health"].get("healthy") is False


def in_router(slot: Mapping, server: ServerState | None, weight: int | None = None) -> bool:
    """The router has the slot ready, up (by its own checks) and, if given, at `weight`."""
    return (server is not None and server.admin == READY and server.up
            and (weight is None or server.weight == weight))


def serving(slot: Mapping, server: ServerState | None) -> bool:
    """Can take traffic now: wanted and set ready, up in the router, running what it should, not failing."""
    return slot["router"] == READY and in_router(slot, server) and settled(slot) and not unhealthy(slot)


def router_matches(slot: Mapping, server: ServerState | None) -> bool:
    """The router holds the slot's desired entry."""
    want = slot["router"]
    if want == ABSENT:
        return server is None
    if server is None:
        return False
    return server.admin == want and (want != READY or server.weight == slot["weight"])


def drained(slot: Mapping, server: ServerState | None, now_ms: int, timeout_s: float) -> bool:
    """No sessions left on the server, or the drain timeout passed."""
    if server is None or (server.sessions == 0 and (server.admin != READY or not server.up)):
        return True
    return now_ms - int(slot["since"]) >= timeout_s * 1000


def out_of_router(slot: Mapping) -> str:
    """Where an unused slot's router entry goes: spare servers are deleted, instance servers kept in maint."""
    return ABSENT if slot["kind"] == "spare" else MAINT


# -- outcomes ------------------------------------------------------------------------------


def succeed(rec: Record, now_ms: int, state: str, message: str) -> None:
    """The deployment reached its goal; the job succeeds."""
    set_state(rec, state, now_ms)
    if rec["result"] is None:
        rec["result"] = {"status": "success", "reason": None, "message": message}
        event(rec, now_ms, "finished", status="success", message=message)


def begin_abort(rec: Record, now_ms: int, reason: str, message: str, by: str | None = None,
                automatic: bool = True) -> None:
    """Abort from any state (a no-op once aborting, rolling back or finished)."""
    state = rec["state"]
    if state in TERMINAL or state in (ABORTING, ROLLING_BACK):
        return
    if state == PROMOTED:  # the job already succeeded: aborting now means switching back
        begin_rollback(rec, now_ms, by, message)
        return
    rec["abort"] = {"reason": reason, "message": message, "by": by, "at": now_ms, "automatic": automatic}
    event(rec, now_ms, "abort", reason=reason, message=message, by=by)
    set_state(rec, ABORTING, now_ms)
    for slot in rec["slots"].values():
        slot["step"] = None


def begin_rollback(rec: Record, now_ms: int, by: str | None, message: str = "rollback requested") -> None:
    """Switch back to the slots that were live before (blue-green, while the old ones are kept)."""
    rec["abort"] = {"reason": None, "message": message, "by": by, "at": now_ms, "automatic": False}
    event(rec, now_ms, "rollback", by=by, message=message)
    set_state(rec, ROLLING_BACK, now_ms)
    for slot in rec["slots"].values():
        slot["step"] = None


def handle_requests(rec: Record, obs: Observation, now_ms: int) -> None:
    """Commands (abort, rollback) and a cancelled run, before the strategy moves."""
    for command in obs.commands:
        by = command.get("by")
        if command.get("type") == "rollback" and rec["state"] == PROMOTED:
            begin_rollback(rec, now_ms, by)
        elif command.get("type") in ("abort", "rollback"):
            begin_abort(rec, now_ms, "script_failure", f"{command['type']} requested by {by or 'unknown'}", by, False)
    if obs.cancelled:
        begin_abort(rec, now_ms, "cancelled", "the run was cancelled", None, False)


# -- restore -------------------------------------------------------------------------------

RESTORE_DRAIN_S = 30.0


def restore(rec: Record, obs: Observation, now_ms: int, drain_timeout: float = RESTORE_DRAIN_S) -> bool:
    """One step back to the stable version at full weight; True once everything is back.

    Live slots still running the stable version go ready at their full share at once, in
    the same router batch that takes every other slot out: when the stable pool serves,
    traffic is back on it in one write. A live slot that runs the new version is
    restarted on the stable one: at once when it does not serve anyway, else drained
    first, one at a time, and only while something else serves. Other slots (canary,
    green, surge) leave the router as soon as a stable slot serves; until then they keep
    serving, because an outage is worse than a few more seconds of the new version.
    """
    config = config_of(rec)
    stable = rec["stable_version"]
    live = rec["live"]
    slots = rec["slots"]
    shares = weight_shares(live, 100)
    abort = rec.get("abort") or {}
    keep_new = bool(abort.get("automatic")) and not config.rollback_on_failure

    def original(slot: Mapping) -> bool:
        return slot["want"] == slot["version"] and slot["version"] in (stable, UNKNOWN) and slot["running"]

    serving_now = {n for n, slot in slots.items() if serving(slot, obs.servers.get(n))}
    # a drained stable slot that passes its checks serves as soon as this batch sets it ready
    stable_serving = any(original(slots[n]) and slots[n]["step"] is None and not unhealthy(slots[n])
                         and obs.servers.get(n) is not None and obs.servers[n].checks_pass for n in live)
    busy = any(slots[n]["step"] in ("restore-drain", "restore-start", "restore-up") and slots[n].get("held")
               for n in live)
    done = True
    for name in live:
        slot, server = slots[name], obs.servers.get(name)
        step = slot["step"]
        if step == "restore-failed":
            set_router(slot, MAINT, now_ms)  # the stable version fails here too: keep it out, do not block
            continue
        if original(slot) and step is None:
            set_router(slot, READY, now_ms, shares[name])
            done = done and router_matches(slot, server)
            continue
        if stable is None:
            # Conveyor never ran a known-good version here: nothing to go back to but stopping.
            replace(slot, None, now_ms)
            slot["step"] = None
            done = done and settled(slot) and router_matches(slot, server)
            continue
        done = False
        if step is None:
            if name in serving_now:
                if busy or not serving_now - {name}:
                    set_router(slot, READY, now_ms, shares[name])  # wait for its turn, serving meanwhile
                    continue
                busy = slot["held"] = True
                serving_now.discard(name)
            step = "restore-drain"
        if step == "restore-drain":
            if slot["router"] == READY:
                set_router(slot, DRAIN, now_ms)
            if drained(slot, server, now_ms, drain_timeout):
                replace(slot, stable, now_ms)
                slot["weight"] = shares[name]
                step = "restore-start"
        elif step == "restore-start":
            if settled(slot) and healthy(slot):
                set_router(slot, READY, now_ms, shares[name])
                step = "restore-up"
            elif settled(slot) and unhealthy(slot):
                event(rec, now_ms, "restore_failed", server=name,
                      message=f"stable version {stable} is unhealthy on {name}: {slot['health'].get('detail')}")
                set_router(slot, MAINT, now_ms)
                step = "restore-failed"
        elif step == "restore-up" and in_router(slot, server, shares[name]):
            step = None
        slot["step"] = step
        if step in (None, "restore-failed"):
            slot.pop("held", None)
    for name, slot in slots.items():
        if name in live:
            continue
        server = obs.servers.get(name)
        if name in serving_now and not stable_serving and slot["router"] == READY:
            done = False  # the only capacity left: it goes once a stable slot serves
            continue
        if slot["router"] in (READY, DRAIN):
            set_router(slot, MAINT, now_ms)
        if slot["want"] is not None and not keep_new:
            if drained(slot, server, now_ms, drain_timeout):
                replace(slot, None, now_ms)
                set_router(slot, out_of_router(slot), now_ms)
            else:
                done = False
                continue
        elif keep_new:
            set_router(slot, out_of_router(slot), now_ms)
        done = done and router_matches(slot, server) and (keep_new or settled(slot))
    return done


def finish_restore(rec: Record, now_ms: int) -> None:
    """Restore is complete: an abort ends the job failed, a rollback ends the deployment rolled back."""
    if rec["state"] == ROLLING_BACK:
        set_state(rec, ROLLED_BACK, now_ms)
        event(rec, now_ms, "rolled_back", stable_version=rec["stable_version"])
        return
    abort = rec.get("abort") or {}
    reason = abort.get("reason") or "script_failure"
    set_state(rec, ABORTED, now_ms)
    if rec["result"] is None:
        status = "cancelled" if reason == "cancelled" else "failed"
        rec["result"] = {"status": status, "reason": reason, "message": abort.get("message")}
        event(rec, now_ms, "finished", status=status, reason=reason, message=abort.get("message"))
