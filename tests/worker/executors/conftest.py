"""Fixtures of the executor tests (the shared behaviour is contract_suite.py)."""
from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.worker.executors.contract_suite import Result, drive
from worker.executors.contract import Executor, JobSpec, StepSpec

@pytest.fixture
def kill_grace() -> float:
    """The jobs' kill grace; Docker takes whole seconds, a backend may go shorter."""
    return 1.0


@pytest.fixture
def short_timeout() -> float:
    """A step timeout for tests that wait for it to pass."""
    return 1.0


@pytest.fixture
def job(tmp_path: Path, kill_grace: float) -> JobSpec:
    """A job whose workspace is an empty temp directory."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    return JobSpec(
        run_id=f"run-{uuid.uuid4().hex[:8]}",
        job="test[PY=3.11]",
        workspace=workspace,
        worker_name=f"pytest-{uuid.uuid4().hex[:8]}",
        kill_grace=kill_grace,
    )


@pytest.fixture
def step(image: str) -> Callable[..., StepSpec]:
    """Makes a StepSpec from script lines, other fields as keywords."""
    counter = iter(range(1000))

    def make(*script: str, **fields) -> StepSpec:
        fields.setdefault("name", "step")
        fields.setdefault("image", image)
        fields.setdefault("timeout", 30.0)
        return StepSpec(index=next(counter), script=script, **fields)

    return make


@pytest.fixture
def run(executor: Executor, job: JobSpec) -> Iterator[Callable[..., Result]]:
    """Runs a step of ``job`` on ``executor``; cleans the job up afterwards."""

    def go(step: StepSpec, job_spec: JobSpec | None = None, during=None) -> Result:
        return drive(executor, job_spec or job, step, during)

    executor.prepare(job)
    yield go
    executor.cleanup(job)
