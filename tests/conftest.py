"""Session-wide real services shared by every test directory."""
from __future__ import annotations

import os
import uuid
from typing import Iterator

import pytest

from tests.api_server import Server, serving
from tests.services import ensure_busybox_image, start_moto, start_redis


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis:// URL of a redis-server started for this test session."""
    proc, port = start_redis(tmp_path_factory.mktemp("redis"))
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def docker_client():
    """A client of the local engine; errors (so the test FAILS) when none answers."""
    from worker.executors.docker import connect

    return connect()


@pytest.fixture(scope="session")
def busybox_image(docker_client) -> str:
    return ensure_busybox_image(docker_client)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a moto S3 server started for this session, with dummy credentials set."""
    try:
        proc, port = start_moto(tmp_path_factory.mktemp("moto"))
    except RuntimeError as exc:
        pytest.fail(str(exc))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.delenv("AWS_PROFILE", raising=False)
        yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh bucket on the session's S3 server."""
    from shared.artifacts.s3 import make_client

    name = f"conveyor-test-{uuid.uuid4().hex[:12]}"
    make_client(s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def as_root() -> None:
    """For tests of what only a root worker does: they FAIL, never skip, elsewhere (CI runs
    the suite as root)."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root, as CI runs it (bash .ci/run)")


@pytest.fixture
def server(tmp_path) -> Iterator[Server]:
    """A running `conveyor server` over a SQLite store with one run (tests/api_server.py)."""
    with serving(tmp_path) as running:
        yield running
