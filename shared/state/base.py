"""The state store contract: records, the job state machine, and the protocol both backends implement.

The state store is the source of truth for runs, jobs, attempts, leases and logs. Every
operation is atomic in each backend (a Lua script in Redis, a `BEGIN IMMEDIATE`
transaction in SQLite); this module holds what the backends share so that they cannot
disagree about the rules.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, Mapping, Protocol, Sequence, get_args

# Job statuses (pipeline-format.md, "Job statuses").
PENDING = "pending"
RUNNING = "running"
RETRYING = "retrying"
SUCCESS = "success"
FAILED = "failed"
SKIPPED = "skipped"
CANCELLED = "cancelled"

JOB_TRANSITIONS: Mapping[str, frozenset[str]] = {
    PENDING: frozenset({RUNNING, SKIPPED, CANCELLED}),
    RUNNING: frozenset({SUCCESS, FAILED, RETRYING, CANCELLED}),
    RETRYING: frozenset({RUNNING, FAILED, CANCELLED}),
    SUCCESS: frozenset(),
    FAILED: frozenset(),
    SKIPPED: frozenset(),
    CANCELLED: frozenset(),
}
JOB_STATUSES = frozenset(JOB_TRANSITIONS)
TERMINAL = frozenset(s for s, targets in JOB_TRANSITIONS.items() if not targets)

# `finish` reports an outcome; `running` is only entered through `claim`, `skipped` through `skip`.
FINISH_STATUSES = frozenset({SUCCESS, FAILED, RETRYING, CANCELLED})

# Run statuses: running -> success | failed | cancelled.
RUN_STATUSES = frozenset({RUNNING, SUCCESS, FAILED, CANCELLED})

# Why a job did not succeed (cli-and-config.md); a typo here would silently break dashboards.
# The Redis scripts get every name below as a generated Lua local (shared/state/redis.py,
# `lua_names`), so neither language spells one twice.
REASON_SCRIPT_FAILURE = "script_failure"
REASON_TIMEOUT = "timeout"
REASON_OOM = "oom"
REASON_IMAGE_PULL_FAILURE = "image_pull_failure"
REASON_INFRASTRUCTURE = "infrastructure"
REASON_WORKER_LOST = "worker_lost"
REASON_CANCELLED = "cancelled"
REASON_UPSTREAM_FAILED = "upstream_failed"
REASON_CONDITION_FALSE = "condition_false"
REASON_INTEGRITY_ERROR = "integrity_error"
REASON_NO_WORKER = "no_worker"  # no live worker could take the job within its queue_timeout
REASONS = frozenset(
    {
        REASON_SCRIPT_FAILURE,
        REASON_TIMEOUT,
        REASON_OOM,
        REASON_IMAGE_PULL_FAILURE,
        REASON_INFRASTRUCTURE,
        REASON_WORKER_LOST,
        REASON_CANCELLED,
        REASON_UPSTREAM_FAILED,
        REASON_CONDITION_FALSE,
        REASON_INTEGRITY_ERROR,
        REASON_NO_WORKER,
    }
)
SKIP_REASONS = frozenset({REASON_CONDITION_FALSE, REASON_UPSTREAM_FAILED})

# Why `claim` refused (`Refusal.reason`); see docs/state.md "Job state machine".
REFUSED_FINISHED = "finished"  # the job is terminal: a redelivered message must not run it again
REFUSED_LEASED = "leased"  # another attempt's lease is alive
REFUSED_CANCELLED = "cancelled"  # the run is being cancelled; the job became cancelled
REFUSED_WORKER_LOST = "worker_lost"  # one lost worker too many; the job became failed
REFUSALS = frozenset({REFUSED_FINISHED, REFUSED_LEASED, REFUSED_CANCELLED, REFUSED_WORKER_LOST})

DEFAULT_RETENTION_S = 30 * 24 * 3600

# Run ids appear inside Redis key names (in a `{hash tag}`), so braces and spaces are out.
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")

HeartbeatResult = Literal["ok", "lost", "cancel"]
HEARTBEAT_OK: HeartbeatResult = "ok"
HEARTBEAT_LOST: HeartbeatResult = "lost"  # the token is no longer current: stop, write nothing
HEARTBEAT_CANCEL: HeartbeatResult = "cancel"  # lease extended, but the run is being cancelled
HEARTBEAT_RESULTS = frozenset(get_args(HeartbeatResult))

# Exit codes as executors report them: POSIX statuses, negated signal numbers, Windows'
# 32-bit unsigned codes. Wider values are caller bugs, and the backends cannot store them
# alike (Redis's cjson keeps 14 significant digits, SQLite's INTEGER 64 bits).
EXIT_CODE_MIN = -(2**31)
EXIT_CODE_MAX = 2**32 - 1


class StateError(Exception):
    """Base class of state store errors."""


class RunExists(StateError):
    """create_run was given a run id that is already stored."""


class UnknownRun(StateError, LookupError):
    """The run id is not stored (never created, or expired)."""


class UnknownJob(StateError, LookupError):
    """The run exists but has no job of that name."""


def can_transition(current: str, target: str) -> bool:
    """Whether the job state machine allows moving from `current` to `target`."""
    return target in JOB_TRANSITIONS.get(current, frozenset())


def run_counters(status: str, allow_failure: bool) -> tuple[int, int]:
    """What a job that just became terminal with `status` adds to its run's (failed, cancelled)
    counters, from which `run_outcome` decides the run's status when the last job ends.

    The Redis scripts receive this as a generated table (every terminal status, both values of
    allow_failure), so the rule is written here only.
    """
    return int(status == FAILED and not allow_failure), int(status == CANCELLED)


def run_outcome(failed_jobs: int, cancelled_jobs: int, cancel_requested: bool) -> str:
    """The status of a run whose jobs are all terminal.

    `failed_jobs` excludes jobs created with allow_failure=True. The Redis scripts receive
    this as a generated table over (failed > 0, cancelled > 0, cancel_requested).
    """
    if failed_jobs == 0 and cancelled_jobs == 0:
        return SUCCESS
    if cancel_requested:
        return CANCELLED
    return FAILED


def epoch_seconds(timestamp: str | None) -> float | None:
    """The inverse of `iso_ms`, in seconds: a stored timestamp as epoch seconds."""
    if timestamp is None:
        return None
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def iso_ms(epoch_ms: int | float | None) -> str | None:
    """Epoch milliseconds as ISO-8601 UTC with milliseconds, e.g. `2024-05-01T12:00:00.123Z`."""
    if epoch_ms is None:
        return None
    ms = int(epoch_ms)
    moment = datetime.fromtimestamp(ms // 1000, tz=timezone.utc)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


def check_run_id(run_id: str) -> None:
    """Refuse run ids that could not be embedded safely in a key name."""
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id):
        raise ValueError(f"invalid run id {run_id!r}: expected {RUN_ID_PATTERN.pattern}")


def check_reason(reason: str | None) -> None:
    """Refuse reasons outside the documented list."""
    if reason is not None and reason not in REASONS:
        raise ValueError(f"unknown reason {reason!r}; expected one of {sorted(REASONS)}")


def check_finish_status(status: str) -> None:
    """Refuse statuses `finish` can never write (a caller bug, not a state-dependent refusal)."""
    if status not in FINISH_STATUSES:
        raise ValueError(f"finish cannot set status {status!r}; expected one of {sorted(FINISH_STATUSES)}")


def check_exit_code(exit_code: int | None) -> None:
    """Refuse exit codes no executor reports (bools included: True is not exit code 1)."""
    if exit_code is None:
        return
    if not isinstance(exit_code, int) or isinstance(exit_code, bool):
        raise TypeError(f"exit_code must be an int or None, got {type(exit_code).__name__}")
    if not EXIT_CODE_MIN <= exit_code <= EXIT_CODE_MAX:
        raise ValueError(f"exit_code {exit_code} outside [{EXIT_CODE_MIN}, {EXIT_CODE_MAX}]")


def check_lease_ms(lease_ms: int) -> int:
    """A lease as whole milliseconds, at least 1: a lease that is over before it starts is a
    caller bug (and Redis refuses `PX 0`, where SQLite would store an expired lease)."""
    if isinstance(lease_ms, bool) or not isinstance(lease_ms, (int, float)) or not math.isfinite(lease_ms):
        raise TypeError(f"lease_ms must be a finite number, got {lease_ms!r}")
    if int(lease_ms) < 1:
        raise ValueError(f"lease_ms must be at least 1, got {lease_ms!r}")
    return int(lease_ms)


def check_count(count: int) -> None:
    """read_logs reads at least one entry per call (Redis's XREAD refuses COUNT 0)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive int, got {count!r}")


def finish_args(
    status: str, exit_code: int | None, reason: str | None, retry_delay: float | None
) -> tuple[str | None, float | None]:
    """Check `finish`'s arguments and resolve what they imply, once for both backends.

    Returns the reason and retry delay to record: `cancelled` without a reason records
    reason `cancelled`; a retry delay is kept only when the attempt ends `retrying`, as a
    float (seconds, finite, not negative).
    """
    check_finish_status(status)
    check_exit_code(exit_code)
    check_reason(reason)
    if retry_delay is not None:
        if isinstance(retry_delay, bool) or not isinstance(retry_delay, (int, float)):
            raise TypeError(f"retry_delay must be a number of seconds or None, got {type(retry_delay).__name__}")
        if not math.isfinite(retry_delay) or retry_delay < 0:
            raise ValueError(f"retry_delay must be finite and not negative, got {retry_delay!r}")
    if reason is None and status == CANCELLED:
        reason = REASON_CANCELLED
    return reason, float(retry_delay) if status == RETRYING and retry_delay is not None else None


@dataclass(frozen=True)
class JobMeta:
    """What a job needs at creation: whether its failure fails the run."""

    allow_failure: bool = False


@dataclass(frozen=True)
class RunRecord:
    """A run as stored: status is `running` until its last job is terminal."""

    run_id: str
    pipeline: str
    status: str
    created_at: str
    finished_at: str | None
    cancel_requested: bool
    meta: dict[str, Any]


@dataclass(frozen=True)
class AttemptRecord:
    """One execution attempt of a job, numbered from 1."""

    number: int
    worker: str
    started_at: str
    finished_at: str | None
    status: str  # running while live; then the outcome reported (or failed/worker_lost)
    exit_code: int | None
    reason: str | None
    retry_delay: float | None  # seconds, set when the attempt ended `retrying`


@dataclass(frozen=True)
class JobRecord:
    """A job as stored. `started_at` is the first attempt's start; `attempt` the latest number."""

    name: str
    status: str
    attempt: int
    worker: str | None
    started_at: str | None
    finished_at: str | None
    exit_code: int | None
    reason: str | None
    allow_failure: bool
    attempts: list[AttemptRecord] = field(default_factory=list)


@dataclass(frozen=True)
class Claim:
    """The right to run one attempt; `token` fences every later write of that attempt."""

    token: int
    attempt: int


@dataclass(frozen=True)
class Refusal:
    """A claim that was refused: one of `REFUSALS` (`leased`, `finished`, `cancelled`, `worker_lost`)."""

    reason: str


@dataclass(frozen=True)
class LogEntry:
    """One chunk of a job's output; `stream` is `stdout` or `stderr` (or any label the worker uses)."""

    stream: str
    text: str
    timestamp: str


@dataclass(frozen=True)
class Event:
    """A status transition. `job` is None for the run itself (its final status)."""

    job: str | None
    from_status: str
    to_status: str
    at: str
    attempt: int | None = None
    reason: str | None = None


class StateStore(Protocol):
    """Runs, jobs, attempts, leases, logs and events; every method is atomic."""

    def create_run(
        self,
        run_id: str,
        pipeline: str,
        jobs: Mapping[str, JobMeta],
        plan: dict,
        meta: dict,
    ) -> None: ...

    def get_run(self, run_id: str) -> RunRecord | None: ...

    def get_plan(self, run_id: str) -> dict: ...

    def get_jobs(self, run_id: str, names: Sequence[str] | None = None) -> dict[str, JobRecord]:
        """Every job of the run, or only ``names`` (in plan order either way)."""
        ...

    def list_runs(self, limit: int = 20) -> list[RunRecord]: ...

    def claim(
        self, run_id: str, job: str, worker: str, lease_ms: int, max_lost: int = 1
    ) -> Claim | Refusal: ...

    def heartbeat(self, run_id: str, job: str, token: int, lease_ms: int) -> HeartbeatResult: ...

    def finish(
        self,
        run_id: str,
        job: str,
        token: int,
        status: str,
        exit_code: int | None = None,
        reason: str | None = None,
        retry_delay: float | None = None,
    ) -> bool: ...

    def skip(self, run_id: str, job: str, reason: str) -> bool: ...

    def request_cancel(self, run_id: str) -> list[str]: ...

    def append_logs(self, run_id: str, job: str, entries: Sequence[tuple[str, str]]) -> None: ...

    def read_logs(
        self,
        run_id: str,
        job: str,
        after: str | None = None,
        count: int = 1000,
        block_ms: int = 0,
    ) -> tuple[list[LogEntry], str]: ...

    def events(
        self, run_id: str, after: str | None = None, block_ms: int = 0
    ) -> tuple[list[Event], str]: ...

    def close(self) -> None: ...


def check_create_args(run_id: str, pipeline: str, jobs: Mapping[str, JobMeta]) -> None:
    """Argument checks shared by both backends' create_run."""
    check_run_id(run_id)
    if not jobs:
        raise ValueError("a run needs at least one job")
    for name, meta in jobs.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"invalid job name {name!r}")
        if not isinstance(meta, JobMeta):
            raise TypeError(f"job {name!r}: expected JobMeta, got {type(meta).__name__}")
    if not isinstance(pipeline, str):
        raise TypeError("pipeline must be a string")


def check_skip_reason(reason: str) -> None:
    """skip() records why a pending job will never run."""
    if reason not in SKIP_REASONS:
        raise ValueError(f"skip reason must be one of {sorted(SKIP_REASONS)}, got {reason!r}")
