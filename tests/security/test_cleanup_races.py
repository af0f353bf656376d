"""Cleanup is idempotent: twenty jobs of one worker ending at once leave nothing behind.

Race: 20 jobs (a 20-way matrix's worth) run a step each on one Docker executor, then all
clean up at the same moment, while a restarted instance of the same worker reaps its
"orphans" (the same containers and networks) and each job's cleanup runs twice. Anything
another remover got to first is success, never an error; afterwards no container, no
network and no job directory of that worker is left.
"""
from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import pytest

from worker.executors.contract import JobSpec, StepSpec
from worker.executors.docker import LABEL_WORKER, DockerExecutor


JOBS = 20


@pytest.mark.slow
def test_twenty_jobs_finishing_at_once_leave_nothing(tmp_path: Path, docker_client, busybox_image) -> None:
    worker = f"races-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    executor = DockerExecutor(docker_client, scripts_root=tmp_path / "jobs")
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    jobs = []
    for n in range(JOBS):
        workspace = tmp_path / "workspaces" / f"shard-{n}"
        workspace.mkdir(parents=True)
        jobs.append(JobSpec(run_id=run_id, job=f"shard[N={n}]", workspace=workspace, worker_name=worker,
                            kill_grace=1))
    errors: list[BaseException] = []
    ready = threading.Barrier(JOBS + 1)

    def one_job(job: JobSpec, index: int) -> None:
        try:
            executor.prepare(job)
            # Half still running when the cleanups come (cleanup must stop them).
            script = ("sleep 30",) if index % 2 else ("true",)
            handle = executor.start(job, StepSpec(0, "s", busybox_image, script))
            if index % 2 == 0:
                executor.wait(handle)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)
        ready.wait()
        try:
            executor.cleanup(job)
            executor.cleanup(job)  # again: must not fail
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=one_job, args=(job, n)) for n, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    ready.wait()
    # A restart of the same worker reaping at the same moment: it removes the same things.
    restarted = DockerExecutor(docker_client, scripts_root=tmp_path / "other-jobs")
    try:
        restarted.reap_orphans(worker)
    except BaseException as exc:  # noqa: BLE001
        errors.append(exc)
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    label = {"label": f"{LABEL_WORKER}={worker}"}
    assert docker_client.containers.list(all=True, filters=label) == []
    assert docker_client.networks.list(filters=label) == []
    assert list((tmp_path / "jobs").iterdir()) == []


def test_cleanup_of_a_job_that_never_started_and_of_an_unknown_job_succeeds(tmp_path: Path, docker_client) -> None:
    executor = DockerExecutor(docker_client, scripts_root=tmp_path / "jobs")
    (tmp_path / "ws").mkdir()
    job = JobSpec(run_id=f"run-{uuid.uuid4().hex[:8]}", job="never", workspace=tmp_path / "ws",
                  worker_name=f"races-{uuid.uuid4().hex[:6]}")
    executor.cleanup(job)  # nothing prepared
    executor.prepare(job)
    # Someone (an operator, another worker's reaper) removed the network meanwhile.
    for network in docker_client.networks.list(filters={"label": f"{LABEL_WORKER}={job.worker_name}"}):
        network.remove()
    executor.cleanup(job)
    executor.cleanup(job)
    assert list((tmp_path / "jobs").iterdir()) == []
