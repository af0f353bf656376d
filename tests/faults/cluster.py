"""A real cluster for fault tests: the e2e cluster, with workers that may run in a network namespace."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import datetime

import pytest

from tests.cluster import ROOT, Cluster, Worker


class ReapingWorker(Worker):
    """`conveyor worker` (which runs the lost-job reaper) as a process group of its own, optionally
    behind a command prefix such as `ip netns exec NS`."""

    def __init__(self, name: str, env: dict[str, str], concurrency: int, *prefix: str):
        self.name = name
        self.output: list[str] = []
        self.ready = threading.Event()
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "coordinator", "worker", "--name", name,
             "--concurrency", str(concurrency), "--loglevel", "INFO"],
            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()


class ReapingCluster(Cluster):
    """The e2e cluster whose workers restore lost jobs within seconds (no 2 h visibility wait)."""

    def wait(self, run_id: str, timeout: float = 120) -> dict:
        """The final `status --format json` of the run; polls the store, not the CLI (a CLI
        call costs a second of CPU, and these tests load the machine enough already)."""
        from shared.state.redis import RedisState

        store = RedisState(self.redis_url)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    if store.get_run(run_id).status != "running":
                        return self.status(run_id)
                except Exception:  # Redis restarting (a fault test): keep polling
                    pass
                time.sleep(0.2)
        finally:
            store.close()
        return super().wait(run_id, timeout=1)

    def reaper_actions(self) -> str:
        """What the workers' reapers did, e.g. `2 restored, 1 resent`, from their logs."""
        lines = [line for worker in self.workers for line in worker.output if "reaper: " in line]
        restored = sum("reaper: restored" in line for line in lines)
        resent = sum("reaper: resent" in line for line in lines)
        return f"reaper {restored} restored, {resent} resent"

    def worker(self, name: str, concurrency: int = 2, **env: str) -> Worker:
        worker = ReapingWorker(name, {**self.env, **env}, concurrency)
        self.workers.append(worker)
        if not worker.ready.wait(60):
            worker.kill()
            pytest.fail(f"worker {name} did not become ready:\n{worker.log()}")
        return worker


def ts(text: str) -> float:
    """A status timestamp as epoch seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def overlapping_attempts(job: dict) -> list[tuple[int, int]]:
    """Pairs of attempts of one job (status JSON) whose [started, finished] intervals overlap."""
    history = job["attempt_history"]
    pairs = []
    for i, first in enumerate(history):
        for second in history[i + 1:]:
            end = ts(first["finished_at"]) if first["finished_at"] else float("inf")
            if ts(second["started_at"]) < end:
                pairs.append((first["number"], second["number"]))
    return pairs
