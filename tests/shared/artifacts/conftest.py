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


@pytest.fixture(params=["filesystem", pytest.param("s3", marks=pytest.mark.slow)])
def store(request: pytest.FixtureRequest):
    """Each backend in turn: the contract tests must pass on both."""
    if request.param == "filesystem":
        return request.getfixturevalue("fs_store")
    return request.getfixturevalue("s3_store")


def corrupt(store, digest: str) -> None:
    """Flip one byte of a stored object behind the store's back (bit rot, a bad disk, a bad copy)."""
    if isinstance(store, FilesystemStore):
        path = store.root / "cas" / digest[:2] / digest[2:4] / digest
        path.chmod(0o644)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        key = store._key(digest)
        data = bytearray(store.client.get_object(Bucket=store.bucket, Key=key)["Body"].read())
        data[len(data) // 2] ^= 0xFF
        store.client.put_object(Bucket=store.bucket, Key=key, Body=bytes(data))


def leftovers(store) -> list[str]:
    """What an interrupted or rejected upload left behind: temp files, or open multipart uploads."""
    if isinstance(store, FilesystemStore):
        return sorted(p.name for p in (store.root / "tmp").iterdir())
    uploads = store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    return sorted(u["Key"] for u in uploads)
