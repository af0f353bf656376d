"""A worker's Prometheus metrics: the metric objects and the calls that update them.

Everything lives in this module's own ``REGISTRY`` (not prometheus_client's global one),
which ``serve`` exposes over HTTP. Updating a metric is a lock and an addition, whether
or not anything serves or scrapes it, and never raises: a metrics bug must not fail a job.

Label values are bounded. Statuses, reasons and directions outside their known sets are
reported as ``other``; open-ended labels (container operations and outcomes, deployment
environments, strategies and states) keep their first ``MAX_LABEL_VALUES`` distinct
values per label and report later ones as ``other``. Run ids, job names and worker-side
paths are never labels. See docs/observability.md.
"""
from __future__ import annotations

import logging
import threading
from importlib import metadata
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector, start_http_server

from shared.state.base import CANCELLED, FAILED, REASONS, RETRYING, SKIPPED, SUCCESS

log = logging.getLogger("conveyor.metrics")

REGISTRY = CollectorRegistry(auto_describe=True)
# Process RSS, CPU and open files of the worker, under the usual `process_*` names.
ProcessCollector(registry=REGISTRY)

OTHER = "other"
MAX_LABEL_VALUES = 32
MAX_LABEL_LENGTH = 64
# "lost" (a newer attempt owns the job) and "unknown" (the run expired) are outcomes the
# job runner reports besides the state store's statuses.
STATUSES = frozenset({SUCCESS, FAILED, CANCELLED, SKIPPED, RETRYING, "lost", "unknown"})
DIRECTIONS = frozenset({"up", "down"})

# Jobs take seconds to an hour (the longest allowed job is 3600 s).
JOB_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)
# Waiting for a free worker slot: from instant to many minutes on a busy cluster.
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
# The canvas hop between a dependency and its dependent: meant to stay well under a second.
HOP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

JOBS = Counter("conveyor_jobs", "Job attempts that ended, by status and reason (\"\" when none).",
               ["status", "reason"], registry=REGISTRY)
JOB_DURATION = Histogram("conveyor_job_duration_seconds", "Wall time of a job attempt on this worker, by status.",
                         ["status"], buckets=JOB_BUCKETS, registry=REGISTRY)
ACTIVE_JOBS = Gauge("conveyor_active_jobs", "Job attempts running on this worker now.", registry=REGISTRY)
QUEUE_WAIT = Histogram("conveyor_queue_wait_seconds", "From a job becoming ready (submitted, or its dependencies "
                       "done) to its attempt starting on a worker.", buckets=WAIT_BUCKETS, registry=REGISTRY)
HOP_LATENCY = Histogram("conveyor_hop_latency_seconds", "From the last dependency of a job finishing to the job "
                        "starting.", buckets=HOP_BUCKETS, registry=REGISTRY)
CONTAINER_OPS = Counter("conveyor_container_operations", "Container engine operations, by operation and outcome.",
                        ["op", "outcome"], registry=REGISTRY)
ARTIFACT_BYTES = Counter("conveyor_artifact_bytes", "Artifact bytes moved to (up) or from (down) the store.",
                         ["direction"], registry=REGISTRY)
ARTIFACT_DEDUP_HITS = Counter("conveyor_artifact_dedup_hits", "Artifact objects not uploaded because the store "
                              "already had them.", registry=REGISTRY)
DEPLOYMENTS = Gauge("conveyor_deployments", "Deployments in each state, as seen by this worker (sum over workers).",
                    ["environment", "strategy", "state"], registry=REGISTRY)
WORKER = Info("conveyor_worker", "This worker: its name, executor and Conveyor version.", registry=REGISTRY)


class _LabelBudget:
    """The first MAX_LABEL_VALUES distinct values of each open-ended label; `other` after."""

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self.limit = limit
        self.seen: dict[str, set[str]] = {}
        self.lock = threading.Lock()

    def __call__(self, label: str, value: object) -> str:
        text = str(value)[:MAX_LABEL_LENGTH] if value is not None else ""
        with self.lock:
            seen = self.seen.setdefault(label, set())
            if text in seen:
                return text
            if len(seen) < self.limit:
                seen.add(text)
                return text
        return OTHER


_budget = _LabelBudget()


def _known(value: str | None, allowed: frozenset[str]) -> str:
    return value if value in allowed else OTHER


def _seconds(value: float) -> float:
    # Durations cross machines (submit on one host, start on another): a clock skewed
    # backwards would give a negative wait, which no bucket can hold.
    return max(float(value), 0.0)


def _safely(update) -> None:
    try:
        update()
    except Exception:  # a metrics bug must never fail the job that reports it
        log.debug("metrics update failed", exc_info=True)


def job_started() -> None:
    """A job attempt began running on this worker (pair with exactly one `job_finished`)."""
    _safely(ACTIVE_JOBS.inc)


def job_finished(status: str, reason: str | None, duration_s: float, *, started: bool = True) -> None:
    """A job attempt ended with `status` (`success`, `failed`, ...) and `reason` (None when none).

    ``started=False`` counts an outcome decided without running anything (a skipped job):
    it touches neither the active-jobs gauge nor the duration histogram.
    """
    label_status = _known(status, STATUSES)
    label_reason = "" if reason is None else _known(reason, REASONS)

    def update() -> None:
        JOBS.labels(label_status, label_reason).inc()
        if started:
            ACTIVE_JOBS.dec()
            JOB_DURATION.labels(label_status).observe(_seconds(duration_s))

    _safely(update)


def queue_wait(seconds: float) -> None:
    """Time from a job becoming ready to its attempt starting."""
    _safely(lambda: QUEUE_WAIT.observe(_seconds(seconds)))


def hop_latency(seconds: float) -> None:
    """Time from a dependency finishing to its dependent starting."""
    _safely(lambda: HOP_LATENCY.observe(_seconds(seconds)))


def container_op(op: str, outcome: str) -> None:
    """One container engine operation (`create`, `start`, `pull`, ...) and how it went (`ok`, `error`, ...)."""
    _safely(lambda: CONTAINER_OPS.labels(_budget("op", op), _budget("outcome", outcome)).inc())


def artifact_bytes(direction: str, n: int) -> None:
    """`n` artifact bytes moved `up` (to the store) or `down` (from it)."""
    if n > 0:
        _safely(lambda: ARTIFACT_BYTES.labels(_known(direction, DIRECTIONS)).inc(n))


def artifact_dedup_hits(n: int) -> None:
    """`n` objects the store already had, so they were not uploaded."""
    if n > 0:
        _safely(lambda: ARTIFACT_DEDUP_HITS.inc(n))


def deployment_transition(environment: str, strategy: str, old_state: str | None, new_state: str | None) -> None:
    """A deployment moved from `old_state` (None: it is new) to `new_state` (None: stop tracking it).

    The gauge is per worker: a deployment started on one worker and finished on another
    leaves -1 and +1 on the two, so dashboards sum over workers.
    """
    env = _budget("environment", environment)
    strat = _budget("strategy", strategy)

    def update() -> None:
        if old_state is not None:
            DEPLOYMENTS.labels(env, strat, _budget("state", old_state)).dec()
        if new_state is not None:
            DEPLOYMENTS.labels(env, strat, _budget("state", new_state)).inc()

    _safely(update)


def conveyor_version() -> str:
    """The installed Conveyor version, or `unknown` when running from an uninstalled tree."""
    try:
        return metadata.version("conveyor")
    except metadata.PackageNotFoundError:
        return "unknown"


def worker_info(worker: str, executor: str, version: str | None = None) -> None:
    """Publish `conveyor_worker_info{worker,executor,version} 1` (one series per process)."""
    _safely(lambda: WORKER.info({"worker": worker[:MAX_LABEL_LENGTH], "executor": executor,
                                 "version": version or conveyor_version()}))


def serve(port: int, addr: str = "0.0.0.0", registry: CollectorRegistry = REGISTRY) -> WSGIServer:
    """Serve `registry` on http://addr:port/metrics from a daemon thread; returns the server.

    Port 0 picks a free port (read it from ``server.server_port``); ``server.shutdown()``
    stops it. Raises OSError when the address cannot be bound.
    """
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return server
