"""Stores for the artifact tests: a filesystem store per test, and an S3 store per test on a
bucket of its own in a session-wide `moto_server` (fails, never skips, when it cannot start)."""
from __future__ import annotations

from pathlib import Path

import pytest

from shared.artifacts import open_store
from shared.artifacts.filesystem import FilesystemStore
from shared.artifacts.s3 import S3Store
from tests.services import TEST_PART_SIZE

FAST_RETRY = {"retries": 2, "backoff": 0.001}


@pytest.fixture
def s3_store(s3_endpoint: str, s3_bucket: str) -> S3Store:
    store = open_store(f"s3://{s3_bucket}/artifacts", endpoint_url=s3_endpoint, part_size=TEST_PART_SIZE,
                       **FAST_RETRY)
    assert isinstance(store, S3Store)
    return store


@pytest.fixture
def fs_store(tmp_path: Path) -> FilesystemStore:
    store = open_store((tmp_path / "store").as_uri(), **FAST_RETRY)
    assert isinstance(store, FilesystemStore)
    return store


@pytest.fixture(params=["filesystem", pytest.param("s3", marks=pytest.mark.services)])
def store(request: pytest.FixtureRequest):
    """Each backend in turn: the contract tests must pass on both."""
    if request.param == "filesystem":
        return request.getfixturevalue("fs_store")
    return request.getfixturevalue("s3_store")
