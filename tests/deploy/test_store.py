"""The deployment store contract, on SQLite and on Redis."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator

import pytest

from deploy.record import ABORTED
from deploy.store import deploy_store_for, open_deploy_store
from deploy.store.base import DeployStore


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.services)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DeployStore]:
    if request.param == "redis":
        import redis

        url = request.getfixturevalue("redis_url")
        redis.Redis.from_url(url).flushdb()
    else:
        url = f"sqlite:///{tmp_path / 'state.db'}"
    deploys = open_deploy_store(url)
    yield deploys
    deploys.close()


def record(run: str = "run-1", job: str = "release", **fields) -> dict:
    return {"run_id": run, "job": job, "seq": 0, "state": "progressing", "next_tick_at": 1000, **fields}


def test_create_is_once_and_save_is_compare_and_set(store: DeployStore) -> None:
    assert store.create(record())
    assert not store.create(record(state="other"))
    rec, version = store.load("run-1", "release")
    assert (rec["state"], version) == ("progressing", 1)
    assert store.save({**rec, "seq": 1}, version)
    assert not store.save({**rec, "seq": 99}, version)  # a second writer of the same version loses
    rec, version = store.load("run-1", "release")
    assert (rec["seq"], version) == (1, 2)
    assert store.load("run-1", "other") is None
    assert store.jobs("run-1") == ["release"]


def test_the_active_index_drives_the_watchdog(store: DeployStore) -> None:
    store.create(record(job="a", next_tick_at=1_000))
    store.create(record(job="b", next_tick_at=50_000))
    assert store.overdue(now_ms=10_000, grace_ms=5_000, bump_ms=10_000) == [("run-1", "a")]
    # bumped: the next watchdog pass does not re-enqueue it again at once
    assert store.overdue(now_ms=12_000, grace_ms=5_000, bump_ms=10_000) == []
    assert sorted(store.overdue(now_ms=60_000, grace_ms=5_000, bump_ms=10_000)) == [("run-1", "a"), ("run-1", "b")]
    rec, version = store.load("run-1", "a")
    store.save({**rec, "state": ABORTED}, version)  # finished: leaves the index
    assert store.overdue(now_ms=10**9, grace_ms=0, bump_ms=0) == [("run-1", "b")]


def test_lock_is_exclusive_until_released_or_expired(store: DeployStore) -> None:
    assert store.lock("run-1", "release", "w1", 10_000)
    assert not store.lock("run-1", "release", "w2", 10_000)
    assert store.refresh_lock("run-1", "release", "w1", 10_000)
    assert not store.refresh_lock("run-1", "release", "w2", 10_000)
    store.unlock("run-1", "release", "w2")  # not the owner: no effect
    assert not store.lock("run-1", "release", "w2", 10_000)
    store.unlock("run-1", "release", "w1")
    assert store.lock("run-1", "release", "w2", 50)
    import time

    time.sleep(0.1)
    assert store.lock("run-1", "release", "w3", 10_000)


def test_one_winner_when_many_threads_lock(store: DeployStore) -> None:
    winners: list[str] = []
    barrier = threading.Barrier(8)

    def attempt(owner: str) -> None:
        barrier.wait()
        if store.lock("run-1", "x", owner, 10_000):
            winners.append(owner)

    threads = [threading.Thread(target=attempt, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1


def test_commands_are_append_only_and_read_from_a_position(store: DeployStore) -> None:
    store.add_command("run-1", "release", {"type": "abort", "by": "a"})
    store.add_command("run-1", "release", {"type": "rollback", "by": "b"})
    assert [c["type"] for c in store.commands("run-1", "release", 0)] == ["abort", "rollback"]
    assert [c["by"] for c in store.commands("run-1", "release", 1)] == ["b"]
    assert store.commands("run-1", "release", 2) == []
    assert store.commands("run-1", "other", 0) == []


def test_first_gate_answer_wins(store: DeployStore) -> None:
    first = store.answer_gate("run-1", "go-live", {"decision": "approve", "by": "alice", "at": "t1"})
    second = store.answer_gate("run-1", "go-live", {"decision": "reject", "by": "bob", "at": "t2"})
    assert first == second == {"decision": "approve", "by": "alice", "at": "t1"}
    assert store.gate_answers("run-1") == {"go-live": first}
    assert store.gate_answers("run-2") == {}


def test_environment_records_are_compare_and_set(store: DeployStore) -> None:
    assert store.load_env("k") is None
    assert store.save_env("k", {"owner": "a"}, 0)
    assert not store.save_env("k", {"owner": "b"}, 0)
    env, version = store.load_env("k")
    assert env == {"owner": "a"} and version == 1
    assert store.save_env("k", {"owner": None}, 1)
    assert not store.save_env("k", {"owner": "c"}, 1)


def test_the_store_of_an_open_state_store_shares_its_backend(tmp_path: Path) -> None:
    from shared.state import open_state

    state = open_state(f"sqlite:///{tmp_path / 'state.db'}")
    deploys = deploy_store_for(state)
    deploys.create(record())
    assert open_deploy_store(f"sqlite:///{tmp_path / 'state.db'}").load("run-1", "release") is not None
    with pytest.raises(ValueError):
        open_deploy_store("mysql://x")
