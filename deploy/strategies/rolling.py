"""Rolling update: replace the live instances in place, a batch at a time, never below capacity.

Each instance of a batch is drained (no new requests; wait for its sessions to end or
`drain_timeout`), taken out of the router, restarted on the new version, health-gated,
and put back at its weight. `max_surge` extra instances of the new version run on spare
addresses while the batches go, so that with `max_unavailable: 0` serving capacity never
drops below the pool size; they are drained and removed at the end. Instances that do
not serve anyway (down, unhealthy) are replaced first: that costs no capacity.

A new instance failing its health checks, or no instance finishing within
`progress_deadline` seconds of the previous one, aborts: the updated instances go back
to the stable version (deploy.strategies.base.restore).

The machine (`step_rolling`) is also how a canary promotion updates the stable pool.
"""
from __future__ import annotations

from enum import StrEnum
from typing import Literal, Sequence

from deploy.config import RollingConfig
from deploy.record import (
    PROGRESSING,
    SUCCEEDED,
    Record,
    RollingProgress,
    SlotStep,
    event,
    replace,
    set_router,
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
    serving,
    succeed,
    unhealthy,
)


class RollingStatus(StrEnum):
    """Where the rolling machine stands after a tick."""

    RUNNING = "running"
    DONE = "done"  # every target updated and the surge instances removed
    FAILED = "failed"  # the deployment must abort (the message says why)


# Where the machine keeps its progress in the record's `data`: a rolling update, or a canary's promotion.
ProgressKey = Literal["rolling", "promotion"]


def step_rolling(rec: Record, obs: Observation, now_ms: int, *, key: ProgressKey, targets: Sequence[str],
                 weights: dict[str, int], settings: RollingConfig, free: Sequence[str],
                 extra_serving: Sequence[str] = ()) -> tuple[RollingStatus, str]:
    """Advance the rolling replacement of `targets` by one tick: (status, why when FAILED)."""
    st = _progress(rec, now_ms, key, targets, settings, free)
    if now_ms - st["last_progress"] > settings.progress_deadline * 1000:
        return (RollingStatus.FAILED,
                f"no instance finished updating within progress_deadline ({settings.progress_deadline:.0f}s)")
    failure = _step_surge(rec, obs, now_ms, st, weights, settings)
    if failure is None:
        failure = _step_batch(rec, obs, now_ms, st, weights, settings)
    if failure is not None:
        return RollingStatus.FAILED, failure
    if not st["batch"] and st["queue"]:
        _start_batch(rec, obs, now_ms, st, targets, weights, settings, extra_serving)
    if st["queue"] or st["batch"] or not _surge_removed(rec, obs, st):
        return RollingStatus.RUNNING, ""
    return RollingStatus.DONE, ""


def _progress(rec: Record, now_ms: int, key: ProgressKey, targets: Sequence[str], settings: RollingConfig,
              free: Sequence[str]) -> RollingProgress:
    """The machine's progress in the record, laid out on its first tick (surge slots taken from `free`)."""
    st = rec["data"].get(key)
    if st is None:
        surge = list(free[: settings.max_surge])
        st = rec["data"][key] = {"queue": list(targets), "batch": [], "surge": surge, "last_progress": now_ms}
        if settings.max_surge > len(free):
            event(rec, now_ms, "note", message=f"max_surge {settings.max_surge} reduced to {len(surge)}: "
                                               f"only {len(free)} spare address(es)")
    return st


def _step_surge(rec: Record, obs: Observation, now_ms: int, st: RollingProgress, weights: dict[str, int],
                settings: RollingConfig) -> str | None:
    """Surge instances: up before any live one goes down, removed once every batch is done. Why it failed, or None."""
    version, slots = rec["new_version"], rec["slots"]
    unit = max(1, round(sum(weights.values()) / max(len(weights), 1)))  # a surge instance takes an average share
    pending = st["queue"] or st["batch"]
    for name in st["surge"]:
        slot, server = slots[name], obs.servers.get(name)
        if pending:
            if slot["want"] != version:
                replace(slot, version, now_ms)
                slot["weight"] = unit
            if settled(slot) and unhealthy(slot):
                return f"surge instance {name} failed its health checks: {slot['health'].get('detail')}"
            if settled(slot) and healthy(slot) and slot["router"] == MAINT:
                set_router(slot, READY, now_ms, unit)
        else:
            if slot["router"] == READY:
                set_router(slot, DRAIN, now_ms)
            if slot["want"] is not None and drained(slot, server, now_ms, settings.drain_timeout):
                replace(slot, None, now_ms)
                set_router(slot, out_of_router(slot), now_ms)
    return None


def _step_batch(rec: Record, obs: Observation, now_ms: int, st: RollingProgress, weights: dict[str, int],
                settings: RollingConfig) -> str | None:
    """The current batch: drain, restart on the new version, health gate, ready, UP. Why it failed, or None."""
    version, slots = rec["new_version"], rec["slots"]
    for name in list(st["batch"]):
        slot, server = slots[name], obs.servers.get(name)
        if slot["step"] == SlotStep.DRAIN:
            if slot["router"] == READY:
                set_router(slot, DRAIN, now_ms)
            if drained(slot, server, now_ms, settings.drain_timeout):
                replace(slot, version, now_ms)
                slot["step"] = SlotStep.REPLACE
        if slot["step"] == SlotStep.REPLACE and settled(slot):
            if unhealthy(slot):
                return f"{name} failed its health checks on {version}: {slot['health'].get('detail')}"
            if healthy(slot):
                set_router(slot, READY, now_ms, weights[name])
                slot["step"] = SlotStep.UP
        if slot["step"] == SlotStep.UP and in_router(slot, server, weights[name]):
            slot["step"] = None
            st["batch"].remove(name)
            st["last_progress"] = now_ms
            event(rec, now_ms, "updated", server=name, version=version)
    return None


def _start_batch(rec: Record, obs: Observation, now_ms: int, st: RollingProgress, targets: Sequence[str],
                 weights: dict[str, int], settings: RollingConfig, extra_serving: Sequence[str]) -> None:
    """The next batch, once the previous one is done: as many as the spare serving capacity allows."""
    slots = rec["slots"]
    pool = [*targets, *st["surge"], *extra_serving]
    capacity = sum(1 for n in pool if serving(slots[n], obs.servers.get(n)))
    spare_capacity = capacity - (len(targets) - settings.max_unavailable)
    batch: list[str] = []
    # Not serving anyway: replacing it costs no capacity.
    for name in list(st["queue"]):
        if len(batch) < settings.batch_size and not serving(slots[name], obs.servers.get(name)):
            batch.append(name)
    for name in list(st["queue"]):
        if len(batch) >= settings.batch_size or spare_capacity <= 0:
            break
        if name not in batch:
            batch.append(name)
            spare_capacity -= 1
    for name in batch:
        st["queue"].remove(name)
        slots[name]["step"] = SlotStep.DRAIN
        slots[name]["weight"] = weights[name]
    st["batch"] = batch
    if batch:
        event(rec, now_ms, "batch", servers=list(batch), version=rec["new_version"])


def _surge_removed(rec: Record, obs: Observation, st: RollingProgress) -> bool:
    """Every surge instance stopped and out of the router."""
    slots = rec["slots"]
    return all(slots[n]["want"] is None and settled(slots[n]) and router_matches(slots[n], obs.servers.get(n))
               for n in st["surge"])


def advance(rec: Record, obs: Observation, now_ms: int) -> None:
    """The rolling strategy: one rolling machine over the live slots."""
    if rec["state"] != PROGRESSING:
        return
    config = config_of(rec)
    live = rec["live"]
    free = [name for name in rec["slots"] if name not in live]
    # Spare addresses first: instance slots outside the live set may be a kept blue-green pool.
    free.sort(key=lambda n: rec["slots"][n]["kind"] != "spare")
    status, message = step_rolling(rec, obs, now_ms, key="rolling", targets=live,
                                   weights=weight_shares(live, 100), settings=config.rolling, free=free)
    if status == RollingStatus.FAILED:
        begin_abort(rec, now_ms, "script_failure", message)
    elif status == RollingStatus.DONE:
        succeed(rec, now_ms, SUCCEEDED, f"{len(live)} instance(s) updated to {rec['new_version']}")
