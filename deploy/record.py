"""The deployment record: the persisted state machine of one deployment job, as plain JSON.

A tick loads it, the strategy advances it (pure), the reconciler applies it, the tick
saves it with compare-and-set. Layout:

    run_id, job, token        the job and the state-store claim token fencing its finish
    seq                       tick sequence number: a tick carrying another seq is stale
    strategy, state           see STATES; TERMINAL states end the tick chain
    stable_version            what the live slots ran before (None: never deployed by Conveyor)
    new_version
    config                    DeployConfig.to_dict()
    live                      slot names that served the stable version when the deployment began
    slots                     name -> Slot record (below)
    data                      strategy-specific progress (batches, canary step, gates, analysis)
    abort                     None, or {reason, message, by, at, automatic}
    result                    None, or the job's outcome {status, reason, message} once decided
    job_finished              the state store has the job's outcome
    retries                   consecutive transient failures (bounded, then abort)
    commands_done             how many abort/rollback commands this record has consumed
    next_tick_at, created_at, updated_at   epoch ms
    events                    [{at, type, ...}], the newest MAX_EVENTS

Slot record: what the strategy wants and what the provider last did.

    address, kind             from the environment (instance | spare)
    version                   what the provider last started here; UNKNOWN when it predates Conveyor
    running                   the provider started it and has not stopped it since
    want                      the version that should run (None: stopped)
    router, weight            desired router entry: ready | drain | maint | absent, and weight
    health                    consecutive probe counts (deploy.health)
    step                      per-slot progress inside a strategy (drain, replace, up, restore-*)
    held                      restore only: it served when restore took it down (one such at a time)
    since                     epoch ms of the last `router` change (drain timeouts)
"""
from __future__ import annotations

import copy
from typing import Any

from deploy import health
from deploy.config import DeployConfig
from deploy.routers.base import ABSENT, MAINT, READY
from shared.state.base import iso_ms

QUEUED = "queued"
PROGRESSING = "progressing"
PAUSED = "paused"
WAITING = "waiting_approval"
ANALYZING = "analyzing"
SWITCHING = "switching"
PROMOTING = "promoting"
FINALIZING = "finalizing"
PROMOTED = "promoted"  # blue-green: switched, old slots kept for rollback
ABORTING = "aborting"
ROLLING_BACK = "rolling_back"
SUCCEEDED = "succeeded"
ABORTED = "aborted"
ROLLED_BACK = "rolled_back"
TERMINAL = frozenset({SUCCEEDED, ABORTED, ROLLED_BACK})
STATES = (QUEUED, PROGRESSING, PAUSED, WAITING, ANALYZING, SWITCHING, PROMOTING, FINALIZING, PROMOTED,
          ABORTING, ROLLING_BACK, SUCCEEDED, ABORTED, ROLLED_BACK)

UNKNOWN = "(unknown)"  # a live instance Conveyor did not start: running, version unknown
MAX_EVENTS = 1000

Record = dict[str, Any]


def new_record(run_id: str, job: str, config: DeployConfig, token: int, now_ms: int) -> Record:
    """A deployment that has not acquired its environment yet."""
    return {
        "run_id": run_id,
        "job": job,
        "token": token,
        "seq": 0,
        "strategy": config.strategy,
        "state": QUEUED,
        "stable_version": None,
        "new_version": config.version,
        "config": config.to_dict(),
        "live": [],
        "slots": {},
        "data": {},
        "abort": None,
        "result": None,
        "job_finished": False,
        "retries": 0,
        "commands_done": 0,
        "next_tick_at": now_ms,
        "created_at": now_ms,
        "updated_at": now_ms,
        "events": [],
    }


def initialise(record: Record, config: DeployConfig, live: list[str] | None, stable_version: str | None,
               now_ms: int) -> Record:
    """Lay out the slots once the environment is ours: `live` serves `stable_version` now.

    `live` None means Conveyor never deployed here: the instances of the environment are live.
    """
    rec = copy.deepcopy(record)
    names = [slot.name for slot in config.slots]
    live = [name for name in (live if live is not None else [s.name for s in config.instances]) if name in names]
    if not live:
        live = [slot.name for slot in config.instances]
    shares = weight_shares(live, 100)
    rec["live"] = live
    rec["stable_version"] = stable_version
    rec["slots"] = {}
    for slot in config.slots:
        is_live = slot.name in live
        version = (stable_version or UNKNOWN) if is_live else None
        rec["slots"][slot.name] = {
            "address": slot.address,
            "kind": slot.kind,
            "version": version,
            "running": is_live,
            "want": version,
            "router": READY if is_live else (MAINT if slot.kind == "instance" else ABSENT),
            "weight": shares.get(slot.name, 0),
            "health": health.fresh(),
            "step": None,
            "since": now_ms,
        }
    return rec


def weight_shares(names: list[str], total: int) -> dict[str, int]:
    """`total` weight split as evenly as integers allow, earlier names taking the remainder."""
    if not names:
        return {}
    base, extra = divmod(max(total, 0), len(names))
    return {name: base + (1 if index < extra else 0) for index, name in enumerate(names)}


def event(rec: Record, now_ms: int, kind: str, **fields: Any) -> None:
    """Record a timestamped event (the newest MAX_EVENTS are kept)."""
    rec["events"].append({"at": iso_ms(now_ms), "type": kind, **fields})
    if len(rec["events"]) > MAX_EVENTS:
        del rec["events"][: len(rec["events"]) - MAX_EVENTS]


def set_state(rec: Record, state: str, now_ms: int, **fields: Any) -> None:
    if rec["state"] != state:
        event(rec, now_ms, "state", **{"from": rec["state"], "to": state}, **fields)
        rec["state"] = state


def set_router(slot: dict, state: str, now_ms: int, weight: int | None = None) -> None:
    """Change a slot's desired router entry, remembering when (drain timeouts count from it)."""
    if slot["router"] != state:
        slot["router"] = state
        slot["since"] = now_ms
    if weight is not None:
        slot["weight"] = weight


def replace(slot: dict, version: str | None, now_ms: int) -> None:
    """Ask for `version` (None: stop) on the slot; it leaves the router first (or joins it in maintenance)."""
    if slot["router"] in (READY, "drain") or (slot["router"] == ABSENT and version is not None):
        set_router(slot, MAINT, now_ms)
    slot["want"] = version


def settled(slot: dict) -> bool:
    """The provider has done what the slot wants."""
    if slot["want"] is None:
        return not slot["running"]
    return slot["running"] and slot["version"] == slot["want"]


def effective_weights(rec: Record) -> dict[str, int]:
    """Desired router weight per managed server (0 while draining or in maintenance; absent ones left out)."""
    return {name: (int(slot["weight"]) if slot["router"] == READY else 0)
            for name, slot in rec.get("slots", {}).items() if slot["router"] != ABSENT}
