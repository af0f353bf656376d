"""The executor contract: what a backend is given, what it reports, and how it is driven.

An executor runs the steps of a job, one at a time, somewhere (a Docker container, a host
process, or nowhere at all for the fake). Like Woodpecker's backend interface, this
module is the whole contract; ``docs/executors.md`` explains the backends and links here.

Lifecycle, per job attempt (the job runner drives it; see ``Executor`` for each method):

1. ``prepare(job)`` once, before the first step (idempotent);
2. per step: ``start(job, step)`` returns a handle at once; ``tail(handle)`` in a reader
   thread yields the step's lines until it ends; ``wait(handle)`` in the job's thread
   blocks until it ends (enforcing ``step.timeout``); ``kill(handle, reason)`` may come
   from a third thread (cancel, the pipeline timeout) at any moment, also before ``tail``
   or ``wait`` were called or after the step ended;
3. ``cleanup(job)`` once at the end, whatever happened (also after ``InfrastructureError``).

``reap_orphans`` and ``check_data_dir`` run once at worker start, before any job.

Errors: anything wrong with the *step* is its ``StepOutcome`` (``reason``); anything wrong
with the *machinery* raises ``InfrastructureError`` (the job is retried); a
``working_directory`` leaving the workspace raises ``ValueError``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal, Protocol, get_args, runtime_checkable

Reason = Literal["script_failure", "timeout", "oom", "image_pull_failure", "cancelled"]
REASONS: frozenset[str] = frozenset(get_args(Reason))
PullPolicy = Literal["if-not-present", "always", "never"]
PULL_POLICIES: frozenset[str] = frozenset(get_args(PullPolicy))
Stream = Literal["stdout", "stderr"]


class ExecutorError(Exception):
    """Base class of the errors an executor raises."""


class InfrastructureError(ExecutorError):
    """The machinery failed, not the step: engine unreachable, API 5xx. Retry the job."""


@dataclass(frozen=True)
class ResourceLimits:
    """Resource limits of one step (memory, CPUs, processes); ``None`` means unlimited."""

    memory_bytes: int | None = None
    cpus: float | None = None
    pids: int | None = 1024

    def __post_init__(self) -> None:
        for name in ("memory_bytes", "cpus", "pids"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"ResourceLimits.{name} must be positive or None, got {value!r}")


# `JobSpec.network`: a network of the job's own, created by `prepare` and removed by
# `cleanup` (Docker); any other value is used as it is (`none`, or a network's name).
ISOLATED_NETWORK = "isolated"


@dataclass(frozen=True)
class JobSpec:
    """One job attempt as an executor sees it; ``workspace`` is a populated host directory.

    ``network``: ``ISOLATED_NETWORK`` (a network of this job alone), ``"none"`` or the
    name of an existing network. ``user``: who the steps run as (``uid[:gid]``; None: the
    image's user, or the worker's for the local executor); the executor hands the
    workspace to that user in ``prepare``. ``max_file_bytes``: no file a step writes may
    grow past this (Docker: the ``fsize`` ulimit); None: no such limit.
    """

    run_id: str
    job: str
    workspace: Path
    worker_name: str
    network: str = ISOLATED_NETWORK
    user: str | None = None
    read_only_root: bool = False
    pull_policy: PullPolicy = "if-not-present"
    kill_grace: float = 5.0
    max_file_bytes: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "workspace", Path(self.workspace))
        if self.pull_policy not in PULL_POLICIES:
            raise ValueError(
                f"pull_policy must be one of {sorted(PULL_POLICIES)}, got {self.pull_policy!r}"
            )
        if self.kill_grace < 0:
            raise ValueError(f"kill_grace must be >= 0, got {self.kill_grace!r}")
        if not self.run_id or not self.job or not self.worker_name:
            raise ValueError("run_id, job and worker_name must be non-empty")
        if not self.network:
            raise ValueError("network must be non-empty")
        if self.max_file_bytes is not None and self.max_file_bytes <= 0:
            raise ValueError(f"max_file_bytes must be positive or None, got {self.max_file_bytes!r}")


@dataclass(frozen=True)
class StepSpec:
    """One step: its script lines run by ``/bin/sh -e`` in ``working_directory``.

    ``working_directory`` is relative to the job workspace; ``env`` is the step's complete
    environment (already merged and resolved by the caller).
    """

    index: int
    name: str
    image: str
    script: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    working_directory: str = "."
    timeout: float = 1800.0
    limits: ResourceLimits = field(default_factory=ResourceLimits)

    def __post_init__(self) -> None:
        object.__setattr__(self, "script", tuple(self.script))
        env = dict(self.env)
        for key, value in env.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"step env must map str to str, got {key!r}: {value!r}")
            if not key or "=" in key or "\0" in key or "\0" in value:
                raise ValueError(f"invalid environment variable name or value: {key!r}")
        # Read-only view: a frozen spec whose env could be mutated would not be frozen.
        object.__setattr__(self, "env", MappingProxyType(env))
        if self.timeout <= 0:
            raise ValueError(f"timeout must be positive, got {self.timeout!r}")


@dataclass(frozen=True)
class LogLine:
    """One line of step output, without its newline."""

    stream: Stream
    text: str


@dataclass(frozen=True)
class StepOutcome:
    """How a step ended. ``reason`` is None on success, else one of ``REASONS``."""

    exit_code: int | None
    reason: Reason | None
    duration: float

    @property
    def succeeded(self) -> bool:
        """True when the step ran to the end with exit code 0 and was not stopped."""
        return self.reason is None


class StepHandle:
    """A started step. Backends subclass it; callers treat it as opaque.

    Holds what all three caller threads share, behind one lock: who asked for a kill and
    why (the first reason wins), whether the step has finished, and its cached outcome.
    A step that failed before it could run (image missing, no such working directory)
    carries that ``early_outcome`` and the ``early_lines`` explaining it.
    """

    def __init__(self, job: JobSpec, step: StepSpec) -> None:
        self.job = job
        self.step = step
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.kill_reason: Reason | None = None
        self.finished = threading.Event()
        self.outcome: StepOutcome | None = None
        self.early_outcome: StepOutcome | None = None
        self.early_lines: tuple[LogLine, ...] = ()

    def fail_early(self, reason: Reason, message: str, exit_code: int | None = None) -> None:
        """Mark the step as failed before it ran, with a stderr line saying why."""
        self.early_outcome = StepOutcome(exit_code, reason, time.monotonic() - self.started)
        self.early_lines = (LogLine("stderr", message),)
        self.outcome = self.early_outcome
        self.finished.set()

    def claim_kill(self, reason: Reason) -> bool:
        """Record a kill request; True when the caller should do the killing.

        Only the first request of a still-running step gets True, so a timeout and a
        cancel arriving together stop the step once and keep the first reason.
        """
        if reason not in REASONS:
            raise ValueError(f"unknown kill reason {reason!r}")
        with self.lock:
            if self.finished.is_set() or self.kill_reason is not None:
                return False
            self.kill_reason = reason
            return True

    def remaining(self) -> float:
        """Seconds left before the step's timeout."""
        return self.started + self.step.timeout - time.monotonic()


@runtime_checkable
class Executor(Protocol):
    """A place steps run.

    Threads: one executor serves every job of a worker at once, so every method must be
    safe to call concurrently for *different* jobs. For one handle, ``tail`` (a reader
    thread), ``wait`` (the job's thread) and ``kill`` (a cancel thread) may run at the
    same time; the first kill request wins (``StepHandle.claim_kill``).
    """

    name: str

    def prepare(self, job: JobSpec) -> None:
        """Per-job setup (the scripts and home directories) before the first step.

        Must not fail if already invoked once for this job (``start`` may call it too).
        """

    def start(self, job: JobSpec, step: StepSpec) -> StepHandle:
        """Start one step and return at once, without waiting for it to run.

        A step that cannot run (its image is missing, its working directory does not
        exist) is not an error: the handle carries that outcome (``fail_early``) and
        ``tail``/``wait`` report it. The machinery failing raises InfrastructureError; a
        working directory leaving the workspace raises ValueError.
        """

    def tail(self, handle: StepHandle) -> Iterator[LogLine]:
        """The step's output lines as produced, stdout and stderr each in order; ends
        when the step has ended and its output is drained. Call once per handle."""

    def wait(self, handle: StepHandle) -> StepOutcome:
        """Block until the step ends, stopping it (reason ``timeout``) once
        ``step.timeout`` seconds passed since it started running (not counting an image
        pull). Must not fail if already invoked once: it returns the same outcome."""

    def kill(self, handle: StepHandle, reason: Reason = "cancelled") -> None:
        """Stop the step: SIGTERM, ``job.kill_grace`` seconds, then SIGKILL; returns once
        it is stopped. ``wait`` then reports ``reason`` (the first kill's). Must not fail
        when the step already ended, or when invoked again (it changes nothing then)."""

    def cleanup(self, job: JobSpec) -> None:
        """Remove what the job left (containers, processes, scripts); keep the workspace.

        Called once per attempt, after the last step or an error. Goes on past individual
        failures and raises InfrastructureError at the end if something stayed. Must not
        fail if already invoked once, or for a job that never started a step.
        """

    def reap_orphans(self, worker_name: str) -> int:
        """Remove what a previous life of this worker (same name) left behind, before the
        worker takes work; returns how many were removed."""

    def check_data_dir(self, data_dir: Path) -> None:
        """Called once at worker start, before any job: raise InfrastructureError (one line
        naming the path and why) when steps could not see ``data_dir``, where workspaces
        and job directories live. Safe to call again."""


def exit_code_of(returncode: int) -> int:
    """A process status as a shell reports it: death by signal N becomes 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def classify(
    exit_code: int | None, kill_reason: Reason | None, oom_killed: bool = False
) -> Reason | None:
    """The reason of a finished step: a requested kill, then OOM, then the exit code."""
    if kill_reason is not None:
        return kill_reason
    if oom_killed:
        return "oom"
    if exit_code == 0:
        return None
    return "script_failure"


