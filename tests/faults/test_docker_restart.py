"""The Docker engine restarted mid-job: the attempt ends `infrastructure`, the retry succeeds."""
from __future__ import annotations

import time
from typing import Iterator

import docker
import pytest

from shared.state.base import RUNNING
from shared.state.redis import RedisState
from tests.faults.dockerd import OwnDockerd

pytestmark = pytest.mark.slow


@pytest.fixture
def own_dockerd() -> Iterator[OwnDockerd]:
    engine = OwnDockerd()
    try:
        engine.start()
        engine.import_busybox()
        yield engine
    finally:
        engine.remove()


def test_docker_engine_restart_mid_job_is_retried_as_infrastructure(fault_cluster, fault, own_dockerd) -> None:
    fault.fault = "Docker engine restarted mid-job (SIGTERM dockerd, start again)"
    cluster = fault_cluster
    cluster.worker("w1", concurrency=1, CONVEYOR_EXECUTOR="docker", DOCKER_HOST=own_dockerd.host)
    pipeline = cluster.pipeline("""
        name: engine
        retry_policy: {backoff_base: 2, backoff_max: 4}
        jobs:
          build:
            image: conveyor-test/busybox
            steps: [{name: s, script: ["echo started", "sleep 8", "echo finished"]}]
          after: {depends_on: [build], image: conveyor-test/busybox, steps: [{name: s, script: ["echo after"]}]}
    """)
    run_id = cluster.submit(pipeline)
    engine = docker.DockerClient(base_url=own_dockerd.host, timeout=10)
    store = RedisState(cluster.redis_url)
    try:
        deadline = time.monotonic() + 60
        while not (store.get_jobs(run_id, ["build"])["build"].status == RUNNING
                   and engine.containers.list(filters={"label": f"conveyor.run={run_id}"})):
            assert time.monotonic() < deadline, "the step's container never started"
            time.sleep(0.1)
    finally:
        store.close()
    time.sleep(1)
    own_dockerd.stop()
    own_dockerd.start()
    fault.injected = 1
    status = cluster.wait(run_id, timeout=90)
    build = status["jobs"]["build"]
    reasons = [a["reason"] for a in build["attempt_history"]]
    log = cluster.logs(run_id, "build")
    fault.note(f"run {status['status']}; build attempts: {reasons}")
    assert status["status"] == "success", log
    assert reasons[0] == "infrastructure" and reasons[-1] is None, reasons
    assert "infrastructure error" in log or "infrastructure" in log
    assert log.count("finished") >= 1
