"""Fixtures of the e2e tests: a real cluster per test (tests/cluster.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.cluster import Cluster, running_cluster


@pytest.fixture(params=["docker"])
def executor(request: pytest.FixtureRequest) -> str:
    if request.param == "docker":
        request.getfixturevalue("busybox_image")
    return request.param


@pytest.fixture
def cluster(tmp_path: Path, executor: str) -> Iterator[Cluster]:
    with running_cluster(tmp_path, executor) as cluster:
        yield cluster
