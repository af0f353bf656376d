"""The ArtifactIndex contract, run against both backends (SQLite fast, Redis marked slow)."""
from __future__ import annotations

import hashlib
from dataclasses import replace
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest
import redis

from shared.artifacts.index import ArtifactIndex, ArtifactRecord, UnknownRecord, open_index
from shared.artifacts.index import redis as redis_index_module
from shared.artifacts.index import sqlite as sqlite_index_module
from shared.artifacts.index.redis import RedisArtifactIndex
from shared.artifacts.index.sqlite import SQLiteArtifactIndex
from shared.state import JobMeta
from shared.state.sqlite import SQLiteState


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def rec(run_id: str = "run-1", job: str = "build", kind: str = "artifact", manifest: str = "m", **fields) -> ArtifactRecord:
    values = dict(name="dist", size=100, files=2, pipeline="web", created_at=1000.0, expire_at=None,
                  last_access=1000.0, holders=frozenset())
    values.update(fields)
    return ArtifactRecord(run_id=run_id, job=job, kind=kind, manifest=sha(manifest), **values)


def stored(record: ArtifactRecord, digests: list[str], index: ArtifactIndex) -> ArtifactRecord:
    """Reserve and complete `record` referencing the digests of `digests` (texts)."""
    index.reserve(record, [sha(d) for d in digests])
    index.complete(*record.key)
    return record


def counts(index: ArtifactIndex, *texts: str) -> list[int]:
    found = index.refcounts([sha(t) for t in texts])
    return [found[sha(t)] for t in texts]


@pytest.fixture
def sqlite_index(tmp_path: Path) -> Iterator[SQLiteArtifactIndex]:
    index = SQLiteArtifactIndex(str(tmp_path / "state.db"))
    yield index
    index.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()  # the session's server is shared with the state store tests
    yield client
    client.close()


@pytest.fixture
def redis_index(redis_url: str, redis_client: redis.Redis) -> Iterator[RedisArtifactIndex]:
    index = RedisArtifactIndex(redis_url)
    yield index
    index.close()


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.services)])
def index(request: pytest.FixtureRequest) -> ArtifactIndex:
    return request.getfixturevalue(f"{request.param}_index")


# -- records -----------------------------------------------------------------------------

def test_a_reservation_is_seen_by_the_collector_but_not_by_downloaders_until_complete(index):
    record = rec(holders=frozenset({"test", "deploy"}))
    assert index.reserve(record, [sha("a"), sha("b")]) == set()
    assert index.get("run-1") == []
    assert [(r.key, r.complete) for r in index.records()] == [(record.key, False)]
    index.complete("run-1", "build", "artifact")
    assert index.get("run-1") == [replace(record, complete=True)]
    assert [r.complete for r in index.records()] == [True]


def test_fields_round_trip_exactly(index):
    source = rec(job="", kind="source", created_at=1714567890.123456, last_access=1714567891.654321,
                 expire_at=1714571490.5, size=2 ** 40, files=12345, holders=frozenset({"a b", "ünïcode"}))
    stored(source, [], index)
    (got,) = index.get("run-1", "", "source")
    assert got == replace(source, complete=True)


def test_each_distinct_digest_counts_once_and_the_manifest_is_always_referenced(index):
    index.reserve(rec(manifest="m"), [sha("a"), sha("a"), sha("b")])  # no manifest given
    assert counts(index, "a", "b", "m", "unknown") == [1, 1, 1, 0]


def test_shared_objects_count_per_record_and_are_released_by_the_last_delete(index):
    stored(rec("run-1", manifest="m1"), ["a", "shared"], index)
    stored(rec("run-2", manifest="m2"), ["b", "shared"], index)
    assert counts(index, "a", "b", "shared", "m1", "m2") == [1, 1, 2, 1, 1]
    assert index.delete("run-1", "build", "artifact") == sorted([sha("a"), sha("m1")])
    assert counts(index, "shared") == [1]
    assert index.delete("run-2", "build", "artifact") == sorted([sha("b"), sha("m2"), sha("shared")])
    assert counts(index, "a", "b", "shared", "m1", "m2") == [0] * 5
    assert list(index.records()) == []


def test_deleting_an_unknown_record_does_nothing(index):
    stored(rec(), ["a"], index)
    assert index.delete("run-1", "build", "log") == []
    assert index.delete("run-9", "build", "artifact") == []
    assert counts(index, "a") == [1]


def test_re_reserving_a_key_replaces_its_references(index):
    stored(rec(manifest="m1"), ["old", "kept"], index)
    assert index.reserve(rec(manifest="m2", size=7), [sha("kept"), sha("new")]) == set()
    assert counts(index, "old", "m1", "kept", "new", "m2") == [0, 0, 1, 1, 1]
    # The replacement is a fresh reservation: invisible until completed again.
    assert index.get("run-1") == []
    index.complete("run-1", "build", "artifact")
    assert [r.size for r in index.get("run-1")] == [7]


def test_get_filters_by_job_and_kind_and_sorts(index):
    stored(rec(job="test", kind="log"), [], index)
    stored(rec(job="build", kind="log"), [], index)
    stored(rec(job="build", kind="artifact"), [], index)
    stored(rec(job="", kind="source"), [], index)
    stored(rec(run_id="run-2"), [], index)
    index.reserve(rec(job="lint"), [])  # incomplete: not listed
    assert [(r.job, r.kind) for r in index.get("run-1")] == [
        ("", "source"), ("build", "artifact"), ("build", "log"), ("test", "log")]
    assert [r.kind for r in index.get("run-1", "build")] == ["artifact", "log"]
    assert [r.job for r in index.get("run-1", kind="log")] == ["build", "test"]
    assert [r.key for r in index.get("run-1", "test", "log")] == [("run-1", "test", "log")]
    assert index.get("run-1", "lint") == []
    assert index.get("run-3") == []


def test_touch_moves_the_last_access_forward_only(index):
    stored(rec(last_access=1000.0), [], index)
    index.touch("run-1", "build", "artifact", 2000.25)
    assert index.get("run-1")[0].last_access == 2000.25
    index.touch("run-1", "build", "artifact", 1500.0)  # a slow download reporting late
    assert index.get("run-1")[0].last_access == 2000.25
    index.touch("run-1", "test", "artifact", 3000.0)  # unknown: nothing to touch
    assert [r.key for r in index.records()] == [("run-1", "build", "artifact")]


def test_completing_an_unknown_record_raises(index):
    with pytest.raises(UnknownRecord, match="stale reservation"):
        index.complete("run-1", "build", "artifact")


def test_records_iterates_every_record_across_pages(index, monkeypatch):
    monkeypatch.setattr(sqlite_index_module, "PAGE_SIZE", 3)
    monkeypatch.setattr(redis_index_module, "PAGE_SIZE", 3)
    keys = {(f"run-{n}", job, "artifact") for n in range(5) for job in ("a", "b")}
    for run_id, job, _ in keys:
        index.reserve(rec(run_id, job), [])
    assert {r.key for r in index.records()} == keys


def test_bad_input_is_refused(index):
    with pytest.raises(ValueError, match="sha256"):
        index.reserve(rec(), ["not-a-digest"])
    with pytest.raises(ValueError, match="kind"):
        index.reserve(rec(kind="binary"), [])
    with pytest.raises(ValueError, match="run id"):
        index.reserve(rec(run_id="{evil}"), [])
    with pytest.raises(TypeError):
        index.reserve(rec(), sha("a"))  # one string is not a collection of digests
    with pytest.raises(ValueError, match="lock name"):
        index.acquire_lock("a lock", "me", 10)
    assert list(index.records()) == []


def test_concurrent_reservations_and_deletes_keep_counts_exact(index):
    keys = [(f"run-{n}", "build") for n in range(40)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: index.reserve(rec(*k), [sha("shared"), sha(k[0])]), keys))
        assert counts(index, "shared", "m") == [40, 40]
        released = list(pool.map(lambda k: index.delete(k[0], k[1], "artifact"), keys))
    # Exactly one delete saw the shared objects reach zero.
    assert sum(sha("shared") in r for r in released) == 1
    assert sum(sha("m") in r for r in released) == 1
    assert all(sha(run_id) in r for (run_id, _), r in zip(keys, released))
    assert counts(index, "shared", "m") == [0, 0]


# -- tombstones ----------------------------------------------------------------------------

def test_only_unreferenced_digests_can_be_tombstoned_and_reserve_reports_them(index):
    stored(rec(manifest="m1"), ["live"], index)
    assert index.begin_delete(sha("live")) is False
    assert index.begin_delete(sha("orphan")) is True
    assert index.tombstoned([sha("live"), sha("orphan")]) == {sha("orphan")}
    # An uploader reserving it now must wait for the deletion and upload it again.
    assert index.reserve(rec("run-2", manifest="m2"), [sha("orphan"), sha("live")]) == {sha("orphan")}
    assert counts(index, "orphan") == [1]
    index.end_delete(sha("orphan"))
    assert index.tombstoned([sha("orphan")]) == set()
    assert index.reserve(rec("run-3", manifest="m3"), [sha("orphan")]) == set()


def test_tombstones_expire_when_their_collector_dies(index):
    assert index.begin_delete(sha("orphan"), ttl_s=0.05)
    time.sleep(0.15)
    assert index.tombstoned([sha("orphan")]) == set()
    assert index.reserve(rec(), [sha("orphan")]) == set()


# -- the lock ------------------------------------------------------------------------------

def test_lock_has_one_owner_at_a_time(index):
    assert index.acquire_lock("artifacts-gc", "alice", 60)
    assert not index.acquire_lock("artifacts-gc", "bob", 60)
    assert index.acquire_lock("artifacts-gc", "alice", 60)  # renewing one's own lease
    assert index.acquire_lock("other-lock", "bob", 60)
    index.release_lock("artifacts-gc", "bob")  # not bob's: no effect
    assert not index.acquire_lock("artifacts-gc", "bob", 60)
    index.release_lock("artifacts-gc", "alice")
    assert index.acquire_lock("artifacts-gc", "bob", 60)


def test_an_expired_lock_can_be_taken_and_its_old_owner_cannot_release_it(index):
    assert index.acquire_lock("artifacts-gc", "alice", 0.05)
    time.sleep(0.15)
    assert index.acquire_lock("artifacts-gc", "bob", 60)
    index.release_lock("artifacts-gc", "alice")
    assert not index.acquire_lock("artifacts-gc", "carol", 60)


# -- backend specifics ---------------------------------------------------------------------

def test_redis_keys_hide_job_names_share_one_slot_and_do_not_leak(redis_index, redis_client):
    secret_job = "deploy [TOKEN=hunter2]"
    stored(rec(job=secret_job, holders=frozenset({secret_job})), ["a"], redis_index)
    redis_index.begin_delete(sha("orphan"))
    redis_index.acquire_lock("artifacts-gc", "me", 60)
    keys = list(redis_client.scan_iter("*"))
    assert keys and all(k.startswith("conveyor:art:{idx}:") for k in keys)
    assert not any("deploy" in k or "hunter2" in k for k in keys)
    zeros = redis_index.delete("run-1", secret_job, "artifact")
    # The objects are still stored until a collector deletes them; that clears their marks.
    for digest in zeros:
        assert redis_index.begin_delete(digest)
        redis_index.end_delete(digest)
    redis_index.end_delete(sha("orphan"))
    redis_index.release_lock("artifacts-gc", "me")
    assert list(redis_client.scan_iter("*")) == []


def test_sqlite_index_shares_the_state_file(tmp_path):
    path = str(tmp_path / "state.db")
    state = SQLiteState(path)
    index = SQLiteArtifactIndex(path)
    try:
        state.create_run("run-1", "web", {"build": JobMeta()}, {"levels": [["build"]]}, {})
        stored(rec(), ["a"], index)
        claim = state.claim("run-1", "build", "w1", 5000)
        assert state.finish("run-1", "build", claim.token, "success")
        assert [r.key for r in index.get("run-1")] == [("run-1", "build", "artifact")]
        assert state.get_run("run-1").status == "success"
        # A second state store opening the file later must still find its schema untouched.
        SQLiteState(path).close()
    finally:
        index.close()
        state.close()
    db = sqlite3.connect(path)
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {t for t in tables if t.startswith("artifact_")} == {
            "artifact_records", "artifact_record_digests", "artifact_refs", "artifact_present", "artifact_tombstones",
            "artifact_locks"}
        assert {"runs", "jobs"} <= tables
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1  # the state store's, untouched
    finally:
        db.close()


def test_sqlite_writers_in_two_threads_wait_for_each_other(tmp_path):
    path = str(tmp_path / "state.db")
    index = SQLiteArtifactIndex(path)
    state = SQLiteState(path)
    errors: list[BaseException] = []

    def run_state() -> None:
        try:
            for n in range(30):
                state.create_run(f"s-{n}", "web", {"build": JobMeta()}, {"levels": [["build"]]}, {})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=run_state)
    thread.start()
    for n in range(30):
        index.reserve(rec(f"a-{n}"), [sha("shared")])
    thread.join()
    assert errors == []
    assert counts(index, "shared") == [30]
    assert len(state.list_runs(limit=100)) == 30
    index.close()
    state.close()


def test_open_index_picks_the_backend_from_the_state_url(tmp_path):
    index = open_index(f"sqlite:///{tmp_path}/state.db")
    assert isinstance(index, SQLiteArtifactIndex) and index.path == f"{tmp_path}/state.db"
    index.close()
    # Opening a Redis index connects lazily, so no server is needed to check the dispatch.
    for url in ("redis://127.0.0.1:1/0", "rediss://:pw@127.0.0.1:1/2"):
        index = open_index(url)
        assert isinstance(index, RedisArtifactIndex)
        index.close()
    for url in ("postgres://db/conveyor", "sqlite://", "sqlite://relative.db"):
        with pytest.raises(ValueError, match="sqlite:///|unsupported"):
            open_index(url)


def test_present_marks_follow_completion_and_collection(index):
    record = rec()
    assert index.reserve(record, [sha("a"), sha("m")]) == set()
    assert index.present([sha("a"), sha("m")]) == set()  # reserved is not yet stored
    index.complete(*record.key)
    assert index.present([sha("a"), sha("m"), sha("x")]) == {sha("a"), sha("m")}
    assert sorted(index.delete(*record.key)) == sorted([sha("a"), sha("m")])
    assert index.present([sha("a")]) == {sha("a")}  # still in the store until collected
    assert index.begin_delete(sha("a"))
    assert index.present([sha("a"), sha("m")]) == {sha("m")}
    index.forget(sha("m"))  # found corrupt and deleted by `verify --delete-corrupt`
    assert index.present([sha("m")]) == set()
