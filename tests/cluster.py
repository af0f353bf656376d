"""A real cluster for tests and benches: its own redis-server, `conveyor worker` processes
and the `conveyor` CLI (`running_cluster`). The e2e fixtures wrap it."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.services import start_redis

ROOT = Path(__file__).resolve().parents[1]


class Worker:
    def __init__(self, name: str, env: dict[str, str], concurrency: int):
        self.name = name
        self.output: list[str] = []
        self.ready = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "coordinator", "worker", "--name", name, "--concurrency", str(concurrency),
             "--loglevel", "INFO"],
            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line.rstrip("\n"))
            if " ready." in line:
                self.ready.set()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)

    def log(self) -> str:
        return "\n".join(self.output)


class Cluster:
    def __init__(self, tmp: Path, redis_port: int, executor: str):
        self.tmp = tmp
        self.redis_url = f"redis://127.0.0.1:{redis_port}/0"
        self.env = {
            **os.environ,
            "CONVEYOR_BROKER_URL": self.redis_url,
            "CONVEYOR_DATA_DIR": str(tmp / "data"),
            "CONVEYOR_EXECUTOR": executor,
            "CONVEYOR_LEASE_SECONDS": "3",
            "PYTHONUNBUFFERED": "1",
        }
        self.workers: list[Worker] = []

    def worker(self, name: str, concurrency: int = 2, **env: str) -> Worker:
        worker = Worker(name, {**self.env, **env}, concurrency)
        self.workers.append(worker)
        if not worker.ready.wait(60):
            worker.kill()
            pytest.fail(f"worker {name} did not become ready:\n{worker.log()}")
        return worker

    def pipeline(self, text: str, name: str = "pipeline.yml") -> Path:
        path = self.tmp / "src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    def cli(self, *args: str, timeout: float = 180, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "coordinator", *args], env={**self.env, **env}, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)

    def submit(self, pipeline: Path, *args: str) -> str:
        result = self.cli("submit", str(pipeline), *args)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().splitlines()[-1]

    def status(self, run_id: str) -> dict:
        result = self.cli("status", run_id, "--format", "json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def wait(self, run_id: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status(run_id)
            if status["status"] != "running":
                return status
            time.sleep(0.3)
        pytest.fail(f"run {run_id} did not finish in {timeout}s: {self.status(run_id)}\n"
                    + "\n".join(w.log()[-3000:] for w in self.workers))

    def logs(self, run_id: str, job: str | None = None) -> str:
        result = self.cli("logs", run_id, *([job] if job else []))
        assert result.returncode == 0, result.stderr
        return result.stdout

    def stop(self) -> None:
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.kill(signal.SIGKILL)


@contextlib.contextmanager
def running_cluster(tmp: Path, executor: str, cls: type[Cluster] = Cluster) -> Iterator[Cluster]:
    """A redis-server of its own and a `cls` cluster on it; every worker and Redis stopped after."""
    proc, port = start_redis(tmp)
    cluster = cls(tmp, port, executor)
    try:
        yield cluster
    finally:
        cluster.stop()
        proc.terminate()
        proc.wait(timeout=10)
