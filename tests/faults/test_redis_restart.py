"""Redis (broker, result backend and state store at once) restarted mid-run: the run ends, with
success or with a reason on every job that did not succeed, and never outlives its timeout."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

from shared.state.base import RUNNING
from shared.state.redis import RedisState
from tests.faults.cluster import ReapingCluster, ts
from tests.services import free_port, start_redis

pytestmark = [pytest.mark.services, pytest.mark.slow]

PIPELINE_TIMEOUT = 60
OUTAGE_SECONDS = 3


def persistent_redis(tmp: Path, port: int) -> subprocess.Popen:
    """A redis-server that keeps its data across restarts (append-only file in `tmp`)."""
    proc, _ = start_redis(tmp, "--appendonly", "yes", "--appendfsync", "everysec", port=port)
    return proc


@pytest.mark.parametrize("how", ["shutdown", "sigkill"])
def test_redis_restart_mid_run(tmp_path: Path, fault, how: str) -> None:
    fault.fault = f"Redis restarted mid-run ({how}, {OUTAGE_SECONDS}s down, AOF everysec)"
    data = tmp_path / "redis"
    data.mkdir()
    port = free_port()
    server = persistent_redis(data, port)
    cluster = ReapingCluster(tmp_path, port, "local")
    try:
        cluster.worker("w1", concurrency=2)
        cluster.worker("w2", concurrency=2)
        pipeline = cluster.pipeline(f"""
            name: outage
            timeout: {PIPELINE_TIMEOUT}
            jobs:
              first: {{steps: [{{name: s, script: ["sleep 1"]}}]}}
              b1: {{depends_on: [first], steps: [{{name: s, script: ["sleep 4"]}}]}}
              b2: {{depends_on: [first], steps: [{{name: s, script: ["sleep 4"]}}]}}
              b3: {{depends_on: [first], steps: [{{name: s, script: ["sleep 2"]}}]}}
              join: {{depends_on: [b1, b2, b3], steps: [{{name: s, script: ["sleep 1"]}}]}}
              last: {{depends_on: [join], steps: [{{name: s, script: ["echo done"]}}]}}
        """)
        run_id = cluster.submit(pipeline)
        store = RedisState(cluster.redis_url)
        try:
            deadline = time.monotonic() + 30
            while store.get_jobs(run_id, ["b1"])["b1"].status != RUNNING:
                assert time.monotonic() < deadline, "b1 never started"
                time.sleep(0.05)
        finally:
            store.close()
        time.sleep(1)
        if how == "shutdown":
            redis.Redis(port=port).shutdown(nosave=False)  # SHUTDOWN: the AOF is flushed
        else:
            os.kill(server.pid, signal.SIGKILL)  # up to a second of writes may be lost
        server.wait(timeout=30)
        fault.injected = 1
        time.sleep(OUTAGE_SECONDS)
        server = persistent_redis(data, port)
        status = cluster.wait(run_id, timeout=PIPELINE_TIMEOUT + 30)
        ended = ts(status["finished_at"]) - ts(status["created_at"])
        jobs = status["jobs"]
        fault.note(f"run {status['status']} after {ended:.0f}s ({cluster.reaper_actions()}); "
                   + ", ".join(f"{n}={j['status']}" + (f"({j['reason']})" if j["reason"] else "")
                               for n, j in jobs.items()))
        assert ended <= PIPELINE_TIMEOUT + 10
        assert all(j["status"] in ("success", "failed", "cancelled", "skipped") for j in jobs.values())
        if status["status"] != "success":
            assert all(j["reason"] for j in jobs.values() if j["status"] != "success"), jobs
    finally:
        cluster.stop()
        server.terminate()
        server.wait(timeout=10)
