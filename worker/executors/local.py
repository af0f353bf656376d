"""The local executor: each step is a ``/bin/sh -e`` process group on the worker's host.

No isolation: the step sees the host's filesystem and network as the worker's user does.
What it does keep apart is the environment (only the step's env, plus a default PATH and
a per-job HOME when the step sets none, never the worker's own variables, which hold
broker passwords and secrets) and the process tree (its own session, killed as a group).
Memory, CPU and pids limits cannot be enforced portably without privileges and are not
enforced; ``image``, ``network``, ``read_only_root`` and ``pull_policy`` do not apply.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from worker.executors.contract import (

    InfrastructureError,

    JobSpec,

    LogLine,

    Reason,

    StepHandle,

    StepOutcome,

    StepSpec,

    classify,

    exit_code_of,

)

from worker.executors.support import (

    DEFAULT_MAX_LINE_CHARS,

    JobDirectories,

    LogPump,

    resolve_working_directory,

)
from worker.executors.scripts import SHELL, write_script

log = logging.getLogger(__name__)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_POLL = 0.05


OWNER_ENV = "CONVEYOR_STEP_OWNER"


class LocalStepHandle(StepHandle):
    """A step running as a host process group led by ``proc``."""

    def __init__(self, job: JobSpec, step: StepSpec, max_line_chars: int) -> None:
        super().__init__(job, step)
        self.proc: subprocess.Popen[bytes] | None = None
        self.pump = LogPump(max_line_chars)


def _read_chunks(pipe: IO[bytes]) -> Iterator[bytes]:
    """The bytes of a pipe as they arrive (``read1`` does not wait for a full buffer)."""
    try:
        while chunk := pipe.read1(65536):  # type: ignore[attr-defined]
            yield chunk
    finally:
        pipe.close()


def _signal_group(pgid: int, signum: int) -> bool:
    """Send ``signum`` to a process group; False when the group no longer exists."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    return True


def _group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` still runs (zombies do not count).

    ``killpg(pgid, 0)`` alone counts zombies that nobody has reaped yet, which would make
    every kill sit out its whole grace period; /proc tells them apart on Linux.
    """
    try:
        entries = os.listdir("/proc")
    except OSError:
        return _signal_group(pgid, 0)
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited while we looked
        # After "(comm)": state, ppid, pgrp.
        if len(fields) > 2 and fields[2] == str(pgid).encode() and fields[0] != b"Z":
            return True
    return False


def _session_leaders() -> Iterator[int]:
    """Pids of this machine's session leaders other than our own (Linux /proc)."""
    own = os.getsid(0)
    try:
        entries = os.listdir("/proc")
    except OSError:
        return
    for entry in entries:
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            if os.getsid(pid) == pid and pid != own:
                yield pid
        except OSError:
            continue


def _parse_user(spec: str) -> tuple[int | str, int | str | None]:
    """``"user[:group]"`` with names or numeric ids, as Docker's ``--user`` takes it."""
    user, _, group = spec.partition(":")

    def as_id(value: str) -> int | str:
        return int(value) if value.isdigit() else value

    return as_id(user), (as_id(group) if group else None)


class LocalExecutor:
    """Runs steps as host processes. See the module docstring for what is not isolated."""

    name = "local"

    def __init__(
        self,
        *,
        scripts_root: Path | None = None,
        shell: str = SHELL,
        default_path: str = DEFAULT_PATH,
        max_line_chars: int = DEFAULT_MAX_LINE_CHARS,
    ) -> None:
        self._dirs = JobDirectories(scripts_root)
        self._shell = shell
        self._default_path = default_path
        self._max_line_chars = max_line_chars
        self._handles: dict[tuple[str, str], list[LocalStepHandle]] = {}
        self._lock = threading.Lock()
        self._warned_limits = False

    def prepare(self, job: JobSpec) -> None:
        """Create the job's scripts and home directories."""
        home = self._dirs.ensure(job) / "home"
        if job.user is not None:
            user, group = _parse_user(job.user)
            shutil.chown(home, user=user, group=group)

    def start(self, job: JobSpec, step: StepSpec) -> LocalStepHandle:
        """Spawn the step's shell in its own session; raises ValueError for an escaping path."""
        self.prepare(job)
        job_dir = self._dirs.ensure(job)
        handle = LocalStepHandle(job, step, self._max_line_chars)
        with self._lock:
            self._handles.setdefault((job.run_id, job.job), []).append(handle)
        script = write_script(job_dir / "scripts", step.index, step.script)
        cwd = resolve_working_directory(job.workspace, step.working_directory)
        if not cwd.is_dir():
            handle.fail_early(
                "script_failure",
                f"working directory {step.working_directory!r} does not exist in the workspace",
            )
            return handle
        self._warn_unenforced(step)
        env = dict(step.env)
        # The local counterpart of the Docker executor's labels: after a restart, the worker
        # finds the step sessions its previous life left running by this mark.
        env[OWNER_ENV] = job.worker_name
        env.setdefault("PATH", self._default_path)
        env.setdefault("HOME", str(job_dir / "home"))
        user, group = _parse_user(job.user) if job.user is not None else (None, None)
        try:
            proc = subprocess.Popen(
                [self._shell, "-e", str(script)],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                user=user,
                group=group,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            # The host cannot run a shell (or switch user): the worker is broken, not the step.
            raise InfrastructureError(f"cannot start {self._shell}: {exc}") from exc
        handle.proc = proc
        handle.started = time.monotonic()
        assert proc.stdout is not None and proc.stderr is not None
        handle.pump.add("stdout", _read_chunks(proc.stdout))
        handle.pump.add("stderr", _read_chunks(proc.stderr))
        return handle

    def tail(self, handle: StepHandle) -> Iterator[LogLine]:
        """Lines from both pipes as they come; ends when every process of the step is gone."""
        assert isinstance(handle, LocalStepHandle)
        if handle.early_outcome is not None:
            yield from handle.early_lines
            return
        yield from handle.pump.lines()

    def wait(self, handle: StepHandle) -> StepOutcome:
        """Wait for the shell to exit, killing it at the timeout; then kill any leftovers."""
        assert isinstance(handle, LocalStepHandle)
        if handle.outcome is not None:
            return handle.outcome
        proc = handle.proc
        assert proc is not None
        # A timer enforces the timeout so the wait itself can block: Popen.wait(timeout=...)
        # polls with sleeps of up to 50 ms, which every step would pay at its end.
        timer = threading.Timer(max(handle.remaining(), 0.0), self.kill, args=(handle, "timeout"))
        timer.daemon = True
        timer.start()
        try:
            proc.wait()
        finally:
            timer.cancel()
        # Background jobs the script left would keep the pipes (and tail) open forever;
        # a container would take them down with it, so do the same here, and wait (briefly)
        # until the kernel has actually taken them down: the step is over only then.
        if _signal_group(proc.pid, signal.SIGKILL):
            deadline = time.monotonic() + 2.0
            while _group_alive(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.01)
        code = exit_code_of(proc.returncode)
        with handle.lock:
            handle.finished.set()
            if handle.outcome is None:
                handle.outcome = StepOutcome(
                    code, classify(code, handle.kill_reason), time.monotonic() - handle.started
                )
            return handle.outcome

    def kill(self, handle: StepHandle, reason: Reason = "cancelled") -> None:
        """SIGTERM the step's process group, give it ``kill_grace`` seconds, then SIGKILL."""
        assert isinstance(handle, LocalStepHandle)
        if not handle.claim_kill(reason) or handle.proc is None:
            return
        proc = handle.proc
        if not _signal_group(proc.pid, signal.SIGTERM):
            return
        deadline = time.monotonic() + handle.job.kill_grace
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader so an empty group reads as gone
            if proc.returncode is not None and not _group_alive(proc.pid):
                return
            time.sleep(_POLL)
        _signal_group(proc.pid, signal.SIGKILL)

    def cleanup(self, job: JobSpec) -> None:
        """Kill whatever of the job still runs and delete its scripts; keep the workspace."""
        with self._lock:
            handles = self._handles.pop((job.run_id, job.job), [])
        for handle in handles:
            proc = handle.proc
            # Until it is reaped the leader's pid (the group id) cannot be reused, so the
            # group is still ours to kill; after wait() reaped it, its leftovers are gone.
            if proc is not None and proc.returncode is None:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
        self._dirs.remove(job)

    def check_data_dir(self, data_dir: Path) -> None:
        """Steps are processes of this host: they see the data directory as the worker does."""

    def reap_orphans(self, worker_name: str) -> int:
        """Kill the step sessions a previous life of this worker left running; how many.

        A SIGKILLed worker cannot stop its steps (they run in sessions of their own), and
        the job's re-run must not share the machine with them. Sessions are found by the
        owner mark in their leader's environment (Linux /proc; elsewhere nothing is found).
        """
        mark = f"{OWNER_ENV}={worker_name}".encode()
        reaped = 0
        for pid in _session_leaders():
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if mark in environ and _signal_group(pid, signal.SIGKILL):
                reaped += 1
        return reaped

    def _warn_unenforced(self, step: StepSpec) -> None:
        limits = step.limits
        if self._warned_limits or (limits.memory_bytes is None and limits.cpus is None):
            return
        self._warned_limits = True
        log.warning(
            "the local executor does not enforce memory or cpu limits (step %r asked for "
            "memory=%s cpus=%s); use CONVEYOR_EXECUTOR=docker to enforce them",
            step.name,
            limits.memory_bytes,
            limits.cpus,
        )
