"""One network per job: a job cannot reach another job's containers, not even by IP.

Attack: job A listens on a port (`nc -l -p 8080`); job B, on the same worker at the same
time, connects to A's IP address. On Docker's default bridge that works (shown by the
control at the end, the old default); with a network per job it must not. A second step of
job A, started while the listener runs, does reach it: the probe itself works.
"""
from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.worker.executors.contract_suite import drive
from worker.executors.contract import ISOLATED_NETWORK, JobSpec, StepSpec
from worker.executors.docker import LABEL_WORKER, DockerExecutor


PORT = 8080
PROBE = (f'if echo hello | nc -w 3 "$TARGET" {PORT}; then echo PROBE=reached; '
         'else echo PROBE=blocked; fi')


def _job(tmp_path: Path, name: str, worker: str, network: str = ISOLATED_NETWORK) -> JobSpec:
    workspace = tmp_path / name
    workspace.mkdir()
    return JobSpec(run_id=f"run-{uuid.uuid4().hex[:8]}", job=name, workspace=workspace, worker_name=worker,
                   network=network, kill_grace=1)


class Listener:
    """A step that prints its IP address, then accepts one connection and prints what came."""

    def __init__(self, executor: DockerExecutor, job: JobSpec, image: str) -> None:
        self.lines: list[str] = []
        self.handle = executor.start(job, StepSpec(0, "listen", image, (
            "hostname -i", f"nc -l -p {PORT}", "echo listener-done"), timeout=60))
        self._executor = executor
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self._executor.tail(self.handle):
            self.lines.append(line.text)

    def address(self) -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = [t for t in self.lines if t.count(".") == 3 and t.replace(".", "").isdigit()]
            if found:
                time.sleep(1.0)  # let nc bind after it printed the address
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"the listener printed no address: {self.lines}")


def probe(executor: DockerExecutor, job: JobSpec, image: str, target: str, index: int = 0) -> str:
    result = drive(executor, job, StepSpec(index, "probe", image, (PROBE,), env={"TARGET": target},
                                           timeout=30))
    verdict = [t for t in result.stdout if t.startswith("PROBE=")]
    assert verdict, result.lines
    return verdict[0]


def _networks(docker_client, worker: str) -> list:
    return docker_client.networks.list(filters={"label": f"{LABEL_WORKER}={worker}"})


@pytest.mark.slow
def test_a_job_cannot_reach_another_jobs_container_by_ip(tmp_path, docker_client, busybox_image) -> None:
    worker = f"netiso-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    executor = DockerExecutor(docker_client, scripts_root=tmp_path / "jobs")
    victim, attacker = _job(tmp_path, "victim", worker), _job(tmp_path, "attacker", worker)
    for job in (victim, attacker):
        executor.prepare(job)
    try:
        networks = _networks(docker_client, worker)
        assert len(networks) == 2  # one each, labelled like the containers
        assert {n.attrs["Labels"]["conveyor.job"] for n in networks} == {"victim", "attacker"}
        listener = Listener(executor, victim, busybox_image)
        address = listener.address()
        assert probe(executor, attacker, busybox_image, address) == "PROBE=blocked"
        # Control: the same probe from the victim's own network gets through.
        assert probe(executor, victim, busybox_image, address, index=1) == "PROBE=reached"
        executor.wait(listener.handle)
        assert "hello" in listener.lines
    finally:
        executor.cleanup(victim)
        executor.cleanup(attacker)
    assert _networks(docker_client, worker) == []  # removed with their jobs


def test_on_the_shared_default_bridge_the_same_probe_gets_through(tmp_path, docker_client,
                                                                  busybox_image) -> None:
    """The attack as it was: proves the probe above detects a reachable port."""
    worker = f"netold-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    executor = DockerExecutor(docker_client, scripts_root=tmp_path / "jobs")
    victim = _job(tmp_path, "victim", worker, network="bridge")
    attacker = _job(tmp_path, "attacker", worker, network="bridge")
    try:
        listener = Listener(executor, victim, busybox_image)
        assert probe(executor, attacker, busybox_image, listener.address()) == "PROBE=reached"
    finally:
        executor.cleanup(victim)
        executor.cleanup(attacker)


def test_network_none_gives_steps_no_network_at_all(tmp_path, docker_client, busybox_image) -> None:
    worker = f"netnone-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    executor = DockerExecutor(docker_client, scripts_root=tmp_path / "jobs")
    job = _job(tmp_path, "offline", worker, network="none")
    executor.prepare(job)
    try:
        result = drive(executor, job, StepSpec(0, "s", busybox_image, ("ls /sys/class/net",)))
    finally:
        executor.cleanup(job)
    assert result.stdout[1:] == ["lo"]
    assert _networks(docker_client, worker) == []  # no network of its own was made
