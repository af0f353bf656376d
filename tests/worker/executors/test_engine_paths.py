"""The worker's data directory as the Docker engine sees it (slow: real engine).

A containerised worker whose data directory is not mounted at the same path on the host
is simulated with a private mount namespace (``unshare --mount``): inside it a tmpfs
covers the directory, so this process and the engine see different files there, exactly
as a worker container without the bind mount would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from worker.executors.docker import DockerExecutor
from worker.executors.engine_paths import check_engine_sees

pytestmark = pytest.mark.services  # the real Docker engine

REPO = Path(__file__).resolve().parents[3]


def _in_private_mount_namespace(script: str, covered: Path) -> subprocess.CompletedProcess[str]:
    """Run python ``script`` with a fresh tmpfs over ``covered``, seen by it alone."""
    covered.mkdir(parents=True, exist_ok=True)
    shell = f"mount -t tmpfs tmpfs {covered} && exec {sys.executable} -c \"$0\""
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", shell, textwrap.dedent(script)],
        capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_a_directory_the_engine_shares_passes_and_leaves_no_marker(docker_client, tmp_path):
    data_dir = tmp_path / "data"
    check_engine_sees(docker_client.api, data_dir)
    check_engine_sees(docker_client.api, data_dir)  # safe to call again
    assert list(data_dir.iterdir()) == []
    assert docker_client.containers.list(all=True, filters={"label": "conveyor.probe"}) == []


def test_a_directory_the_engine_sees_differently_is_refused_naming_the_path(tmp_path):
    data_dir = tmp_path / "data"
    result = _in_private_mount_namespace(f"""
        from pathlib import Path
        import docker
        from worker.executors.contract import InfrastructureError
        from worker.executors.engine_paths import check_engine_sees
        try:
            check_engine_sees(docker.from_env().api, Path({str(data_dir)!r}))
        except InfrastructureError as exc:
            print("REFUSED", exc)
        else:
            print("ACCEPTED")
    """, covered=data_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("REFUSED"), result.stdout
    assert str(data_dir) in result.stdout
    assert "CONVEYOR_HOST_DATA_DIR" in result.stdout  # the hint says how to fix it
    assert len(result.stdout.strip().splitlines()) == 1


def test_a_directory_missing_on_the_engines_host_is_refused(tmp_path):
    covered = tmp_path / "private"
    data_dir = covered / "data"  # exists only inside the namespace's tmpfs
    result = _in_private_mount_namespace(f"""
        from pathlib import Path
        import docker
        from worker.executors.contract import InfrastructureError
        from worker.executors.engine_paths import check_engine_sees
        try:
            check_engine_sees(docker.from_env().api, Path({str(data_dir)!r}))
        except InfrastructureError as exc:
            print("REFUSED", exc)
    """, covered=covered)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("REFUSED the Docker engine cannot mount the data directory"), result.stdout
    assert str(data_dir) in result.stdout


def test_a_step_whose_directories_the_engine_lacks_is_infrastructure_not_script_failure(
    tmp_path, busybox_image
):
    covered = tmp_path / "private"
    result = _in_private_mount_namespace(f"""
        from pathlib import Path
        from worker.executors import select_executor
        from worker.executors.contract import InfrastructureError, JobSpec, StepSpec
        data = Path({str(covered / 'data')!r})
        workspace = data / "workspaces" / "w"
        workspace.mkdir(parents=True)
        executor = select_executor("docker", data)
        job = JobSpec(run_id="r-paths", job="j", workspace=workspace, worker_name="w-paths")
        step = StepSpec(index=0, name="s", image={busybox_image!r}, script=("echo hi",))
        try:
            handle = executor.start(job, step)
            print("OUTCOME", executor.wait(handle).reason)
        except InfrastructureError as exc:
            print("INFRASTRUCTURE", exc)
        finally:
            executor.cleanup(job)
    """, covered=covered)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("INFRASTRUCTURE"), result.stdout


def test_the_docker_executor_keeps_job_directories_under_the_data_dir(docker_client, tmp_path):
    from worker.executors import select_executor
    from worker.executors.contract import JobSpec

    executor = select_executor("docker", tmp_path / "data")
    assert isinstance(executor, DockerExecutor)
    workspace = tmp_path / "data" / "workspaces" / "w"
    workspace.mkdir(parents=True)
    job = JobSpec(run_id="r", job="j", workspace=workspace, worker_name="w")
    executor.prepare(job)
    try:
        assert [p.parent for p in (tmp_path / "data" / "jobs").iterdir()] == [tmp_path / "data" / "jobs"]
    finally:
        executor.cleanup(job)


def test_worker_refuses_to_start_when_the_engine_cannot_see_its_data_dir(tmp_path, redis_url):
    data_dir = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": str(REPO), "CONVEYOR_BROKER_URL": redis_url,
           "CONVEYOR_DATA_DIR": str(data_dir), "CONVEYOR_EXECUTOR": "docker"}
    data_dir.mkdir()
    shell = (f"mount -t tmpfs tmpfs {data_dir} && cd {REPO} && exec {sys.executable} -m coordinator worker "
             "--concurrency 1")
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", shell],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    message = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(message) == 1, result.stderr
    assert str(data_dir) in message[0] and "different directory" in message[0]

