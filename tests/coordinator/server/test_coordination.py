"""The servers' shared keys behave the same over Redis and the embedded SQLite file."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from coordinator.server.coordination import MAX_NOTES, Coordination, claim, open_coordination


@pytest.fixture(params=["sqlite", "redis"])
def coordination(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordination]:
    if request.param == "sqlite":
        yield open_coordination(f"sqlite:///{tmp_path / 'state.db'}")
    else:
        url = request.getfixturevalue("redis_url")
        import redis

        redis.Redis.from_url(url).flushdb()
        yield open_coordination(url)


def test_remember_keeps_the_first_value_and_answers_it(coordination: Coordination) -> None:
    assert coordination.remember("k", "first", 60) is None
    assert coordination.remember("k", "second", 60) == "first"
    assert coordination.get("k") == "first"
    coordination.put("k", "replaced")
    assert coordination.remember("k", "third", 60) == "replaced"
    coordination.delete("k")
    assert coordination.get("k") is None and coordination.remember("k", "fourth", 60) is None


def test_remembered_keys_expire(coordination: Coordination) -> None:
    assert coordination.remember("short", "x", 0.2) is None
    time.sleep(0.35)
    assert coordination.get("short") is None
    assert coordination.remember("short", "y", 60) is None


def test_only_one_of_many_concurrent_claims_wins(coordination: Coordination) -> None:
    wins: list[bool] = []
    barrier = threading.Barrier(8)

    def contend() -> None:
        barrier.wait()
        wins.append(claim(coordination, "tick", 60))

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(wins) == [False] * 7 + [True]


def test_sets_and_notes(coordination: Coordination) -> None:
    coordination.add("watched", "a")
    coordination.add("watched", "a")
    coordination.add("watched", "b")
    coordination.discard("watched", "a")
    assert coordination.members("watched") == {"b"}
    for n in range(MAX_NOTES + 5):
        coordination.note("run-1", {"kind": "k", "n": n})
    notes = coordination.notes("run-1")
    assert len(notes) == MAX_NOTES and notes[0]["n"] == 5 and notes[-1]["n"] == MAX_NOTES + 4
    assert all("at" in note for note in notes)
    assert coordination.notes("run-2") == []
