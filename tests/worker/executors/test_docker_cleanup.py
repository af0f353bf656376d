"""Docker cleanup's idempotency, fast: an engine stand-in that says "already gone" or
"already being removed" the way the real API does (status codes, no wording relied on)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import docker.errors
import pytest
import requests

from worker.executors.contract import InfrastructureError, JobSpec
from worker.executors.docker import LABEL_JOB, LABEL_RUN, LABEL_WORKER, DockerExecutor


def _api_error(status: int) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    cls = docker.errors.NotFound if status == 404 else docker.errors.APIError
    return cls(f"{status}", response=response, explanation=f"status {status}")


class Engine:
    """Containers and networks of one job; removals scripted per id."""

    def __init__(self, job: JobSpec) -> None:
        labels = {LABEL_WORKER: job.worker_name, LABEL_RUN: job.run_id, LABEL_JOB: job.job}
        self.containers_ = [{"Id": "c1", "Labels": labels}, {"Id": "c2", "Labels": labels}]
        self.networks_ = [{"Id": "n1", "Labels": labels}]
        self.remove_container_errors: dict[str, list[int]] = {}
        self.remove_network_errors: dict[str, list[int]] = {}
        self.inspect_errors: list[int] = []
        self.removed: list[str] = []

    def containers(self, all: bool, filters: dict) -> list:
        return list(self.containers_)

    def networks(self, filters: dict) -> list:
        return list(self.networks_)

    def remove_container(self, container_id: str, force: bool, v: bool) -> None:
        errors = self.remove_container_errors.get(container_id) or []
        if errors:
            raise _api_error(errors.pop(0))
        self.removed.append(container_id)

    def remove_network(self, network_id: str) -> None:
        errors = self.remove_network_errors.get(network_id) or []
        if errors:
            raise _api_error(errors.pop(0))
        self.removed.append(network_id)

    def inspect_container(self, container_id: str) -> dict:
        if self.inspect_errors:
            raise _api_error(self.inspect_errors.pop(0))
        return {"State": {}}


@pytest.fixture
def job(tmp_path: Path) -> JobSpec:
    (tmp_path / "ws").mkdir()
    return JobSpec(run_id="r1", job="j", workspace=tmp_path / "ws", worker_name="w1")


def executor_on(engine: Engine, tmp_path: Path) -> DockerExecutor:
    return DockerExecutor(SimpleNamespace(api=engine), scripts_root=tmp_path / "jobs")


def test_not_found_anywhere_in_cleanup_is_success(job, tmp_path) -> None:
    engine = Engine(job)
    engine.remove_container_errors = {"c1": [404]}
    engine.remove_network_errors = {"n1": [404]}
    executor = executor_on(engine, tmp_path)
    executor._dirs.ensure(job)  # the scripts directory a prepared job has
    executor.cleanup(job)
    assert engine.removed == ["c2"]
    assert list((tmp_path / "jobs").iterdir()) == []


def test_a_removal_already_in_progress_elsewhere_is_waited_for_not_failed(job, tmp_path) -> None:
    engine = Engine(job)
    engine.remove_container_errors = {"c1": [409]}
    engine.inspect_errors = [404]  # the other remover finished
    executor_on(engine, tmp_path).cleanup(job)


def test_a_network_still_holding_an_endpoint_is_retried(job, tmp_path) -> None:
    engine = Engine(job)
    engine.remove_network_errors = {"n1": [403, 409]}
    executor_on(engine, tmp_path).cleanup(job)
    assert "n1" in engine.removed


def test_real_failures_are_reported_after_removing_everything_else(job, tmp_path) -> None:
    engine = Engine(job)
    engine.remove_container_errors = {"c1": [500]}
    executor = executor_on(engine, tmp_path)
    executor._dirs.ensure(job)
    with pytest.raises(InfrastructureError):
        executor.cleanup(job)
    assert engine.removed == ["c2", "n1"]  # the others went anyway
    assert list((tmp_path / "jobs").iterdir()) == []
