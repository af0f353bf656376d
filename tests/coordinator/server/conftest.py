"""Fixtures of the server's integration tests: a cluster shared by a module, and a CI
installation (forge repository, recording forge, configured server) per test."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.cluster import Cluster, running_cluster
from tests.coordinator.server.ci_fixture import CI, ForgeRepo, serving_ci
from tests.forge_recorder import recording_forge


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("ci-cluster"), "local") as running:
        running.worker("w1", concurrency=2, CONVEYOR_SECRET_DEPLOY_KEY="worker-secret-value")
        yield running


@pytest.fixture
def ci(tmp_path: Path, cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[CI]:
    repo = ForgeRepo.create(tmp_path / "forge")
    with recording_forge() as forge, serving_ci(tmp_path, cluster, forge, repo, monkeypatch) as running:
        yield running
