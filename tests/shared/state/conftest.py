"""Fixtures for the state store tests: a real redis-server per session, a store per backend."""
from __future__ import annotations

from typing import Iterator

import pytest
import redis

from shared.state import StateStore, open_state

@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite file for the session: tests use fresh run ids, and a new file per test
    would cost more than the test itself."""
    return f"sqlite:///{tmp_path_factory.mktemp('sqlite')}/state.db"


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.services)])
def store_url(request: pytest.FixtureRequest) -> str:
    """The URL of a state store, once per backend (Redis is flushed before each test)."""
    if request.param == "redis":
        request.getfixturevalue("redis_client")
        return request.getfixturevalue("redis_url")
    return request.getfixturevalue("sqlite_url")


@pytest.fixture
def store(store_url: str) -> Iterator[StateStore]:
    state = open_state(store_url)
    yield state
    state.close()


