"""The executor contract: what a backend is given, what it reports, and how it is driven.

An executor runs the steps of a job, one at a time, somewhere (a Docker container, a host
process). It is modelled on Woodpecker's backend interface: the worker calls ``prepare``
once per job, then ``start``/``tail``/``wait`` for each step, ``kill`` to cancel, and
``cleanup`` at the end. ``tail`` (a reader thread), ``wait`` (the main thread) and ``kill``
(a cancel thread) may run concurrently on the same handle.

This module also holds the pieces both backends share: the log line splitter and pump,
the per-job scripts directories and the working-directory check.
"""

from __future__ import annotations

import codecs
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Literal, Protocol, runtime_checkable

Reason = Literal["script_failure", "timeout", "oom", "image_pull_failure", "cancelled"]
REASONS: frozenset[str] = frozenset(
    {"script_failure", "timeout", "oom", "image_pull_failure", "cancelled"}
)
PullPolicy = Literal["if-not-present", "always", "never"]
PULL_POLICIES: frozenset[str] = frozenset({"if-not-present", "always", "never"})
Stream = Literal["stdout", "stderr"]

# Long enough for any human-readable line, short enough that one runaway line (a minified
# bundle, a progress bar without newlines) cannot hold the whole log hostage in memory.
DEFAULT_MAX_LINE_CHARS = 16 * 1024


class ExecutorError(Exception):
    """Base class of the errors an executor raises."""


class InfrastructureError(ExecutorError):
    """The machinery failed, not the step: engine unreachable, API 5xx. Retry the job."""


@dataclass(frozen=True)
class Limits:
    """Resource limits of one step; ``None`` means unlimited."""

    memory_bytes: int | None = None
    cpus: float | None = None
    pids: int | None = 1024

    def __post_init__(self) -> None:
        for name in ("memory_bytes", "cpus", "pids"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"Limits.{name} must be positive or None, got {value!r}")


@dataclass(frozen=True)
class JobSpec:
    """One job attempt as an executor sees it; ``workspace`` is a populated host directory."""

    run_id: str
    job: str
    workspace: Path
    worker_name: str
    network: str = "bridge"
    user: str | None = None
    read_only_root: bool = False
    pull_policy: PullPolicy = "if-not-present"
    kill_grace: float = 5.0

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
    limits: Limits = field(default_factory=Limits)

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
    """A place steps run. See ``docs/executors.md`` for the full contract."""

    name: str

    def prepare(self, job: JobSpec) -> None:
        """Per-job setup (the scripts directory). Idempotent."""

    def start(self, job: JobSpec, step: StepSpec) -> StepHandle:
        """Start one step and return at once; failures to start show in ``wait``."""

    def tail(self, handle: StepHandle) -> Iterator[LogLine]:
        """The step's output lines as produced; ends when the step ends. Call once."""

    def wait(self, handle: StepHandle) -> StepOutcome:
        """Block until the step ends, stopping it when ``step.timeout`` passes."""

    def kill(self, handle: StepHandle, reason: Reason = "cancelled") -> None:
        """SIGTERM, ``job.kill_grace`` seconds, then SIGKILL; returns once it is stopped."""

    def cleanup(self, job: JobSpec) -> None:
        """Remove what the job left (containers, processes, scripts); keep the workspace."""

    def reap_orphans(self, worker_name: str) -> int:
        """Remove what a previous life of this worker left behind; returns how many."""

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


def resolve_working_directory(workspace: Path, working_directory: str) -> Path:
    """The host path of a step's working directory; ValueError when it leaves the workspace.

    The pipeline validator rejects escaping paths already; this is the executor not
    trusting its input, since the path decides what a step may write on the host.
    """
    relative = PurePosixPath(working_directory or ".")
    if relative.is_absolute() or ".." in relative.parts:
        raise ValueError(
            f"working_directory {working_directory!r} must be relative and stay inside the workspace"
        )
    root = workspace.resolve()
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        # A symlink inside the workspace pointing out of it.
        raise ValueError(f"working_directory {working_directory!r} leaves the workspace")
    return target


class LineSplitter:
    """Turns a stream of byte chunks into text lines.

    Lines end at ``\n`` only; ``\r`` is kept as text (progress bars use it mid-line).
    Invalid UTF-8 is replaced, a character split across chunks is kept whole, a line
    longer than ``max_chars`` is cut into chunks of that size (never dropped), and the
    partial last line comes out on ``flush``.
    """

    def __init__(self, max_chars: int = DEFAULT_MAX_LINE_CHARS) -> None:
        if max_chars < 1:
            raise ValueError("max_chars must be >= 1")
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._max = max_chars

    def feed(self, data: bytes) -> list[str]:
        """The complete lines ``data`` finishes."""
        self._buffer += self._decoder.decode(data)
        return self._take(final=False)

    def flush(self) -> list[str]:
        """Whatever is left, as a last line (empty list when nothing is)."""
        self._buffer += self._decoder.decode(b"", final=True)
        return self._take(final=True)

    def _take(self, final: bool) -> list[str]:
        lines: list[str] = []
        *complete, rest = self._buffer.split("\n")
        for line in complete:
            lines.extend(self._chunks(line))
        # Strictly longer: a line of exactly max_chars may still get its newline next.
        while len(rest) > self._max:
            lines.append(rest[: self._max])
            rest = rest[self._max :]
        if final and rest:
            lines.append(rest)
            rest = ""
        self._buffer = rest
        return lines

    def _chunks(self, line: str) -> list[str]:
        if len(line) <= self._max:
            return [line]
        return [line[i : i + self._max] for i in range(0, len(line), self._max)]


_DONE = object()


class LogPump:
    """Reads byte streams in background threads and hands out their lines as they come.

    One thread per stream keeps stdout and stderr apart and in order each, without one
    full pipe blocking the other. Register every source with ``add`` before reading
    ``lines``; a single consumer reads them.
    """

    def __init__(self, max_line_chars: int = DEFAULT_MAX_LINE_CHARS) -> None:
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._sources = 0
        self._max = max_line_chars

    def add(self, stream: Stream, chunks: Iterable[bytes]) -> None:
        """Start reading ``chunks`` (e.g. a pipe or an engine log stream) as ``stream``."""
        self._sources += 1
        thread = threading.Thread(
            target=self._pump, args=(stream, chunks), name=f"conveyor-log-{stream}", daemon=True
        )
        thread.start()

    def _pump(self, stream: Stream, chunks: Iterable[bytes]) -> None:
        splitter = LineSplitter(self._max)
        try:
            for chunk in chunks:
                for text in splitter.feed(chunk):
                    self._queue.put(LogLine(stream, text))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer thread below
            self._queue.put(exc)
        finally:
            for text in splitter.flush():
                self._queue.put(LogLine(stream, text))
            self._queue.put(_DONE)

    def lines(self) -> Iterator[LogLine]:
        """Every line of every source; ends when all sources have ended."""
        pending = self._sources
        error: Exception | None = None
        while pending:
            item = self._queue.get()
            if item is _DONE:
                pending -= 1
            elif isinstance(item, Exception):
                error = item
            else:
                yield item  # type: ignore[misc]
        if error is not None:
            raise InfrastructureError(f"log stream failed: {error}") from error


class JobDirectories:
    """The per-job host directories of one executor: ``scripts/`` and ``home/``.

    They live outside the workspace, so a script never ends up in an artifact, and are
    world-readable (0755) so a step running as a non-root ``user`` can read its script.
    """

    def __init__(self, root: Path | None = None) -> None:
        self._root = root
        self._dirs: dict[tuple[str, str], Path] = {}
        self._lock = threading.Lock()

    def ensure(self, job: JobSpec) -> Path:
        """The job's directory, created on first use."""
        key = (job.run_id, job.job)
        with self._lock:
            path = self._dirs.get(key)
            if path is None:
                if self._root is not None:
                    self._root.mkdir(parents=True, exist_ok=True)
                path = Path(tempfile.mkdtemp(prefix="conveyor-job-", dir=self._root))
                for sub in ("scripts", "home"):
                    (path / sub).mkdir()
                for directory in (path, path / "scripts", path / "home"):
                    os.chmod(directory, 0o755)
                self._dirs[key] = path
            return path

    def remove(self, job: JobSpec) -> None:
        """Delete the job's directory, if any."""
        with self._lock:
            path = self._dirs.pop((job.run_id, job.job), None)
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)
