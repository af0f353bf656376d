"""The deployment record: the persisted state machine of one deployment job, as plain JSON.

A tick loads it, the strategy advances it (pure), the reconciler applies it, the tick
saves it with compare-and-set. This module is the one definition of what the deployment
store holds (`Record` and the shapes inside it, `EnvRecord`, `Command`, `GateAnswer`) and
the helpers every strategy uses to change a record. The shapes are TypedDicts over the
JSON: a stored record loads as a plain dict, so a field added later must be NotRequired
(older records lack it), and enum values are stored as their strings.
"""
from __future__ import annotations

import copy
from enum import StrEnum
from typing import Any, NotRequired, TypedDict, cast

from deploy import health
from deploy.config import DeployConfig
from deploy.health import HealthState
from deploy.routers.base import ABSENT, DRAIN, MAINT, READY, CountersDict
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


class SlotStep(StrEnum):
    """Per-slot progress inside a strategy (a slot's `step`; None: nothing in progress).

    The values are what the stored JSON holds: a loaded record has them as plain strings,
    which compare equal to these members.
    """

    DRAIN = "drain"  # rolling: draining before the restart
    REPLACE = "replace"  # rolling: restarting on the new version, then health-gated
    UP = "up"  # rolling: set ready, waiting for the router to report it UP at its weight
    RESTORE_DRAIN = "restore-drain"  # restore: draining before the restart on the stable version
    RESTORE_START = "restore-start"  # restore: restarting on the stable version, then health-gated
    RESTORE_UP = "restore-up"  # restore: set ready, waiting for the router to report it UP
    RESTORE_FAILED = "restore-failed"  # restore: the stable version fails here too; left in maintenance


class SlotRecord(TypedDict):
    """One slot (router server) of the deployment: desired state and what the provider last did."""

    address: str  # from the environment
    kind: str  # instance | spare
    version: str | None  # what the provider last started here; UNKNOWN when it predates Conveyor
    running: bool  # the provider started it and has not stopped it since
    want: str | None  # the version that should run (None: stopped)
    router: str  # desired router entry: ready | drain | maint | absent
    weight: int  # desired router weight (a percentage share)
    health: HealthState  # consecutive probe counts
    step: SlotStep | None
    since: int  # epoch ms of the last `router` change
    held: NotRequired[bool]  # restore only: it served when restore took it down (one such at a time)


class AbortInfo(TypedDict):
    """Why and by whom the deployment is aborting or rolling back."""

    reason: str | None  # script_failure | infrastructure | cancelled; None for a rollback
    message: str
    by: str | None  # who asked; None when Conveyor decided
    at: int  # epoch ms
    automatic: bool  # decided by Conveyor (a failed check, analysis, deadline), not asked for


class JobResult(TypedDict):
    """The job's outcome, once decided; the tick reports it to the state store."""

    status: str  # success | failed | cancelled
    reason: str | None  # the state store's failure reason; None on success
    message: str | None


class Event(TypedDict):
    """One entry of the record's history. Each kind (`type`) carries its own further fields
    (docs/deployments.md lists them); only these two are common to all."""

    at: str  # ISO-8601 UTC with milliseconds
    type: str


class GateWait(TypedDict):
    """The approval gate a deployment waits at."""

    name: str
    since: int  # epoch ms
    deadline: int | None  # epoch ms; None: waits for ever


class GateAnswer(TypedDict):
    """`conveyor approve|reject`: per run and gate, the first answer wins."""

    decision: str  # approve | reject
    by: str | None
    at: str  # ISO-8601


class Command(TypedDict):
    """`conveyor abort|rollback`: appended to the deployment's command list."""

    type: str  # abort | rollback
    by: str | None
    at: NotRequired[str | None]  # ISO-8601


class RollingProgress(TypedDict):
    """The rolling machine's progress (a rolling update, or a canary promotion)."""

    queue: list[str]  # targets not started yet
    batch: list[str]  # targets being replaced now
    surge: list[str]  # slots running extra new-version instances meanwhile
    last_progress: int  # epoch ms an instance last finished (progress_deadline counts from it)


class AnalysisWindow(TypedDict):
    """An open canary analysis window: the canary's counters when it began."""

    start: int  # epoch ms
    baseline: CountersDict


class StrategyData(TypedDict, total=False):
    """Strategy-specific progress (the record's `data`); each strategy sets its own keys on its first tick."""

    # environment: the deployment whose environment this one waits for (queued)
    waiting_for: str
    # rolling (`rolling`) and canary promotion (`promotion`)
    rolling: RollingProgress
    promotion: RollingProgress
    # blue-green
    green: list[str]  # the slots of the new colour
    ready_at: int | None  # epoch ms every green instance was ready
    switched_at: int | None  # epoch ms the router had the switch
    keep_until: int | None  # epoch ms the blue instances may be stopped
    # blue-green (`promote`) and canary (approval, `pause: {}`)
    gate: GateWait | None
    # canary
    canary: str  # the canary's slot
    step: int  # index of the current canary step
    step_started: int | None  # epoch ms
    weight: int  # the canary's current share
    window: AnalysisWindow | None
    failures: int  # failing analysis windows in a row
    passes: int  # passing windows in all
    step_passes: int  # passing windows at the current weight
    analysed: bool  # the canary has had traffic to judge


class Record(TypedDict):
    """The deployment record (a row of deploy_records, or a Redis hash's `data`)."""

    run_id: str
    job: str
    token: int  # the state-store claim token fencing the job's finish
    seq: int  # tick sequence number: a tick carrying another seq is stale
    strategy: str  # rolling | blue_green | canary
    state: str  # see STATES; TERMINAL states end the tick chain
    stable_version: str | None  # what the live slots ran before (None: never deployed by Conveyor)
    new_version: str
    config: dict[str, Any]  # DeployConfig.to_dict(); config_from_dict reads it back
    live: list[str]  # slot names that served the stable version when the deployment began
    slots: dict[str, SlotRecord]
    data: StrategyData
    abort: AbortInfo | None
    result: JobResult | None  # the job's outcome once decided
    job_finished: bool  # the state store has the job's outcome
    retries: int  # consecutive transient failures (bounded, then abort)
    commands_done: int  # how many abort/rollback commands this record has consumed
    next_tick_at: int  # epoch ms
    created_at: int  # epoch ms
    updated_at: int  # epoch ms
    events: list[Event]  # the newest MAX_EVENTS
    # set by the engine's start and ticks, not by new_record
    workdir: NotRequired[str | None]  # the run's source directory (command providers run there)
    deadline: NotRequired[int | None]  # epoch ms the pipeline times out: the deployment aborts
    router_ok: NotRequired[bool]  # the last router batch went through (drift is only reported after one)


class EnvRecord(TypedDict):
    """What a deployment leaves in its environment (keyed by router admin address and backend)."""

    live: list[str] | None  # None: Conveyor never deployed here, the configured instances are live
    stable_version: str | None
    owner: str | None  # "RUN\nJOB" of the deployment that holds the environment
    environment: NotRequired[str]  # the YAML name, for people reading the store


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
    # an Event with the kind's own fields besides `at` and `type`
    rec["events"].append(cast(Event, {"at": iso_ms(now_ms), "type": kind, **fields}))
    if len(rec["events"]) > MAX_EVENTS:
        del rec["events"][: len(rec["events"]) - MAX_EVENTS]


def set_state(rec: Record, state: str, now_ms: int, **fields: Any) -> None:
    """Move to `state`, recording a `state` event (nothing when already there)."""
    if rec["state"] != state:
        event(rec, now_ms, "state", **{"from": rec["state"], "to": state}, **fields)
        rec["state"] = state


def set_router(slot: SlotRecord, state: str, now_ms: int, weight: int | None = None) -> None:
    """Change a slot's desired router entry, remembering when (drain timeouts count from it)."""
    if slot["router"] != state:
        slot["router"] = state
        slot["since"] = now_ms
    if weight is not None:
        slot["weight"] = weight


def replace(slot: SlotRecord, version: str | None, now_ms: int) -> None:
    """Ask for `version` (None: stop) on the slot; it leaves the router first (or joins it in maintenance)."""
    if slot["router"] in (READY, DRAIN) or (slot["router"] == ABSENT and version is not None):
        set_router(slot, MAINT, now_ms)
    slot["want"] = version


def settled(slot: SlotRecord) -> bool:
    """The provider has done what the slot wants."""
    if slot["want"] is None:
        return not slot["running"]
    return slot["running"] and slot["version"] == slot["want"]


def effective_weights(rec: Record) -> dict[str, int]:
    """Desired router weight per managed server (0 while draining or in maintenance; absent ones left out)."""
    return {name: (int(slot["weight"]) if slot["router"] == READY else 0)
            for name, slot in rec.get("slots", {}).items() if slot["router"] != ABSENT}
