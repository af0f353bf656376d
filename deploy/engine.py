"""The tick: one short, idempotent step of a deployment, and the start that creates it.

A tick takes the deployment's lock, loads its record, drops itself if its sequence
number is stale (a duplicate chain), heartbeats the job's lease, reads the router,
probes what is due, lets the strategy decide (pure), sends the router ONE batch, runs
the provider operations the batch made safe, finishes the job when the outcome is
decided, saves the record with compare-and-set, and enqueues the next tick. Nothing
waits inside a tick: a pause is a later tick.

Transient failures (router unreachable, provider exit 75, Docker engine errors) retry
with Celery's exponential backoff with full jitter; the count lives in the record, so
it survives worker changes. After MAX_RETRIES in a row the deployment aborts (reason
`infrastructure`); if the abort itself cannot get through, it gives up after as many
retries again and ends failed with the router possibly not restored, saying so.
"""
from __future__ import annotations

import copy
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Callable

from celery.utils.time import get_exponential_backoff_interval

from deploy import environment, jobstate, reconcile
from deploy.config import DeployConfig, config_from_dict
from deploy.health import Probe, probe
from deploy.providers import Instance, Provider, ProviderError, TransientProviderError, open_provider
from deploy.record import (
    ABORTED,
    ABORTING,
    ANALYZING,
    PROMOTED,
    QUEUED,
    ROLLING_BACK,
    TERMINAL,
    Record,
    SlotStep,
    effective_weights,
    event,
    new_record,
    set_state,
)
from deploy.routers import open_router
from deploy.routers.base import DelServer, Router, RouterError, RouterUnavailable, describe
from deploy.smoke import smoke
from deploy.store.base import DeployStore
from deploy.strategies import Observation, advance
from deploy.strategies.base import begin_abort
from shared.state.base import StateStore

log = logging.getLogger("conveyor.deploy")

NUDGE = -1  # a tick sent by a command: acts now, never continues or breaks the chain
LOCK_TTL_MS = 10_000
LOCK_RETRY_S = 0.2
MAX_RETRIES = 6
BACKOFF_MAX_S = 30
MIN_BACKOFF_S = 0.2
MIN_LEASE_MS = jobstate.MIN_LEASE_MS
QUEUED_POLL_S = 2.0
KEEP_TICK_S = 1.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


Enqueue = Callable[[str, str, int, float], None]


class TickOutcome(StrEnum):
    """What a tick that did not advance the deployment found (`tick` otherwise returns the record's state)."""

    LOCKED = "locked"  # another tick holds the lock; a tick in the chain comes back shortly
    MISSING = "missing"  # no record
    STALE = "stale"  # the tick's sequence number is not the record's: a duplicate, dropped
    FINISHED = "finished"  # the deployment had already ended
    CONFLICT = "conflict"  # the record changed under the tick; its work is dropped


@dataclass
class DeployRuntime:
    """What ticks need from the world; tests swap the factories and the clock.

    Named apart from shared.expressions.functions.Runtime (what expressions evaluate against).
    """

    state: StateStore
    deploys: DeployStore
    enqueue: Enqueue  # (run_id, job, seq, countdown seconds)
    worker_name: str = "conveyor"
    router_factory: Callable[[DeployConfig], Router] = lambda config: open_router(config.router)
    provider_factory: Callable[[DeployConfig, Path | None], Provider] = open_provider
    lease_ms: int = MIN_LEASE_MS
    clock: Callable[[], int] = now_ms
    # (environment, strategy, old state | None, new state | None): the workers' deployment gauge
    on_transition: Callable[[str, str, str | None, str | None], None] | None = None
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(8, thread_name_prefix="deploy-io"))


def tick_interval(config: DeployConfig) -> float:
    """Seconds between ticks when nothing is pending: half the shortest probe or analysis interval."""
    shortest = config.health.interval
    if config.strategy == "canary" and config.canary.analysis is not None:
        shortest = min(shortest, config.canary.analysis.interval)
    return min(max(shortest / 2, 0.2), 2.0)


# -- start -----------------------------------------------------------------------------------


def begin(rt: DeployRuntime, run_id: str, job: str, token: int, config: DeployConfig, workdir: str | None,
          deadline_ms: int | None) -> Record:
    """Create the record (or adopt an existing one for a newer claim) and enqueue a tick.

    Idempotent: a redelivered start finds the record and only makes sure it ticks.
    """
    now = rt.clock()
    rec = new_record(run_id, job, config, token, now)
    rec["workdir"] = workdir
    rec["deadline"] = deadline_ms
    event(rec, now, "created", strategy=config.strategy, version=config.version, environment=config.environment)
    if rt.deploys.create(rec):
        _transition(rt, config, None, rec["state"])
        rt.enqueue(run_id, job, rec["seq"], 0)
        return rec
    owner = f"start:{uuid.uuid4().hex}"
    for _ in range(50):
        if rt.deploys.lock(run_id, job, owner, LOCK_TTL_MS):
            break
        time.sleep(0.2)
    else:
        owner = ""
    try:
        loaded = rt.deploys.load(run_id, job)
        assert loaded is not None
        rec, version = loaded
        if rec["token"] != token and not rec["job_finished"]:
            rec["token"] = token
            event(rec, now, "adopted", token=token)
            rt.deploys.save(rec, version)
    finally:
        if owner:
            rt.deploys.unlock(run_id, job, owner)
    if rec["state"] not in TERMINAL or not rec["job_finished"]:
        rt.enqueue(run_id, job, rec["seq"], 0)
    return rec


# -- the tick ----------------------------------------------------------------------------------


class _LockKeeper:
    """Keeps the tick lock alive while a tick runs long (a slow provider start)."""

    def __init__(self, rt: DeployRuntime, run_id: str, job: str, owner: str) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(rt, run_id, job, owner), daemon=True,
                                       name="deploy-lock")
        self.thread.start()

    def _run(self, rt: DeployRuntime, run_id: str, job: str, owner: str) -> None:
        while not self.stop.wait(LOCK_TTL_MS / 3000):
            try:
                rt.deploys.refresh_lock(run_id, job, owner, LOCK_TTL_MS)
            except Exception as exc:  # the lock then lapses; CAS on save still protects the record
                log.warning("deploy lock refresh failed: %s", exc)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def tick(rt: DeployRuntime, run_id: str, job: str, seq: int) -> str:
    """Run one tick; returns what happened, for logs and tests: a TickOutcome, the state the
    deployment ended in, or its state with `(nudge)` or with the countdown to the next tick."""
    owner = f"{rt.worker_name}:{uuid.uuid4().hex}"
    if not rt.deploys.lock(run_id, job, owner, LOCK_TTL_MS):
        if seq != NUDGE:
            rt.enqueue(run_id, job, seq, LOCK_RETRY_S)  # a stale copy is dropped when it runs
        return TickOutcome.LOCKED
    keeper = _LockKeeper(rt, run_id, job, owner)
    try:
        outcome, follow_up = _tick_locked(rt, run_id, job, seq)
    finally:
        keeper.close()
        rt.deploys.unlock(run_id, job, owner)
    if follow_up is not None:  # after unlocking, or a quick next tick would find the lock taken
        rt.enqueue(run_id, job, *follow_up)
    return outcome


def _tick_locked(rt: DeployRuntime, run_id: str, job: str, seq: int) -> tuple[str, tuple[int, float] | None]:
    """The tick under the lock: (outcome, (next seq, countdown) to enqueue or None)."""
    loaded = rt.deploys.load(run_id, job)
    if loaded is None:
        return TickOutcome.MISSING, None
    rec, version = loaded
    if seq != NUDGE and seq != rec["seq"]:
        return TickOutcome.STALE, None
    if rec["state"] in TERMINAL:
        if not rec["job_finished"]:  # saved terminal, died before telling the state store
            jobstate.finish(rt.state, rec, rt.clock())
            rt.deploys.save(rec, version)
        return TickOutcome.FINISHED, None
    config = config_from_dict(rec["config"])
    now = rt.clock()
    events_before = len(rec["events"])
    old_state = rec["state"]
    transient: Exception | None = None
    progressed = False
    try:
        rec, progressed, transient = _step(rt, rec, config, now)
    except (RouterUnavailable, TransientProviderError) as exc:
        transient = exc
    except RouterError as exc:
        # The router refused something structural (no such backend): retrying will not help.
        begin_abort(rec, now, "infrastructure", f"router error: {exc}")
        if rec["state"] == ABORTING:
            transient = exc  # cannot restore through a broken router either; give up after the retries
    countdown = tick_interval(config)
    if transient is not None:
        rec["retries"] = rec.get("retries", 0) + 1
        delay = max(MIN_BACKOFF_S, float(get_exponential_backoff_interval(1, rec["retries"] - 1, BACKOFF_MAX_S, True)))
        event(rec, now, "retry", attempt=rec["retries"], error=str(transient), delay_s=round(delay, 2))
        countdown = delay
        if rec["retries"] > MAX_RETRIES:
            _give_up(rec, now, transient)
            countdown = 0.0
    else:
        rec["retries"] = 0
        if rec["state"] == QUEUED:
            countdown = QUEUED_POLL_S  # waiting for another deployment of this environment
        if rec["state"] == PROMOTED:
            # the job is done; only the keep window's end (or a nudged rollback) matters now
            countdown = max(countdown, KEEP_TICK_S)
        if progressed or rec["state"] != old_state:
            countdown = 0.05
        elif rec["state"] != PROMOTED:
            due = [s["health"]["next_at"] for s in rec["slots"].values() if s["running"] and s["want"] is not None]
            if due:
                countdown = min(countdown, max(0.05, (min(due) - now) / 1000))
    jobstate.finish(rt.state, rec, now)
    environment.sync(rt.deploys, rec, config)
    jobstate.write_logs(rt.state, rec, events_before)
    if seq != NUDGE:
        rec["seq"] += 1
        rec["next_tick_at"] = now + int(countdown * 1000)
    rec["updated_at"] = now
    if not rt.deploys.save(rec, version):
        log.warning("deployment %s/%s: record changed under tick %s; dropping it", run_id, job, seq)
        return TickOutcome.CONFLICT, None
    if rec["state"] != old_state:
        _transition(rt, config, old_state, None if rec["state"] in TERMINAL else rec["state"])
    if rec["state"] in TERMINAL:
        return rec["state"], None
    if seq == NUDGE:
        return f"{rec['state']} (nudge)", None
    return f"{rec['state']} +{countdown:.2f}s", (rec["seq"], countdown)


def _transition(rt: DeployRuntime, config: DeployConfig, old: str | None, new: str | None) -> None:
    if rt.on_transition is not None:
        try:
            rt.on_transition(config.environment, config.strategy, old, new)
        except Exception as exc:  # metrics never fail a deployment
            log.debug("deployment metrics: %s", exc)


def _give_up(rec: Record, now: int, error: Exception) -> None:
    message = f"gave up after {MAX_RETRIES} transient errors in a row: {error}"
    if rec["state"] in (ABORTING, ROLLING_BACK):
        # The restore itself cannot get through: end, and say the router may not be restored.
        event(rec, now, "restore_incomplete", message=message)
        set_state(rec, ABORTED, now)
        if rec["result"] is None:
            rec["result"] = {"status": "failed", "reason": "infrastructure",
                             "message": f"{message}; the router may still route to the new version"}
        return
    begin_abort(rec, now, "infrastructure", message)
    rec["retries"] = 0


def _step(rt: DeployRuntime, rec: Record, config: DeployConfig, now: int) -> tuple[Record, bool, Exception | None]:
    """The body of a tick; returns (record, made progress, transient error to retry)."""
    rec = copy.deepcopy(rec)
    run_id, job = rec["run_id"], rec["job"]
    cancelled = jobstate.heartbeat(rt.state, rec, now, rt.lease_ms)
    if rec["state"] == QUEUED:
        if not environment.acquire(rt.deploys, rec, config, now):
            if cancelled or rt.deploys.commands(run_id, job, rec["commands_done"]):
                # Never started: nothing to restore.
                set_state(rec, ABORTED, now)
                reason = "cancelled" if cancelled else "script_failure"
                rec["result"] = {"status": "cancelled" if cancelled else "failed", "reason": reason,
                                 "message": "aborted while waiting for the environment"}
            return rec, False, None
    router = rt.router_factory(config)
    servers = router.servers()
    check = reconcile.router_check(config.health)
    if rec.get("router_ok"):
        drift = [a for a in reconcile.router_actions(rec, servers, check) if not isinstance(a, DelServer)]
        if drift:
            event(rec, now, "drift", actions=[describe(a) for a in drift])
    source = rec.get("workdir")
    workdir = Path(source) if source else None
    _probe(rt, rec, config, workdir, now)
    smoke_result = None
    if rec["state"] == ANALYZING and rec["strategy"] == "blue_green":
        green = [Instance(n, rec["slots"][n]["address"]) for n in rec["data"].get("green", [])]
        smoke_result = smoke(green, config.analysis).to_dict()
    commands = rt.deploys.commands(run_id, job, rec["commands_done"])
    rec["commands_done"] += len(commands)
    obs = Observation(servers=servers, gates=rt.deploys.gate_answers(run_id), commands=commands,
                      smoke=smoke_result, cancelled=cancelled)
    before = copy.deepcopy(rec["slots"])
    weights_before = effective_weights(rec)
    events_before = len(rec["events"])
    rec = advance(rec, obs, now)
    progressed = rec["slots"] != before
    weights = effective_weights(rec)
    logged = any(e["type"] == "weight" for e in rec["events"][events_before:])
    if not logged and _nonzero(weights) != _nonzero(weights_before):
        event(rec, now, "weight", weights=weights)
    actions = reconcile.router_actions(rec, servers, check)
    blocked: set[str] = set()
    rec["router_ok"] = True
    if actions:
        outcomes = router.apply(actions)
        failures = [o for o in outcomes if o.error is not None]
        blocked = {o.action.name for o in failures}
        event(rec, now, "router", actions=[describe(a) for a in actions],
              errors={describe(o.action): o.error for o in failures} or None)
        rec["router_ok"] = not failures
        progressed = True
    transient, done = _provide(rt, rec, config, workdir, reconcile.provider_operations(rec, blocked), now)
    return rec, progressed or done > 0, transient


def _nonzero(weights: dict[str, int]) -> dict[str, int]:
    return {name: weight for name, weight in weights.items() if weight}


def _probe(rt: DeployRuntime, rec: Record, config: DeployConfig, workdir: Path | None, now: int) -> None:
    targets = reconcile.probe_targets(rec, now)
    if not targets:
        return
    futures = {name: rt.pool.submit(probe, config.health, Instance(name, rec["slots"][name]["address"]), workdir,
                                   config.provider)
               for name in targets}
    results: dict[str, Probe] = {name: future.result() for name, future in futures.items()}
    for name, healthy in reconcile.apply_probes(rec, results, config.health, now):
        event(rec, now, "health", server=name, healthy=healthy, version=rec["slots"][name]["version"],
              detail=rec["slots"][name]["health"].get("detail"))


def _provide(rt: DeployRuntime, rec: Record, config: DeployConfig, workdir: Path | None,
             operations: list[tuple[str, str | None]], now: int) -> tuple[Exception | None, int]:
    """Run the provider operations in parallel; record successes, abort on permanent failures.

    Returns the last transient error (to retry) and how many operations succeeded.
    """
    if not operations:
        return None, 0
    provider = rt.provider_factory(config, workdir)

    def run(name: str, version: str | None) -> str:
        instance = Instance(name, rec["slots"][name]["address"])
        return provider.start(instance, version) if version is not None else provider.stop(instance)

    futures = [(name, version, rt.pool.submit(run, name, version)) for name, version in operations]
    transient: Exception | None = None
    done = 0
    for name, version, future in futures:
        action = f"start {version}" if version is not None else "stop"
        try:
            output = future.result()
        except TransientProviderError as exc:
            transient = exc
            continue
        except ProviderError as exc:
            event(rec, now, "provider_error", server=name, action=action, error=str(exc))
            _permanent_failure(rec, name, version, str(exc), now)
            continue
        except Exception as exc:  # a provider bug is a permanent failure of that operation
            log.exception("provider %s %s failed", action, name)
            event(rec, now, "provider_error", server=name, action=action, error=f"{type(exc).__name__}: {exc}")
            _permanent_failure(rec, name, version, str(exc), now)
            continue
        reconcile.record_operation(rec, name, version, rt.clock())
        done += 1
        event(rec, now, "provider", server=name, action=action, output=(output or "")[-500:] or None)
    return transient, done


def _permanent_failure(rec: Record, name: str, version: str | None, error: str, now: int) -> None:
    slot = rec["slots"][name]
    if rec["state"] in (ABORTING, ROLLING_BACK):
        if version is None:
            slot["running"] = False  # cannot stop it: forget it rather than block the abort for ever
        else:
            slot["step"] = SlotStep.RESTORE_FAILED
        return
    begin_abort(rec, now, "script_failure", f"cannot {'start ' + version if version else 'stop'} on {name}: {error}")
