"""Worker labels: which queue a job goes to, which queues a worker consumes, and which
workers are alive with which labels (docs/cluster.md, "Worker labels").

Routing is Celery's own, by queue: a job with `runs_on: S` is sent to the one queue named
after the set S, `jobs.labels.<S sorted, joined by +>` (`runs_on: [linux, gpu]` ->
`jobs.labels.gpu+linux`); a worker with labels L consumes, besides its `--queues`, the queue
of every non-empty subset of L. A job thus reaches exactly the workers whose labels include
all of S, with no component deciding in between. The price is 2^|L| - 1 queues per worker,
so a worker has at most `MAX_LABELS` labels (255 label queues).

Presence: every worker writes `{labels, queues, seen}` into the hash `WORKERS_KEY` of the
state store's Redis every `ANNOUNCE_INTERVAL_S` (`seen` by Redis's clock, so readers on
other hosts compare it with the same clock). A worker seen within `LIVE_S` is live. Entries
outlive their worker (until `FORGET_S`): "when was a worker with these labels last seen"
is what a job's `queue_timeout` counts from (worker/reaper.py).

This module imports neither Celery nor redis: the front end and `conveyor status` use it.
"""
from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared.state.base import PENDING, RETRYING, TERMINAL, JobRecord, epoch_seconds

JOBS_QUEUE = "jobs"
DEPLOY_QUEUE = "deploy"
LABEL_QUEUE_PREFIX = "jobs.labels."
LABEL_SEPARATOR = "+"  # not a label character: a queue name reads back as one set

LABEL_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
LABEL_HINT = "a label is 1 to 63 of a-z, 0-9, '_', '.', '-', starting with a letter or digit"
# A worker consumes 2^n - 1 label queues: 255 for 8 labels.
MAX_LABELS = 8

# How long a job may wait, once it could start, for a worker that can take it (seconds).
DEFAULT_QUEUE_TIMEOUT = 3600
MAX_QUEUE_TIMEOUT = 86400  # the longest pipeline timeout

WORKERS_KEY = "conveyor:workers"
ANNOUNCE_INTERVAL_S = 5.0
LIVE_S = 3 * ANNOUNCE_INTERVAL_S  # a worker not seen for this long is not live
FORGET_S = MAX_QUEUE_TIMEOUT + 86400  # entries older than any queue_timeout are removed


# -- labels and queues ----------------------------------------------------------------------------


def label_problem(label: Any) -> str | None:
    """Why ``label`` is not a valid label (a short phrase), or None when it is."""
    if not isinstance(label, str):
        return "a label is text"
    if not LABEL_PATTERN.fullmatch(label):
        if LABEL_PATTERN.fullmatch(label.lower()):
            return f"labels are lower case: did you mean '{label.lower()}'?"
        return LABEL_HINT
    return None


def parse_labels(text: str | Iterable[str] | None) -> tuple[str, ...]:
    """A worker's labels from `linux,docker,gpu` (or a list): sorted, each once.

    Raises ValueError naming the first bad label, or too many labels."""
    if text is None:
        return ()
    parts = text.split(",") if isinstance(text, str) else list(text)
    labels = [part.strip() for part in parts if part.strip()]
    for label in labels:
        problem = label_problem(label)
        if problem is not None:
            raise ValueError(f"invalid worker label {label!r}: {problem}")
    unique = tuple(sorted(set(labels)))
    if len(unique) > MAX_LABELS:
        raise ValueError(
            f"a worker has at most {MAX_LABELS} labels (it consumes one queue per subset of them: "
            f"2^{MAX_LABELS}-1 = {2 ** MAX_LABELS - 1} queues), got {len(unique)}: {', '.join(unique)}")
    return unique


def label_queue(labels: Iterable[str]) -> str:
    """The queue of jobs needing exactly the label set ``labels`` (`jobs` for none)."""
    unique = sorted(set(labels))
    return LABEL_QUEUE_PREFIX + LABEL_SEPARATOR.join(unique) if unique else JOBS_QUEUE


def job_queue(runs_on: Iterable[str], deploy: bool) -> str:
    """The queue a job's task is sent to: `deploy` for a deployment, its label set's queue
    for a job with `runs_on`, else `jobs`."""
    return DEPLOY_QUEUE if deploy else label_queue(runs_on)


def label_queues(labels: Iterable[str]) -> list[str]:
    """The queue of every non-empty subset of ``labels``, smallest subsets first."""
    unique = sorted(set(labels))
    return [label_queue(subset) for size in range(1, len(unique) + 1)
            for subset in itertools.combinations(unique, size)]


def consumed_queues(queues: Sequence[str], labels: Iterable[str]) -> list[str]:
    """What a worker with ``--queues`` and ``--labels`` consumes: its queues, then its label queues."""
    return list(dict.fromkeys([*queues, *label_queues(labels)]))


# -- presence --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerPresence:
    """One worker as it last announced itself."""

    name: str
    labels: frozenset[str]
    queues: frozenset[str]
    seen: float  # epoch seconds, Redis's clock
    stopped: bool = False  # it announced its shutdown

    def live(self, now: float) -> bool:
        return not self.stopped and now - self.seen <= LIVE_S

    def can_take(self, runs_on: Iterable[str], deploy: bool) -> bool:
        """Whether this worker consumes the queue of a job with ``runs_on`` / ``deploy``."""
        if deploy:
            return DEPLOY_QUEUE in self.queues
        needed = set(runs_on)
        if needed:
            return needed <= self.labels  # label queues are consumed whatever --queues says
        return JOBS_QUEUE in self.queues


def _text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def redis_now(client: Any) -> float:
    """Redis's clock, epoch seconds."""
    seconds, micros = client.time()
    return int(seconds) + int(micros) / 1e6


def announce(client: Any, name: str, labels: Iterable[str], queues: Iterable[str], *,
             stopped: bool = False) -> None:
    """Record that worker ``name`` is alive now (or has just stopped) with these labels and
    queues; drop entries nobody refreshed for `FORGET_S`. ``client`` is a redis-py client of
    the state store's Redis."""
    now = redis_now(client)
    entry = {"labels": sorted(set(labels)), "queues": sorted(set(queues)), "seen": round(now, 3),
             "stopped": stopped}
    client.hset(WORKERS_KEY, name, json.dumps(entry))
    old = [w.name for w in _parse(client.hgetall(WORKERS_KEY)) if now - w.seen > FORGET_S]
    if old:
        client.hdel(WORKERS_KEY, *old)


def presences(client: Any) -> tuple[list[WorkerPresence], float]:
    """Every worker entry (live or not) and Redis's clock now, in one round trip."""
    pipe = client.pipeline(transaction=False)
    pipe.time()
    pipe.hgetall(WORKERS_KEY)
    (seconds, micros), raw = pipe.execute()
    return _parse(raw), int(seconds) + int(micros) / 1e6


def _parse(raw: dict) -> list[WorkerPresence]:
    found = []
    for name, value in (raw or {}).items():
        try:
            entry = json.loads(_text(value))
            found.append(WorkerPresence(_text(name), frozenset(entry.get("labels") or ()),
                                        frozenset(entry.get("queues") or ()), float(entry["seen"]),
                                        bool(entry.get("stopped"))))
        except (ValueError, TypeError, KeyError, AttributeError):
            continue  # not ours, or from another version: ignored
    return sorted(found, key=lambda w: w.name)


def may_wait(job: JobRecord, dependencies: Iterable[JobRecord | None]) -> bool:
    """A quick first test for `waiting_since`: False for a job that is running or finished,
    or pending behind a dependency that has not finished."""
    if job.status == RETRYING:
        return True
    return job.status == PENDING and all(d is None or d.status in TERMINAL for d in dependencies)


def waiting_since(job: JobRecord, ancestors: Iterable[JobRecord], run_created_at: str) -> float | None:
    """Since when a job waits for a worker to start it (epoch seconds), None when it does not:
    a `pending` job whose ancestors are all finished waits since the last of them ended (the
    run's creation for a job without any); a `retrying` job since its retry became due."""
    if job.status == RETRYING:
        if not job.attempts:
            return None
        last = job.attempts[-1]
        ended = epoch_seconds(last.finished_at)
        return None if ended is None else ended + (last.retry_delay or 0.0)
    if job.status != PENDING:
        return None
    ends = []
    for record in ancestors:
        if record.status not in TERMINAL:
            return None
        ends.append(epoch_seconds(record.finished_at) or 0.0)
    return max([epoch_seconds(run_created_at) or 0.0, *ends])


def ancestors(name: str, depends_on: Callable[[str], Iterable[str]]) -> list[str]:
    """Every job ``name`` waits for, directly or not; ``depends_on(job)`` gives a job's own."""
    seen: dict[str, None] = {}
    stack = list(depends_on(name))
    while stack:
        dep = stack.pop()
        if dep not in seen:
            seen[dep] = None
            stack.extend(depends_on(dep))
    return list(seen)


def waiting_reasons(client: Any, plan: Mapping[str, Any], jobs: Mapping[str, JobRecord],
                    created_at: str) -> dict[str, str]:
    """job -> why it waits, for each job of a run that could start but that no live worker
    can take (`plan`: the run's stored plan dict). Empty for a ``client`` of None: a state
    store other than Redis, which no worker announces itself to."""
    if client is None:
        return {}
    specs = plan.get("jobs") or {}

    def depends_on(name: str) -> Iterable[str]:
        return (specs.get(name) or {}).get("depends_on") or ()

    ready = [name for name, job in jobs.items()
             if may_wait(job, [jobs.get(d) for d in depends_on(name)])
             and waiting_since(job, [jobs[a] for a in ancestors(name, depends_on) if a in jobs], created_at) is not None]
    if not ready:
        return {}
    workers, now = presences(client)
    reasons = {}
    for name in ready:
        spec = specs.get(name) or {}
        reason = waiting_reason(spec.get("runs_on") or (), bool(spec.get("deploy")), workers, now)
        if reason is not None:
            reasons[name] = reason
    return reasons


def can_be_taken(runs_on: Iterable[str], deploy: bool, workers: Iterable[WorkerPresence], now: float) -> bool:
    """Whether a live worker consumes the job's queue."""
    runs_on = tuple(runs_on)
    return any(w.live(now) and w.can_take(runs_on, deploy) for w in workers)


def last_seen_able(runs_on: Iterable[str], deploy: bool, workers: Iterable[WorkerPresence]) -> float | None:
    """When a worker that can take the job was last seen (epoch seconds), None if never."""
    runs_on = tuple(runs_on)
    seen = [w.seen for w in workers if w.can_take(runs_on, deploy)]
    return max(seen) if seen else None


def waiting_reason(runs_on: Iterable[str], deploy: bool, workers: Iterable[WorkerPresence],
                   now: float) -> str | None:
    """Why a job that could start is still waiting, when no live worker can take it
    (`waiting for a worker with labels gpu`); None when one can."""
    runs_on = tuple(sorted(set(runs_on)))
    if can_be_taken(runs_on, deploy, workers, now):
        return None
    if deploy:
        return f"waiting for a worker of the {DEPLOY_QUEUE} queue"
    if runs_on:
        return f"waiting for a worker with labels {', '.join(runs_on)}"
    return f"waiting for a worker of the {JOBS_QUEUE} queue"
