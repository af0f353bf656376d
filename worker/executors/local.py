"""The local executor: each step is a ``/bin/sh -e`` process group on the worker's host.

No isolation: the step sees the host's filesystem and network as its user does. What it
does keep apart is the environment (only the step's env, plus a default PATH and a
per-job HOME when the step sets none, never the worker's own variables, which hold
broker passwords and secrets) and the process tree (its own session, killed as a group).

The worker's variables stay out of reach through /proc too, where Linux allows: the
process running the executor makes itself non-dumpable, so a step of the same uid cannot
read ``/proc/<worker>/environ`` (or ptrace it); a worker running as root starts steps
without any capability (``setpriv``), since CAP_SYS_PTRACE would read it anyway, unless
``JobSpec.user`` names who they run as (``CONVEYOR_LOCAL_USER``).

Memory, CPU and pids limits cannot be enforced portably without privileges and are not
enforced; ``image``, ``network``, ``read_only_root`` and ``pull_policy`` do not apply.
"""

from __future__ import annotations

import ctypes
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

from worker.executors import hand_over, resolve_user
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
# linux/prctl.h
PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3


def make_non_dumpable() -> bool:
    """Make this process non-dumpable (Linux): /proc/PID/environ, mem and ptrace are then
    closed to other processes of the same uid without CAP_SYS_PTRACE. True when it is.

    The flag is reset by execve, so the steps this process starts are ordinary processes.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return False  # not Linux
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    return prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0


def _capless_prefix() -> list[str]:
    """The command that starts a step as root without any capability; InfrastructureError
    when ``setpriv`` (util-linux) is missing."""
    setpriv = shutil.which("setpriv", path=DEFAULT_PATH)
    if setpriv is None:
        raise InfrastructureError(
            "the worker runs as root and local steps must not: install setpriv (util-linux) "
            "to run them as root without capabilities, or set CONVEYOR_LOCAL_USER (e.g. nobody)")
    # An empty bounding set: root keeps its uid but gets no capability at exec, and
    # no_new_privs keeps setuid programs (sudo, su) from giving any back.
    return [setpriv, "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]


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
        self._handed_over: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        # Steps of the worker's own uid must not read its environment through /proc.
        self.non_dumpable = make_non_dumpable()

    def prepare(self, job: JobSpec) -> None:
        """Create the job's scripts and home directories; give the workspace and the home
        to ``job.user`` when set. Idempotent."""
        home = self._dirs.ensure(job) / "home"
        key = (job.run_id, job.job)
        with self._lock:
            fresh = key not in self._handed_over
            self._handed_over.add(key)
        if fresh and job.user is not None:
            try:
                uid, gid = resolve_user(job.user)
            except KeyError:
                raise InfrastructureError(f"local steps cannot run as {job.user!r}: no such user "
                                          "on this host (CONVEYOR_LOCAL_USER)") from None
            try:
                os.chown(home, uid, gid)
                os.chmod(home, 0o700)
                hand_over(job.workspace, f"{uid}:{gid}")
            except OSError as exc:
                raise InfrastructureError(f"cannot give the job's directories to {job.user!r}: {exc}") from exc

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
        env = dict(step.env)
        # The local counterpart of the Docker executor's labels: after a restart, the worker
        # finds the step sessions its previous life left running by this mark.
        env[OWNER_ENV] = job.worker_name
        env.setdefault("PATH", self._default_path)
        env.setdefault("HOME", str(job_dir / "home"))
        command = [self._shell, "-e", str(script)]
        identity: dict = {}
        if job.user is not None:
            uid, gid = resolve_user(job.user)  # prepare checked that it exists
            # No supplementary groups: root's (gid 0 among them) would otherwise stay.
            identity = {"user": uid, "group": gid, "extra_groups": []}
        elif os.geteuid() == 0:
            # setpriv would start and then fail to exec a missing shell as a step failure.
            if not os.access(self._shell, os.X_OK):
                raise InfrastructureError(f"cannot start {self._shell}: not an executable file")
            command = _capless_prefix() + command
        try:
            proc = subprocess.Popen(
                command,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                **identity,
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
        with self._lock:
            self._handed_over.discard((job.run_id, job.job))
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
