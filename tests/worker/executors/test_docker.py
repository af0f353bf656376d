"""The Docker executor against the real engine (slow: they FAIL when no engine answers)."""

from __future__ import annotations

import logging
import subprocess
import uuid
from dataclasses import replace
from pathlib import Path

import docker
import docker.errors
import pytest

from shared.hardening import DEFAULT_CAP_DROP
from tests.worker.executors.contract_suite import Contract, drive
from worker.executors import select_executor
from worker.executors.contract import InfrastructureError, ResourceLimits, StepSpec
from worker.executors.docker import (
    LABEL_JOB,
    LABEL_RUN,
    LABEL_STEP,
    LABEL_WORKER,
    DockerExecutor,
)

NET_RAW_BIT = 13  # CAP_NET_RAW in linux/capability.h


@pytest.fixture
def executor(docker_client, tmp_path: Path) -> DockerExecutor:
    return DockerExecutor(docker_client, scripts_root=tmp_path / "jobs")


@pytest.fixture
def image(busybox_image: str) -> str:
    return busybox_image


class TestDockerContract(Contract):
    pass


def _run_label_containers(client, run_id: str) -> list:
    return client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={run_id}"})


def _worker_networks(client, worker: str) -> list:
    return client.networks.list(filters={"label": f"{LABEL_WORKER}={worker}"})


def test_memory_limit_kill_is_reported_as_oom(run, step):
    result = run(step("dd if=/dev/zero of=/dev/null bs=64M count=1",
                      limits=ResourceLimits(memory_bytes=32 * 2**20)))
    assert result.outcome.reason == "oom"
    assert result.outcome.exit_code == 137


def test_hardening_is_visible_from_inside_the_step(executor, job, step, docker_client):
    executor.prepare(job)
    try:
        handle = executor.start(job, step(
            "grep NoNewPrivs /proc/self/status",
            "grep CapBnd /proc/self/status",
            "cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max",
            "if touch /conveyor/scripts/x 2>/dev/null; then echo scripts-writable; "
            "else echo scripts-read-only; fi",
            limits=ResourceLimits(memory_bytes=96 * 2**20, cpus=0.5, pids=77),
        ))
        lines = [line.text for line in executor.tail(handle) if line.stream == "stdout"]
        outcome = executor.wait(handle)
        host = docker_client.api.inspect_container(handle.container_id)["HostConfig"]
    finally:
        executor.cleanup(job)
    assert outcome.succeeded, lines
    assert "NoNewPrivs:\t1" in lines
    cap_bnd = int(next(t for t in lines if t.startswith("CapBnd:")).split()[1], 16)
    assert not cap_bnd & (1 << NET_RAW_BIT)
    assert "77" in lines
    assert "scripts-read-only" in lines
    assert host["Privileged"] is False
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert set(DEFAULT_CAP_DROP) <= set(host["CapDrop"])
    assert host["Memory"] == host["MemorySwap"] == 96 * 2**20
    assert host["NanoCpus"] == 500_000_000
    assert host["PidsLimit"] == 77
    assert host["Init"] is True


def test_read_only_root_keeps_tmp_writable_and_user_applies(run, step, job):
    locked = replace(job, read_only_root=True, user="1234:1234")
    result = run(step(
        "id -u",
        "if touch /rootfile 2>/dev/null; then echo root-writable; else echo root-read-only; fi",
        "touch /tmp/ok && echo tmp-writable",
    ), job_spec=locked)
    assert result.outcome.succeeded, result.lines
    assert result.stdout[1] == "1234"
    assert "root-read-only" in result.stdout and "tmp-writable" in result.stdout


def test_network_none_has_no_interfaces_but_loopback(run, step, job):
    offline = replace(job, network="none")
    result = run(step("ls /sys/class/net"), job_spec=offline)
    assert result.outcome.succeeded
    assert result.stdout[1:] == ["lo"]


def test_containers_are_labelled_and_cleanup_removes_them(executor, job, step, docker_client):
    executor.prepare(job)
    drive(executor, job, step("true", name="compile"))
    containers = _run_label_containers(docker_client, job.run_id)
    assert len(containers) == 1
    labels = containers[0].labels
    assert labels[LABEL_JOB] == job.job and labels[LABEL_STEP] == "compile"
    assert labels[LABEL_WORKER] == job.worker_name
    executor.cleanup(job)
    assert _run_label_containers(docker_client, job.run_id) == []


def test_cleanup_removes_a_still_running_step(executor, job, step, docker_client):
    executor.prepare(job)
    executor.start(job, step("sleep 30"))
    executor.cleanup(job)
    assert _run_label_containers(docker_client, job.run_id) == []


@pytest.mark.slow
def test_jobs_of_one_run_cleaned_up_together_leave_no_container(executor, docker_client, job, step):
    """Matrix jobs of one run often end at once on one worker: each cleanup lists the run's
    containers while the others remove theirs. Three rounds, since it is a race."""
    import threading

    for round_ in range(3):
        run = replace(job, run_id=f"{job.run_id}-{round_}")
        jobs = [replace(run, job=f"shard[{n}]") for n in range(8)]
        for each in jobs:
            executor.wait(executor.start(each, step("true")))
        errors: list[BaseException] = []
        barrier = threading.Barrier(len(jobs))

        def clean(each) -> None:
            barrier.wait()
            try:
                executor.cleanup(each)
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)

        threads = [threading.Thread(target=clean, args=(each,)) for each in jobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []
        assert _run_label_containers(docker_client, run.run_id) == []


def test_reap_orphans_removes_only_this_workers_leftovers(docker_client, job, step, tmp_path):
    previous_life = DockerExecutor(docker_client, scripts_root=tmp_path / "old")
    other_worker = replace(job, worker_name=f"other-{uuid.uuid4().hex[:6]}")
    orphan = previous_life.start(job, step("sleep 30"))
    bystander = previous_life.start(other_worker, step("sleep 30"))
    try:
        current = DockerExecutor(docker_client, scripts_root=tmp_path / "new")
        assert current.reap_orphans(job.worker_name) == 2  # the container and its job's network
        with pytest.raises(docker.errors.NotFound):
            docker_client.containers.get(orphan.container_id)
        assert _worker_networks(docker_client, job.worker_name) == []
        assert docker_client.containers.get(bystander.container_id).status == "running"
        assert len(_worker_networks(docker_client, other_worker.worker_name)) == 1
        assert current.reap_orphans(job.worker_name) == 0
    finally:
        previous_life.cleanup(other_worker)
        previous_life.cleanup(job)


def test_missing_image_with_pull_never_is_an_image_pull_failure(run, step, job):
    never = replace(job, pull_policy="never")
    missing = f"conveyor-test/absent-{uuid.uuid4().hex[:8]}:1"
    result = run(step("echo never", image=missing), job_spec=never)
    assert result.outcome.reason == "image_pull_failure"
    assert result.stdout == []
    assert any(missing in text for text in result.stderr)


def test_image_without_a_shell_fails_the_step_and_says_why(run, step, tmp_path):
    tag = f"conveyor-test/no-shell-{uuid.uuid4().hex[:8]}"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README").write_text("no shell here\n")
    tar = subprocess.Popen(["tar", "-C", str(tmp_path / "empty"), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(["docker", "import", "-", tag], stdin=tar.stdout, check=True, capture_output=True)
    tar.wait()
    try:
        result = run(step("true", image=tag))
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)
    assert result.outcome.reason == "script_failure"
    assert result.outcome.exit_code == 127
    assert any("/bin/sh" in text for text in result.stderr)


@pytest.mark.services
def test_select_without_a_name_picks_docker_when_the_engine_answers(caplog):
    caplog.set_level(logging.WARNING)
    assert isinstance(select_executor(None), DockerExecutor)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_unreachable_engine_is_an_infrastructure_error(job, tmp_path):
    dead = docker.DockerClient(base_url=f"unix://{tmp_path}/dead.sock", version="1.41")
    executor = DockerExecutor(dead, scripts_root=tmp_path / "jobs")
    with pytest.raises(InfrastructureError):
        executor.start(job, StepSpec(0, "s", "busybox", ("true",)))
    with pytest.raises(InfrastructureError):
        executor.cleanup(job)
    assert list((tmp_path / "jobs").iterdir()) == [], "cleanup left the scripts behind"


def test_a_numeric_user_gets_its_own_group_and_the_workspace(executor, job, step, tmp_path):
    (job.workspace / "src").mkdir()
    (job.workspace / "src" / "main.c").write_text("int main;\n")
    as_user = replace(job, user="1234")
    executor.prepare(as_user)
    try:
        result = drive(executor, as_user, step("id -u", "id -g", "echo built > src/out", "ls -n src"))
    finally:
        executor.cleanup(as_user)
    assert result.outcome.succeeded, result.lines
    assert result.stdout[1] == "1234" and result.stdout[3] == "1234"  # not gid 0
    assert (job.workspace / "src" / "out").stat().st_uid == 1234
    assert oct(job.workspace.stat().st_mode & 0o777) == "0o700"


def test_each_job_gets_its_own_labelled_network_removed_with_it(executor, job, step, docker_client):
    executor.prepare(job)
    result = drive(executor, job, step("true"))
    assert result.outcome.succeeded
    [network] = docker_client.networks.list(filters={"label": f"{LABEL_RUN}={job.run_id}"})
    assert network.attrs["Labels"][LABEL_JOB] == job.job and network.attrs["Labels"][LABEL_WORKER] == job.worker_name
    [container] = _run_label_containers(docker_client, job.run_id)
    assert list(container.attrs["NetworkSettings"]["Networks"]) == [network.name]
    executor.cleanup(job)
    assert docker_client.networks.list(filters={"label": f"{LABEL_RUN}={job.run_id}"}) == []
