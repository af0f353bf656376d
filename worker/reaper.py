"""The lost-job reaper: puts the messages of dead workers back on their queue within seconds.

With late acks on Redis, kombu parks every message a worker took in the broker's `unacked`
hash (tag -> ``[message, exchange, routing_key]``) and `unacked_index` sorted set (tag ->
delivery time, the worker's clock), and gives a message back to its queue only once it is
older than the visibility timeout (2 h by default). The state store knows much sooner that
a job's worker is gone: its lease expired. Every worker process runs one `Reaper` thread
that, every few seconds (jittered, one pass at a time cluster-wide thanks to a Redis lock),
reads the unacked messages of task `conveyor.run_job` and restores those nobody will act on:

* the job is `running` and its lease expired: the worker running it died or is cut off;
* the job is `pending` or `retrying` and the message has been due (delivered, and past its
  ETA) for longer than the grace: the worker holding it died before starting it;
* the job is terminal since longer than the grace and the message is still unacked: the
  worker died between recording the outcome and acking (the chain's next step may be lost);
* the run is gone and the message has been due for longer than the grace.

A message with an ETA still in the future is never touched: its holder will run it then,
and if the holder is dead the message becomes due and is restored after the grace.

Some jobs have no message left to restore: a chord whose result backend failed mid-way
(Redis restarted) never sends its body, and a Redis that lost its last second of writes may
have lost a message. So the reaper also looks for stalled runs: a job that is not finished,
whose dependencies all are, that nobody holds a live lease on, and for which no message is
queued or parked, unchanged for longer than the grace. It sends that job's task again, alone
(its dependents, then stalled in turn, follow one grace later). The task reads everything
from the state store, so a copy too many only finds the job claimed or finished.

Last, jobs no live worker can take (no live worker has all their `runs_on` labels, or
consumes their queue: shared/worker_labels.py): one whose condition says it would not run is
skipped at once, as the worker taking it would have; the others fail with `no_worker` once
their `queue_timeout` has passed both since they could start and since a worker able to
take them was last seen. Their message then moves to `jobs`, where any worker finds the job
finished and sends the rest of the canvas. Any worker's reaper does this, so it holds
whichever workers die (not when every worker is gone: then nothing runs at all).

Restoring is exactly kombu's restore (same keys, `redelivered` set, pushed to the end the
workers pop from), done by one Lua script that first checks the unacked entry is still the
one inspected: two reapers, or kombu's own visibility restore, never push a message twice.
Every restored message is harmless when its worker was in fact alive: its ack becomes the
ack of a missing tag, its late result is fenced by the lease token, and a second copy of a
job task finds the job claimed or finished in the state store, which alone decides.
"""
from __future__ import annotations

import base64
import json
import logging
import random
import threading
import time
import uuid
from bisect import bisect
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterable, Iterator, Mapping

import redis as redis_py

from shared import worker_labels
from shared.celery_app import DEPLOY_QUEUE, JOBS_QUEUE, RUN_JOB_TASK, redis_ssl_options, without_ssl_parameters
from shared.config import Settings
from shared.state import Claim, StateStore, UnknownJob, UnknownRun
from shared.state.base import (
    FAILED, PENDING, REASON_NO_WORKER, RETRYING, RUNNING, TERMINAL, JobRecord, epoch_seconds,
)
from shared.units import format_duration

log = logging.getLogger("conveyor.reaper")

LOCK_KEY = "conveyor:reaper:lock"
# Upper bound of one pass; a holder that dies mid-pass blocks the others no longer than this.
LOCK_TTL_S = 30.0
PAGE = 500  # unacked entries read per round trip
# Runs older than the longest pipeline timeout (24 h) plus a day are not looked at for stalls.
STALL_HORIZON_S = 2 * 86400
DEFAULT_PRIORITY_STEPS = (0, 3, 6, 9)  # kombu.transport.redis.PRIORITY_STEPS
MIN_PRIORITY, MAX_PRIORITY = 0, 9  # kombu.transport.virtual.Channel

# KEYS: unacked hash, unacked_index zset, then the queue list(s) to push to.
# ARGV: delivery tag, the entry exactly as inspected, the message to push.
_RESTORE_LUA = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
for i = 3, #KEYS do redis.call('RPUSH', KEYS[i], ARGV[3]) end
return 1
"""
# KEYS: the queue list to take from, the one to push to. ARGV: the message, exactly as queued.
_MOVE_LUA = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
return 1
"""
# The worker named by the attempt that records a `no_worker` failure: no worker ran it.
NO_WORKER = "(no worker)"
# KEYS: lock. ARGV: token, milliseconds. Shortens (or extends) the lock only if still ours.
_SET_LOCK_TTL_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""


@dataclass(frozen=True)
class BrokerKeys:
    """Where kombu's Redis transport keeps queues and unacked messages, prefix included."""

    prefix: str = ""
    unacked: str = "unacked"
    unacked_index: str = "unacked_index"
    sep: str = "\x06\x16"
    priority_steps: tuple[int, ...] = DEFAULT_PRIORITY_STEPS

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "BrokerKeys":
        """From Celery's `broker_transport_options` (kombu's channel options of the same names)."""
        return cls(
            prefix=str(options.get("global_keyprefix") or ""),
            unacked=str(options.get("unacked_key") or cls.unacked),
            unacked_index=str(options.get("unacked_index_key") or cls.unacked_index),
            sep=str(options.get("sep") or cls.sep),
            priority_steps=tuple(options.get("priority_steps") or DEFAULT_PRIORITY_STEPS),
        )

    def key(self, name: str) -> str:
        return self.prefix + name

    def queue_key(self, queue: str, priority: Any) -> str:
        """The list holding `queue`'s messages of this priority, as kombu's `_q_for_pri` names it."""
        try:
            value = max(min(int(priority), MAX_PRIORITY), MIN_PRIORITY)
        except (TypeError, ValueError):
            value = 0
        step = self.priority_steps[bisect(self.priority_steps, value) - 1]
        return self.key(f"{queue}{self.sep}{step}" if step else queue)


@dataclass(frozen=True)
class Parked:
    """One unacked `conveyor.run_job` message."""

    tag: str
    entry: str  # the hash value, exactly as stored: the restore compares against it
    payload: dict
    exchange: str
    routing_key: str
    delivered_at: float  # epoch seconds, the consuming worker's clock
    run_id: str
    job: str
    eta: float | None  # epoch seconds

    @property
    def due(self) -> float:
        """When the holder should have started it."""
        return max(self.delivered_at, self.eta or 0.0)


def job_task(payload: Any) -> tuple[str, str, float | None] | None:
    """(run id, job, ETA in epoch seconds) of a `conveyor.run_job` message; None for another
    task or an unreadable message. `payload` is the message as kombu stores it in Redis."""
    try:
        headers = payload.get("headers") or {}
        if headers.get("task") != RUN_JOB_TASK:
            return None
        body = payload["body"]
        if (payload.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args, kwargs, _embed = json.loads(body)
        run_id = kwargs.get("run_id", args[0] if args else None)
        job = kwargs.get("job", args[1] if len(args) > 1 else None)
        eta = headers.get("eta")
        eta_s = datetime.fromisoformat(eta).timestamp() if eta else None
    except (ValueError, TypeError, KeyError, AttributeError, IndexError):
        return None
    if not isinstance(run_id, str) or not isinstance(job, str):
        return None
    return run_id, job, eta_s


def parse_entry(tag: str, entry: str, delivered_at: float) -> Parked | None:
    """The run_job message in an unacked entry (``[message, exchange, routing_key]``), or None."""
    try:
        payload, exchange, routing_key = json.loads(entry)
    except (ValueError, TypeError):
        return None
    task = job_task(payload)
    if task is None:
        return None
    run_id, job, eta = task
    return Parked(tag, entry, payload, exchange or "", routing_key or "", delivered_at, run_id, job, eta)


def restore_reason(message: Parked, job: JobRecord | None, lease_alive: bool, now: float,
                   grace: float) -> str | None:
    """Why `message` must go back to its queue now, or None to leave it with its holder.

    `job` is None when the run or job is no longer in the state store.
    """
    if message.eta is not None and message.eta > now:
        return None  # a live holder runs it at its ETA; a dead one's copy becomes due then
    overdue = now - message.due > grace
    if job is None:
        return "run gone" if overdue else None
    if job.status == RUNNING:
        # A copy delivered a moment ago is a redelivery its new holder is about to claim.
        return None if lease_alive or now - message.due <= grace / 3 else "lease expired"
    if job.status in (PENDING, RETRYING):
        return f"{job.status}, not started {now - message.due:.0f}s after due" if overdue else None
    if job.status in TERMINAL:
        finished = epoch_seconds(job.finished_at) or 0.0
        if overdue and now - finished > grace:
            return f"{job.status} but never acknowledged"
    return None


@dataclass(frozen=True)
class Action:
    """What one pass did for one job: `restored` its parked message, or `resent` its task."""

    run_id: str
    job: str
    action: str
    why: str


Resend = Callable[[str, str, str], None]  # (run id, job, queue): publish the job's task


@dataclass(frozen=True)
class Route:
    """What the reaper reads of one job of a stored plan."""

    depends_on: tuple[str, ...] = ()
    queue: str = JOBS_QUEUE
    runs_on: tuple[str, ...] = ()
    deploy: bool = False
    queue_timeout: float = worker_labels.DEFAULT_QUEUE_TIMEOUT


NO_ROUTE = Route()


class Reaper(threading.Thread):
    """A daemon thread restoring lost job messages every `interval` seconds (±25 %)."""

    def __init__(self, broker: redis_py.Redis, keys: BrokerKeys, store: StateStore, *,
                 interval: float, grace: float, resend: Resend | None = None,
                 name: str = "conveyor-reaper", startup_grace: float = 0.0) -> None:
        super().__init__(name=name, daemon=True)
        self.broker = broker
        self.keys = keys
        self.store = store
        self.interval = interval
        self.grace = grace
        self.resend = resend  # None: no stalled-run recovery
        self.actions = 0  # messages restored and tasks re-sent by this reaper
        self._stopping = threading.Event()
        self._token = uuid.uuid4().hex
        self._restore = broker.register_script(_RESTORE_LUA)
        self._set_lock_ttl = broker.register_script(_SET_LOCK_TTL_LUA)
        self._failing = False
        # (run, job) -> ((status, attempt), first seen): a stall must outlast the grace
        self._suspects: dict[tuple[str, str], tuple[tuple[str, int], float]] = {}
        self._plans: dict[str, dict[str, Route]] = {}
        self._move = broker.register_script(_MOVE_LUA)
        # (run, job) whose condition holds: the reaper never skips them (the answer cannot change)
        self._must_run: set[tuple[str, str]] = set()
        self._pass_jobs: dict[str, dict[str, JobRecord]] = {}
        # No job fails `no_worker` before this many seconds have passed: the workers starting
        # with this one (itself included) announce themselves once Celery consumes.
        self._fail_after = time.monotonic() + startup_grace

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        while not self._stopping.wait(self.interval * random.uniform(0.75, 1.25)):
            try:
                self.reap_once()
                if self._failing:
                    log.warning("reaper: broker and state store answer again")
                self._failing = False
            except Exception as exc:  # Redis restarting, a network cut: try again next time
                if not self._failing:
                    log.warning("reaper pass failed (will keep trying): %s", exc)
                self._failing = True

    # -- one pass ---------------------------------------------------------------------------

    def reap_once(self) -> list[Action] | None:
        """One pass; what it did, or None when another reaper holds the lock."""
        lock = self.keys.key(LOCK_KEY)
        if not self.broker.set(lock, self._token, nx=True, px=int(LOCK_TTL_S * 1000)):
            return None
        try:
            actions = self._restore_parked()
            self._pass_jobs = {}  # each running run's jobs, read once for both checks below
            if self.resend is not None:
                actions += self._resend_stalled()
            actions += self._expire_unserved()
        finally:
            self._pass_jobs = {}
            # Keep the lock for about one interval: the cluster makes one pass per interval,
            # not one per worker.
            self._set_lock_ttl(keys=[lock], args=[self._token, max(1, int(self.interval * 1000))])
        for action in actions:
            log.warning("reaper: %s job %s of run %s (%s)", action.action, action.job, action.run_id, action.why)
        self.actions += len(actions)
        return actions

    def _restore_parked(self) -> list[Action]:
        by_run: dict[str, list[Parked]] = {}
        for message in self._parked():
            by_run.setdefault(message.run_id, []).append(message)
        done: list[Action] = []
        for run_id, messages in by_run.items():
            names = list(dict.fromkeys(m.job for m in messages))
            leases = self._leases(run_id, names)
            now = time.time()
            jobs = self._jobs(run_id, names)
            for message in messages:
                why = restore_reason(message, jobs.get(message.job), leases.get(message.job, False), now,
                                     self.grace)
                if why and self.restore(message):
                    done.append(Action(run_id, message.job, "restored", why))
        return done

    def _parked(self) -> Iterator[Parked]:
        index_key = self.keys.key(self.keys.unacked_index)
        start = 0
        while True:
            page = self.broker.zrange(index_key, start, start + PAGE - 1, withscores=True)
            if not page:
                return
            start += len(page)
            tags = [_text(tag) for tag, _ in page]
            entries = self.broker.hmget(self.keys.key(self.keys.unacked), tags)
            for (tag, score), entry in zip(page, entries):
                if entry is not None:
                    message = parse_entry(_text(tag), _text(entry), float(score))
                    if message is not None:
                        yield message
            if len(page) < PAGE:
                return

    def _leases(self, run_id: str, names: list[str]) -> dict[str, bool]:
        """Which of the jobs hold a live lease (read before the jobs: a finish in between
        then shows as a finished job, not as a running one without a lease)."""
        from shared.state.redis import lease_key

        client = getattr(self.store, "client")
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.exists(lease_key(run_id, name))
        return {name: bool(alive) for name, alive in zip(names, pipe.execute())}

    def _run_jobs(self, run_id: str) -> dict[str, JobRecord]:
        """Every job of the run, read once per pass."""
        if run_id not in self._pass_jobs:
            self._pass_jobs[run_id] = self._jobs(run_id, None)
        return self._pass_jobs[run_id]

    def _jobs(self, run_id: str, names: list[str] | None) -> dict[str, JobRecord]:
        try:
            return self.store.get_jobs(run_id, names)
        except UnknownRun:
            return {}
        except UnknownJob:
            found: dict[str, JobRecord] = {}
            for name in names or ():
                try:
                    found.update(self.store.get_jobs(run_id, [name]))
                except (UnknownRun, UnknownJob):
                    pass
            return found

    def restore(self, message: Parked) -> bool:
        """Put `message` back on its queue(s) as kombu's restore does; False if already gone."""
        queues = self._queues(message)
        if not queues:
            log.warning("reaper: no queue bound for exchange %r, routing key %r; leaving %s to kombu",
                        message.exchange, message.routing_key, message.tag)
            return False
        payload = json.loads(json.dumps(message.payload))
        payload.setdefault("headers", {})["redelivered"] = True
        payload.setdefault("properties", {}).setdefault("delivery_info", {})["redelivered"] = True
        priority = payload["properties"].get("priority")
        keys = [self.keys.key(self.keys.unacked), self.keys.key(self.keys.unacked_index),
                *(self.keys.queue_key(queue, priority) for queue in queues)]
        return bool(self._restore(keys=keys, args=[message.tag, message.entry, json.dumps(payload)]))

    def _queues(self, message: Parked) -> list[str]:
        """kombu's `_lookup` for the default exchange and direct exchanges (all Celery uses)."""
        if not message.exchange:
            return [message.routing_key] if message.routing_key else []
        table = self.broker.smembers(self.keys.key(f"_kombu.binding.{message.exchange}"))
        queues = []
        for member in table:
            routing_key, _pattern, queue = _text(member).split(self.keys.sep)
            if routing_key == message.routing_key:
                queues.append(queue)
        return sorted(set(queues))

    # -- stalled runs -----------------------------------------------------------------------

    def _resend_stalled(self) -> list[Action]:
        now = time.time()
        suspects: dict[tuple[str, str], tuple[tuple[str, int], float]] = {}
        confirmed: list[tuple[str, str, str, str]] = []
        for run_id in self._running_runs(now):
            plan = self._plan(run_id)
            if plan is None:
                continue
            jobs = self._run_jobs(run_id)
            running = [name for name, job in jobs.items() if job.status == RUNNING]
            leases = self._leases(run_id, running) if running else {}
            for name, job in jobs.items():
                why = _stall(job, plan.get(name, NO_ROUTE).depends_on, jobs, leases.get(name, False), now,
                             self.grace)
                if why is None:
                    continue
                mark = (job.status, job.attempt)
                seen = self._suspects.get((run_id, name))
                if seen is None or seen[0] != mark:
                    seen = (mark, now)
                suspects[(run_id, name)] = seen
                if now - seen[1] >= self.grace:
                    confirmed.append((run_id, name, plan.get(name, NO_ROUTE).queue, why))
        self._suspects = suspects
        if not confirmed:
            return []
        # Queues first, then the parked messages: a message moves from the first to the
        # second, so reading in this order sees it at least once.
        present = self._queued({queue for _, _, queue, _ in confirmed})
        present |= {(m.run_id, m.job) for m in self._parked()}
        done = []
        for run_id, name, queue, why in confirmed:
            if (run_id, name) in present:
                continue
            assert self.resend is not None
            self.resend(run_id, name, queue)
            del self._suspects[(run_id, name)]  # the next copy only after another grace
            done.append(Action(run_id, name, "resent", why))
        return done

    def _running_runs(self, now: float) -> list[str]:
        """Runs created within the stall horizon whose status is `running` (read-only)."""
        return [run_id for run_id, _ in self._running_runs_created(now)]

    def _running_runs_created(self, now: float) -> list[tuple[str, str]]:
        """(run id, created_at) of the runs `_running_runs` returns."""
        from shared.state.base import iso_ms
        from shared.state.redis import RUNS_KEY, run_key

        client = getattr(self.store, "client")
        found = client.zrangebyscore(RUNS_KEY, int((now - STALL_HORIZON_S) * 1000), "+inf", withscores=True)
        pipe = client.pipeline(transaction=False)
        for run_id, _ in found:
            pipe.hget(run_key(_text(run_id), "run"), "status")
        return [(_text(run_id), iso_ms(created) or "") for (run_id, created), status in zip(found, pipe.execute())
                if status == RUNNING]

    def _plan(self, run_id: str) -> dict[str, Route] | None:
        """job -> its dependencies, queue, labels and queue timeout in the run's stored plan;
        None when unusable."""
        if run_id not in self._plans:
            try:
                jobs = self.store.get_plan(run_id).get("jobs")
            except UnknownRun:
                return None
            if not isinstance(jobs, dict):
                return None
            if len(self._plans) > 256:
                self._plans.clear()
            self._plans[run_id] = {name: _route(job) for name, job in jobs.items() if isinstance(job, dict)}
        return self._plans[run_id]

    def _queued(self, queues: Iterable[str] = ()) -> set[tuple[str, str]]:
        """(run, job) of every run_job message waiting in the jobs and deploy queues, and in
        ``queues`` (the label queues of the jobs in question)."""
        keys = [self.keys.queue_key(queue, step) for queue in dict.fromkeys([JOBS_QUEUE, DEPLOY_QUEUE, *queues])
                for step in self.keys.priority_steps]
        found: set[tuple[str, str]] = set()
        for key in keys:
            for raw in self.broker.lrange(key, 0, -1):
                try:
                    task = job_task(json.loads(raw))
                except ValueError:
                    continue
                if task is not None:
                    found.add(task[:2])
        return found

    # -- jobs no live worker can take ------------------------------------------------------------

    def _expire_unserved(self) -> list[Action]:
        """Jobs waiting to start that no live worker can take (no live worker has their labels,
        or consumes their queue: shared/worker_labels.py). One whose condition says it would
        not run is skipped at once, as a worker would have; the others fail with `no_worker`
        once their `queue_timeout` has passed both since they could start and since a worker
        that can take them was last seen alive (a restarting worker is waited for). Their
        message then moves to the `jobs` queue, where any worker finds the job finished and
        lets the rest of the canvas go on."""
        client = getattr(self.store, "client", None)
        if client is None:
            return []
        workers, now = worker_labels.presences(client)
        done: list[Action] = []
        for run_id, created_at in self._running_runs_created(now):
            plan = self._plan(run_id)
            if plan is None:
                continue
            jobs = self._run_jobs(run_id)
            for name, job in jobs.items():
                route = plan.get(name, NO_ROUTE)
                if not worker_labels.may_wait(job, [jobs.get(d) for d in route.depends_on]):
                    continue  # the cheap test first: most jobs run, ran or wait for others
                upstream = worker_labels.ancestors(name, lambda other: plan.get(other, NO_ROUTE).depends_on)
                since = worker_labels.waiting_since(job, [jobs[a] for a in upstream if a in jobs], created_at)
                if since is None or worker_labels.can_be_taken(route.runs_on, route.deploy, workers, now):
                    continue
                action = None
                if job.status == PENDING:
                    action = self._skip_unserved(run_id, name, route, jobs)
                last = worker_labels.last_seen_able(route.runs_on, route.deploy, workers) or 0.0
                if action is None and now - max(since, last) >= route.queue_timeout and \
                        time.monotonic() >= self._fail_after:
                    action = self._fail_unserved(run_id, name, route, workers, now)
                if action is not None:
                    done.append(action)
        return done

    def _skip_unserved(self, run_id: str, name: str, route: Route, jobs: Mapping[str, JobRecord]) -> Action | None:
        """Skip a pending job whose condition says it would not run (what a worker taking it
        would do first): None when it would run."""
        if (run_id, name) in self._must_run:
            return None
        from shared.plan import Plan
        from worker.job_runner import decide

        try:
            plan = Plan.from_dict(self.store.get_plan(run_id))
            run = self.store.get_run(run_id)
        except UnknownRun:
            return None
        if run is None or name not in plan.jobs:
            return None
        reason = decide(plan, plan.jobs[name], dict(jobs), run.cancel_requested)
        if reason is None:
            if len(self._must_run) > 4096:
                self._must_run.clear()
            self._must_run.add((run_id, name))
            return None
        if not self.store.skip(run_id, name, reason):
            return None
        self._release(run_id, name, route.queue)
        return Action(run_id, name, "skipped", f"{reason}; no live worker can take it")

    def _fail_unserved(self, run_id: str, name: str, route: Route, workers: list[worker_labels.WorkerPresence],
                       now: float) -> Action | None:
        """Fail a job no live worker took within its queue_timeout with `no_worker`, through an
        attempt of NO_WORKER whose log says why; None when it was claimed meanwhile."""
        claim = self.store.claim(run_id, name, NO_WORKER, 60_000)
        if not isinstance(claim, Claim):
            return None
        wanted = worker_labels.waiting_reason(route.runs_on, route.deploy, (), now) or "waiting for a worker"
        live = [f"{w.name} [{', '.join(sorted(w.labels)) or 'no labels'}]" for w in workers if w.live(now)]
        text = (f"no worker could take this job within its queue_timeout of {format_duration(route.queue_timeout)} "
                f"({wanted.removeprefix('waiting for ')}); live workers: {'; '.join(live) or 'none'}")
        try:
            self.store.append_logs(run_id, name, [("system", text)])
        finally:
            self.store.finish(run_id, name, claim.token, FAILED, reason=REASON_NO_WORKER)
        self._release(run_id, name, route.queue)
        return Action(run_id, name, "failed", f"{REASON_NO_WORKER}: {wanted.removeprefix('waiting for ')}")

    def _release(self, run_id: str, name: str, queue: str) -> None:
        """Move the job's waiting messages from ``queue`` to `jobs`: the worker that takes one
        finds the job finished and sends the rest of its chain, which would otherwise wait
        in a queue nobody consumes."""
        if queue == JOBS_QUEUE:
            return
        for step in self.keys.priority_steps:
            source = self.keys.queue_key(queue, step)
            for raw in self.broker.lrange(source, 0, -1):
                try:
                    task = job_task(json.loads(raw))
                except ValueError:
                    continue
                if task is not None and task[:2] == (run_id, name):
                    self._move(keys=[source, self.keys.queue_key(JOBS_QUEUE, step)], args=[raw])


def _route(job: Mapping[str, Any]) -> Route:
    runs_on = tuple(label for label in job.get("runs_on") or () if isinstance(label, str))
    deploy = bool(job.get("deploy"))
    timeout = job.get("queue_timeout")
    return Route(depends_on=tuple(job.get("depends_on") or ()), queue=worker_labels.job_queue(runs_on, deploy),
                 runs_on=runs_on, deploy=deploy,
                 queue_timeout=float(timeout) if isinstance(timeout, (int, float)) else worker_labels.DEFAULT_QUEUE_TIMEOUT)


def _stall(job: JobRecord, deps: tuple[str, ...], jobs: Mapping[str, JobRecord], lease_alive: bool, now: float,
           grace: float) -> str | None:
    """Why `job` looks stalled (nothing will move it unless its task is sent), or None."""
    if job.status in TERMINAL or any(jobs[d].status not in TERMINAL for d in deps if d in jobs):
        return None
    if job.status == RUNNING:
        return None if lease_alive else "running without a lease and without a message"
    if job.status == RETRYING:
        last = job.attempts[-1] if job.attempts else None
        due = (epoch_seconds(last.finished_at) or 0.0) + (last.retry_delay or 0.0) if last else 0.0
        return f"retry due {now - due:.0f}s ago, no message" if now - due > grace else None
    return "dependencies finished, no message"


def _text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def reaper_timing(lease_seconds: float) -> tuple[float, float]:
    """(interval, grace) for a lease: a pass every lease/3 (0.5 to 5 s); a due message is
    lost after one lease without a start (at least 2 s)."""
    return min(max(lease_seconds / 3, 0.5), 5.0), max(lease_seconds, 2.0)


_started: dict[str, Reaper] = {}
_started_lock = threading.Lock()


def start_reaper(app: Any, settings: Settings) -> Reaper | None:
    """Start this process's reaper thread (once per broker); None where none is needed.

    Embedded mode (memory transport) needs none: its jobs live and die with the process.
    Brokers other than Redis, and state stores other than Redis, are not supported.
    """
    if settings.embedded:
        return None
    url = settings.broker_url or ""
    state_url = settings.effective_state_url
    if url.split(":", 1)[0].lower() not in ("redis", "rediss") or \
            state_url.split(":", 1)[0].lower() not in ("redis", "rediss"):
        log.warning("no lost-job reaper: it needs Redis as broker and state store (broker %s)",
                    url.split(":", 1)[0])
        return None
    with _started_lock:
        if url in _started and _started[url].is_alive():
            return _started[url]
        from shared.state import open_state

        options = dict(app.conf.broker_transport_options or {})
        interval, grace = reaper_timing(settings.lease_seconds)
        broker = redis_py.Redis.from_url(without_ssl_parameters(url), socket_timeout=10,
                                         **(redis_ssl_options(url) or {}))

        def resend(run_id: str, job: str, queue: str) -> None:
            app.signature(RUN_JOB_TASK, kwargs={"run_id": run_id, "job": job}, immutable=True,
                          queue=queue).apply_async()

        reaper = Reaper(broker, BrokerKeys.from_options(options), open_state(state_url), interval=interval,
                        grace=grace, resend=resend, startup_grace=worker_labels.LIVE_S)
        reaper.start()
        _started[url] = reaper
        return reaper
