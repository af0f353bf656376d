"""What every bench measures with: percentiles, timers, /proc readers (RSS, CPU, process
trees), stopping a process group, and the frame of a bench run (host line, PASS/MISS,
the closing `targets missed:` line).

Standard library only; the services a bench starts come from tests/services.py,
tests/cluster.py and tests/deploy/services.py, as the tests start them.
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import time
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterator, Sequence

MB = 1024 * 1024


# -- figures --------------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): always one of the measured values."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# -- timers ---------------------------------------------------------------------------------

def timed(fn: Callable[[], Any]) -> float:
    """Wall seconds of one call of `fn`."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_of(repeat: int, fn: Callable[[], Any]) -> float:
    """The shortest of `repeat` timed calls of `fn`."""
    return min(timed(fn) for _ in range(repeat))


@contextmanager
def patched(owner: Any, attribute: str, timings: list[float]) -> Iterator[None]:
    """Time every call of `owner.attribute` into `timings` while the block runs.

    Only the bench process is touched; the engine code runs as shipped."""
    original = getattr(owner, attribute)

    def timed_call(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            timings.append(time.perf_counter() - start)

    setattr(owner, attribute, timed_call)
    try:
        yield
    finally:
        setattr(owner, attribute, original)


class CallTimer:
    """Wraps named callables of objects with a timer (`patched`) for the life of an ExitStack."""

    def __init__(self, stack: ExitStack) -> None:
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self._stack = stack

    def wrap(self, owner: object, attribute: str, label: str) -> None:
        self._stack.enter_context(patched(owner, attribute, self.seconds[label]))


# -- /proc -----------------------------------------------------------------------------------

def status_bytes(pid: int | str, field: str) -> int:
    """A `kB` field of /proc/PID/status (`VmRSS`, `VmHWM`) in bytes; 0 once the process is gone
    or without the field. `pid` may be "self"."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def vm_rss(pid: int) -> int:
    """VmRSS of one process in bytes (0 once it is gone)."""
    return status_bytes(pid, "VmRSS")


def vm_hwm() -> int:
    """This process's peak resident set size in bytes."""
    peak = status_bytes("self", "VmHWM")
    if not peak:
        raise RuntimeError("no VmHWM in /proc/self/status")
    return peak


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants, from /proc/*/stat parent pids."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                ppid = int(stat.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    tree, stack = [], [root]
    while stack:
        pid = stack.pop()
        tree.append(pid)
        stack.extend(children.get(pid, []))
    return tree


def tree_rss(root: int) -> tuple[int, int]:
    """(summed VmRSS, process count) of the tree; shared pages count once per process."""
    pids = process_tree(root)
    return sum(vm_rss(p) for p in pids), len(pids)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (not its children), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- processes -----------------------------------------------------------------------------

def kill_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, wait: float = 10.0) -> None:
    """Signal a process started with start_new_session=True and everything it spawned."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=wait)


# -- the frame of a run ----------------------------------------------------------------------

def host_line() -> str:
    """CPUs and load average, first in every bench's output: other load skews every figure."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs, load average {load} (other work on the host skews every figure)"


def run_sections(sections: dict[str, Callable[[], bool]]) -> int:
    """Run each section (True: its target met, or it has none), timing it; print the
    `targets missed:` line; the exit status (1 when a target was missed)."""
    results: dict[str, bool] = {}
    for name, section in sections.items():
        start = time.perf_counter()
        results[name] = section()
        print(f"({name}: {time.perf_counter() - start:.1f} s)\n")
    missed = [n for n, ok in results.items() if not ok]
    print("targets missed: " + (", ".join(missed) if missed else "none"))
    return 1 if missed else 0
