"""Session-wide real services shared by every test directory, and the `services` marker.

Markers (pyproject.toml): `services` = needs a real external service (redis-server, the
Docker engine, a moto S3 server, HAProxy, compose); `slow` = takes more than a few seconds.
`-m "not services and not slow"` is the fast set and needs nothing running.
"""
from __future__ import annotations

import os
import uuid
from typing import Iterator

import pytest

from tests.api_server import Server, serving
from tests.services import ensure_busybox_image, start_moto, start_redis

# Fixtures that start (or connect to) a real service, here or in a directory's conftest or
# a test module: a test whose fixture closure holds one is marked `services` below, and so
# is a test given a fixture parameter in SERVICE_PARAMS (a backend fixture that picks the
# service with `request.getfixturevalue`, which no closure shows). Tests that start a
# service in their own body carry `pytest.mark.services` themselves.
SERVICE_FIXTURES = frozenset({
    "redis_url",            # tests/conftest.py: redis-server for the session
    "docker_client",        # tests/conftest.py: the local Docker engine
    "busybox_image",        # tests/conftest.py: image imported into that engine
    "s3_endpoint",          # tests/conftest.py: moto S3 server
    "s3_bucket",            # tests/conftest.py
    "haproxy",              # tests/deploy/conftest.py
    "haproxy_with_web1",    # tests/security/test_pipeline_environments.py
    "cluster",              # tests/e2e/conftest.py and modules: redis-server + workers
    "fault_cluster",        # tests/faults/conftest.py
    "reaping_cluster",      # tests/worker/test_reaper.py
    "broker_url",           # tests/worker/test_reaper.py: redis-server of the module
    "own_dockerd",          # tests/faults/test_docker_restart.py
    "tls_redis",            # tests/e2e/test_tls.py
    "multihost",            # tests/e2e/test_multihost.py
    "cluster_with_flower",  # tests/e2e/test_flower_outcomes.py
})


SERVICE_PARAMS = frozenset({"redis", "s3", "docker"})


def _fixture_params(item: pytest.Item) -> list[object]:
    """The values of the item's fixture parameters (not of its own `parametrize` arguments)."""
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return []
    direct: set[str] = set()
    for mark in item.iter_markers("parametrize"):
        names = mark.kwargs.get("argnames", mark.args[0] if mark.args else ())
        direct.update(n.strip() for n in (names.split(",") if isinstance(names, str) else names))
    return [value for name, value in callspec.params.items() if name not in direct]


def _needs_services(item: pytest.Item) -> bool:
    if SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        return True
    return any(isinstance(v, str) and v in SERVICE_PARAMS for v in _fixture_params(item))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _needs_services(item):
            item.add_marker(pytest.mark.services)


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
