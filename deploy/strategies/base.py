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
from typing import Mapping, Sequence

from deploy.analysis import AnalysisResult
from deploy.config import DeployConfig
from deploy.record import (
    ABORTED,
    ABORTING,
    PROMOTED,
    ROLLED_BACK,
    ROLLING_BACK,
    TERMINAL,
    UNKNOWN,
    Command,
    GateAnswer,
    Record,
    SlotRecord,
    SlotStep,
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
    gates: Mapping[str, GateAnswer] = field(default_factory=dict)
    commands: Sequence[Command] = ()
    smoke: AnalysisResult | None = None  # blue-green pre-promotion measurement, when taken this tick
    cancelled: bool = False


def config_of(rec: Record) -> DeployConfig:
    """The record's own configuration (it travels with the record, so a tick needs nothing else)."""
    from deploy.config import config_from_dict

    return config_from_dict(rec["config"])


# -- predicates ---------------------------------------------------------------------------


def healthy(slot: SlotRecord) -> bool:
    return slot["health"].get("healthy") is True


def unhealthy(slot: SlotRecord) -> bool:
    return slot["health"].get("healthy") is False


def in_router(slot: SlotRecord, server: ServerState | None, weight: int | None = None) -> bool:
    """The router has the slot ready, up (by its own checks) and, if given, at `weight`."""
    return (server is not None and server.admin == READY and server.up
            and (weight is None or server.weight == weight))


def serving(slot: SlotRecord, server: ServerState | None) -> bool:
    """Can take traffic now: wanted and set ready, up in the router, running what it should, not failing."""
    return slot["router"] == READY and in_router(slot, server) and settled(slot) and not unhealthy(slot)


def router_matches(slot: SlotRecord, server: ServerState | None) -> bool:
    """The router holds the slot's desired entry."""
    want = slot["router"]
    if want == ABSENT:
        return server is None
    if server is None:
        return False
    return server.admin == want and (want != READY or server.weight == slot["weight"])


def drained(slot: SlotRecord, server: ServerState | None, now_ms: int, timeout_s: float) -> bool:
    """No sessions left on the server, or the drain timeout passed."""
    if server is None or (server.sessions == 0 and (server.admin != READY or not server.up)):
        return True
    return now_ms - int(slot["since"]) >= timeout_s * 1000


def out_of_router(slot: SlotRecord) -> str:
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
    tick = _RestoreTick.prepare(rec, obs, now_ms, drain_timeout)
    done = True
    for name in rec["live"]:
        done = _restore_live(tick, name) and done
    for name in rec["slots"]:
        if name not in rec["live"]:
            done = _retire(tick, name) and done
    return done


# A live slot on its way back to the stable version (drained, restarted, not yet up again).
_RESTARTING = (SlotStep.RESTORE_DRAIN, SlotStep.RESTORE_START, SlotStep.RESTORE_UP)


def _on_stable(rec: Record, slot: SlotRecord) -> bool:
    """Runs what it ran before the deployment (the stable version, or a version Conveyor never knew)."""
    return (slot["want"] == slot["version"] and slot["version"] in (rec["stable_version"], UNKNOWN)
            and slot["running"])


@dataclass
class _RestoreTick:
    """What one tick of restore decides on: read before any slot moves, updated as live slots go down."""

    rec: Record
    obs: Observation
    now_ms: int
    drain_timeout: float
    shares: dict[str, int]  # each live slot's full share
    keep_new: bool  # an automatic abort with rollback_on_failure off keeps new instances running
    serving_now: set[str]  # slots serving now; one this tick takes down leaves it
    stable_serving: bool  # a live slot on the stable version serves, or will once this batch sets it ready
    busy: bool  # a live slot that served is being restored (one at a time)

    @classmethod
    def prepare(cls, rec: Record, obs: Observation, now_ms: int, drain_timeout: float) -> _RestoreTick:
        """Read the record and the observation once, before any slot moves."""
        config = config_of(rec)
        slots, live = rec["slots"], rec["live"]
        abort = rec.get("abort")
        stable_serving = any(_on_stable(rec, slots[n]) and slots[n]["step"] is None and not unhealthy(slots[n])
                             and obs.servers.get(n) is not None and obs.servers[n].checks_pass for n in live)
        busy = any(slots[n]["step"] in _RESTARTING and slots[n].get("held") for n in live)
        return cls(rec=rec, obs=obs, now_ms=now_ms, drain_timeout=drain_timeout, shares=weight_shares(live, 100),
                   keep_new=bool(abort and abort.get("automatic")) and not config.rollback_on_failure,
                   serving_now={n for n, slot in slots.items() if serving(slot, obs.servers.get(n))},
                   stable_serving=stable_serving, busy=busy)


def _restore_live(tick: _RestoreTick, name: str) -> bool:
    """A live slot back on the stable version at its full share; True when the router has it so."""
    slot, server, now_ms = tick.rec["slots"][name], tick.obs.servers.get(name), tick.now_ms
    if slot["step"] == SlotStep.RESTORE_FAILED:
        set_router(slot, MAINT, now_ms)  # the stable version fails here too: keep it out, do not block
        return True
    if _on_stable(tick.rec, slot) and slot["step"] is None:
        set_router(slot, READY, now_ms, tick.shares[name])
        return router_matches(slot, server)
    if tick.rec["stable_version"] is None:
        # Conveyor never ran a known-good version here: nothing to go back to but stopping.
        replace(slot, None, now_ms)
        slot["step"] = None
        return settled(slot) and router_matches(slot, server)
    _restart_on_stable(tick, name)
    return False


def _restart_on_stable(tick: _RestoreTick, name: str) -> None:
    """A live slot on the new version: in its turn drained, restarted on stable, health-gated, set ready."""
    slot = tick.rec["slots"][name]
    current = slot["step"]
    if current is None:
        if not _take_turn(tick, name):
            return
        current = SlotStep.RESTORE_DRAIN
    current = _next_restore_step(tick, name, current)
    slot["step"] = current
    if current in (None, SlotStep.RESTORE_FAILED):
        slot.pop("held", None)


def _take_turn(tick: _RestoreTick, name: str) -> bool:
    """Whether the slot may go down now: always when it does not serve; when it does, only while no
    other serving slot is down for its restart and something else still serves (never the last one)."""
    slot = tick.rec["slots"][name]
    if name not in tick.serving_now:
        return True
    if tick.busy or not tick.serving_now - {name}:
        set_router(slot, READY, tick.now_ms, tick.shares[name])  # wait for its turn, serving meanwhile
        return False
    tick.busy = slot["held"] = True
    tick.serving_now.discard(name)
    return True


def _next_restore_step(tick: _RestoreTick, name: str, current: SlotStep) -> SlotStep | None:
    """Drain, then restart on stable, then wait for the router's UP: the slot's step after this tick."""
    rec, now_ms, share = tick.rec, tick.now_ms, tick.shares[name]
    slot, server = rec["slots"][name], tick.obs.servers.get(name)
    if current == SlotStep.RESTORE_DRAIN:
        if slot["router"] == READY:
            set_router(slot, DRAIN, now_ms)
        if drained(slot, server, now_ms, tick.drain_timeout):
            replace(slot, rec["stable_version"], now_ms)
            slot["weight"] = share
            return SlotStep.RESTORE_START
    elif current == SlotStep.RESTORE_START:
        if settled(slot) and healthy(slot):
            set_router(slot, READY, now_ms, share)
            return SlotStep.RESTORE_UP
        if settled(slot) and unhealthy(slot):
            event(rec, now_ms, "restore_failed", server=name,
                  message=f"stable version {rec['stable_version']} is unhealthy on {name}: "
                          f"{slot['health'].get('detail')}")
            set_router(slot, MAINT, now_ms)
            return SlotStep.RESTORE_FAILED
    elif current == SlotStep.RESTORE_UP and in_router(slot, server, share):
        return None
    return current


def _retire(tick: _RestoreTick, name: str) -> bool:
    """A slot outside the live set (canary, green, surge) out of the router and stopped; True when it is."""
    slot, server, now_ms = tick.rec["slots"][name], tick.obs.servers.get(name), tick.now_ms
    if name in tick.serving_now and not tick.stable_serving and slot["router"] == READY:
        return False  # the only capacity left: it goes once a stable slot serves
    if slot["router"] in (READY, DRAIN):
        set_router(slot, MAINT, now_ms)
    if slot["want"] is not None and not tick.keep_new:
        if not drained(slot, server, now_ms, tick.drain_timeout):
            return False
        replace(slot, None, now_ms)
        set_router(slot, out_of_router(slot), now_ms)
    elif tick.keep_new:
        set_router(slot, out_of_router(slot), now_ms)
    return router_matches(slot, server) and (tick.keep_new or settled(slot))


def finish_restore(rec: Record, now_ms: int) -> None:
    """Restore is complete: an abort ends the job failed, a rollback ends the deployment rolled back."""
    if rec["state"] == ROLLING_BACK:
        set_state(rec, ROLLED_BACK, now_ms)
        event(rec, now_ms, "rolled_back", stable_version=rec["stable_version"])
        return
    abort = rec.get("abort")
    reason = (abort.get("reason") if abort else None) or "script_failure"
    message = abort.get("message") if abort else None
    set_state(rec, ABORTED, now_ms)
    if rec["result"] is None:
        status = "cancelled" if reason == "cancelled" else "failed"
        rec["result"] = {"status": status, "reason": reason, "message": message}
        event(rec, now_ms, "finished", status=status, reason=reason, message=message)
