"""The artifact index twins side by side: one operation sequence, Redis and SQLite, every result compared.

test_index.py checks each backend against what a test author expected; this one checks the
backends against each other. Hypothesis drives the same public operations (reserve,
complete, touch, delete, present marks, tombstones with live or expiring TTLs, the
collector lock) through a RedisArtifactIndex and a SQLiteArtifactIndex, and after every
step compares what each returned (a value, or the class of the error raised) and everything
the read API shows. Whatever differs is a bug in one of them, unless `normalise` says why
it may differ.
"""
from __future__ import annotations

import hashlib
import itertools
import math
import re
import time
from dataclasses import is_dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import redis
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from shared.artifacts.index import KINDS, ArtifactIndex, ArtifactRecord
from shared.artifacts.index.redis import RedisArtifactIndex
from shared.artifacts.index.sqlite import SQLiteArtifactIndex
from tests.twins import RANDOM_SEQUENCES, Raised, Reached, attempt


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# Few keys and digests so that sequences share objects between records, re-reserve keys and
# tombstone objects someone references again.
RUN_IDS = ("r0", "r1")
JOBS = ("", "build", "déploy [ENV=prod]")  # "": a run's source snapshot
DIGESTS = tuple(sha(t) for t in "abcd")
LOCKS = ("artifacts-gc", "other")
LONG_TTL_S = 300.0
# A TTL of 1 ms (or none at all), then a pause, is how a sequence makes a tombstone or a
# lock run out: both backends then agree it has, whichever clock they read.
SHORT_TTLS_S = (0.001, 0.0, -1.0)
EXPIRY_PAUSE_S = 0.004
_db_files = itertools.count()


def normalise(value: Any) -> Any:
    """A result with what legitimately differs between backends replaced (see each case)."""
    if isinstance(value, ArtifactRecord):
        # A frozenset's repr follows its hash order, which two equal sets built apart may
        # not share: compare holders sorted. Every other field must match exactly.
        return (*(getattr(value, f) for f in ("run_id", "job", "kind", "name", "manifest", "size", "files",
                                               "pipeline", "created_at", "expire_at", "last_access")),
                sorted(value.holders), value.complete)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(normalise(v) for v in value)
    assert not is_dataclass(value) or isinstance(value, Raised), f"no normalisation for {value!r}"
    return value


# What the operations reached (on both twins alike: `same` notes only agreed results). The
# stories below must reach all of MUST_REACH; the random sequences RANDOM_MUST_REACH, which
# each of 20 trial runs reached: a generator that stopped reaching those would make the
# comparison vacuous.
reached = Reached()
MUST_REACH = frozenset({"reserve", "complete", "delete: zeros", "begin_delete: True", "begin_delete: False",
                        "reserve: tombstoned", "acquire_lock: True", "acquire_lock: False", "present",
                        "error: ValueError", "error: TypeError", "error: UnknownRecord"})
RANDOM_MUST_REACH = MUST_REACH - {"acquire_lock: False", "error: TypeError"}


note = reached.note


class IndexTwins:
    """A RedisArtifactIndex and a SQLiteArtifactIndex holding the same history."""

    def __init__(self, redis_url: str, db_dir: Path) -> None:
        self.client = redis.Redis.from_url(redis_url, decode_responses=True)
        self.client.flushdb()
        self.pair: tuple[ArtifactIndex, ArtifactIndex] = (
            RedisArtifactIndex(redis_url), SQLiteArtifactIndex(str(db_dir / f"index-{next(_db_files)}.db")))

    def close(self) -> None:
        for index in self.pair:
            index.close()
        self.client.close()

    def same(self, what: str, call: Callable[[ArtifactIndex], Any]) -> Any:
        """`call` on the Redis twin, then the SQLite twin: the result, once both agree."""
        on_redis, on_sqlite = attempt(lambda: call(self.pair[0])), attempt(lambda: call(self.pair[1]))
        # repr, not ==: 2 and 2.0 are equal but a reader sees them differently, and nan != nan.
        assert repr(normalise(on_redis)) == repr(normalise(on_sqlite)), (
            f"{what}:\n  redis:  {on_redis!r}\n  sqlite: {on_sqlite!r}"
        )
        operation = re.split(r"[(\s]", what, maxsplit=1)[0]  # what starts with the operation's name
        if isinstance(on_redis, Raised):
            note(f"error: {on_redis.error}")
        elif operation == "reserve":
            note("reserve: tombstoned" if on_redis else "reserve")
        elif operation == "delete" and on_redis:
            note("delete: zeros")
        elif operation in ("begin_delete", "acquire_lock", "complete"):
            note(operation if on_redis is None else f"{operation}: {on_redis}")
        elif operation == "present" and on_redis:
            note("present")
        return on_redis

    def check(self, keys: list[tuple[str, str, str]]) -> None:
        """Compare everything a reader sees: every record (the collector's view, in key order:
        records() promises no order, and Redis's SSCAN has none), each run's complete records,
        counts, present marks and tombstones of every digest, and the digests of `keys`."""
        self.same("records()", lambda i: sorted(i.records(), key=lambda r: r.key))
        for run_id in RUN_IDS:
            self.same(f"get({run_id!r})", lambda i: i.get(run_id))
        self.same("refcounts", lambda i: i.refcounts(DIGESTS))
        self.same("present", lambda i: i.present(DIGESTS))
        self.same("tombstoned", lambda i: i.tombstoned(DIGESTS))
        for key in keys:
            self.same(f"digests{key}", lambda i: i.digests(*key))


# -- strategies ---------------------------------------------------------------------------

keys = st.tuples(st.sampled_from(RUN_IDS), st.sampled_from(JOBS), st.sampled_from(sorted(KINDS)))
digests = st.sampled_from(DIGESTS)
texts = st.text(st.characters(codec="utf-8"), max_size=10)
# Times as the workers and the collector write them: epoch seconds with microseconds.
times = st.floats(min_value=0, max_value=4e9, allow_nan=False)
records = st.builds(
    lambda key, manifest, name, size, files, pipeline, created, expire, access, holders: ArtifactRecord(
        run_id=key[0], job=key[1], kind=key[2], name=name, manifest=manifest, size=size, files=files,
        pipeline=pipeline, created_at=created, expire_at=expire, last_access=access, holders=holders),
    keys, digests, texts, st.integers(0, 2**40), st.integers(0, 10**6), texts, times, st.none() | times, times,
    st.frozensets(st.sampled_from(JOBS[1:] + ("test",))),
)
# Mostly long: a tombstone must outlive a few steps for a reservation to meet it.
ttls = st.sampled_from((LONG_TTL_S,) * 3 + SHORT_TTLS_S)


class IndexTwinsMachine(RuleBasedStateMachine):
    """Random operation sequences on `IndexTwins`; set `redis_url` and `db_dir` before running."""

    redis_url: str = ""
    db_dir: Path = Path()

    def __init__(self) -> None:
        super().__init__()
        self.twins = IndexTwins(self.redis_url, self.db_dir)
        self.touched: list[tuple[str, str, str]] = []
        self.added: list[tuple[str, str, str]] = []  # keys reserved, newest last

    def teardown(self) -> None:
        try:
            self.twins.check([(r, j, k) for r in RUN_IDS for j in JOBS for k in sorted(KINDS)])
        finally:
            self.twins.close()

    @invariant()
    def everything_reads_the_same(self) -> None:
        self.twins.check(self.touched)
        self.touched = []

    @rule(plan=st.tuples(records, st.lists(digests, max_size=4), st.booleans()))
    def add_record(self, plan: tuple[ArtifactRecord, list[str], bool]) -> None:
        """Reserve a record, and complete it unless the uploader is to die first (as
        publish_manifest does). One argument and no target make this the rule Hypothesis
        sorts first, which it draws more often than the others."""
        record, extra, complete = plan
        self.touched = [record.key]
        self.added.append(record.key)
        self.twins.same(f"reserve({record!r}, {extra})", lambda i: i.reserve(record, extra))
        if complete:
            self.twins.same(f"complete{record.key}", lambda i: i.complete(*record.key))

    @rule(key=keys)
    def complete(self, key: tuple[str, str, str]) -> None:
        self.touched = [key]
        self.twins.same(f"complete{key}", lambda i: i.complete(*key))

    @rule(plan=st.tuples(records, digests, ttls))
    def reserve_while_collecting(self, plan: tuple[ArtifactRecord, str, float]) -> None:
        """A collector tombstones an object (if nothing references it) just before an
        uploader reserves a record naming it: the reservation must report it on both."""
        record, digest, ttl_s = plan
        self.begin_delete(digest, ttl_s)
        self.touched = [record.key]
        self.added.append(record.key)
        self.twins.same(f"reserve({record!r}, [{digest[:8]}])", lambda i: i.reserve(record, [digest]))

    @rule(key=keys, at=times)
    def touch(self, key: tuple[str, str, str], at: float) -> None:
        self.touched = [key]
        self.twins.same(f"touch{key}", lambda i: i.touch(*key, at))

    @rule(key=keys)
    def delete(self, key: tuple[str, str, str]) -> None:
        self.touched = [key]
        self.twins.same(f"delete{key}", lambda i: i.delete(*key))

    @rule(newest=st.integers(0, 3))
    def delete_a_record(self, newest: int) -> None:
        # A key some step reserved (a random key seldom is one): what the collector deletes.
        if self.added:
            self.delete(self.added[-1 - newest % len(self.added)])

    @rule(run_id=st.sampled_from(RUN_IDS), job=st.none() | st.sampled_from(JOBS + ("ghost",)),
          kind=st.none() | st.sampled_from(sorted(KINDS)))
    def get(self, run_id: str, job: str | None, kind: str | None) -> None:
        self.twins.same(f"get({run_id!r}, {job!r}, {kind!r})", lambda i: i.get(run_id, job, kind))

    @rule(digest=digests, ttl_s=ttls)
    def begin_delete(self, digest: str, ttl_s: float) -> None:
        self.twins.same(f"begin_delete({digest[:8]}, {ttl_s})", lambda i: i.begin_delete(digest, ttl_s))
        if ttl_s != LONG_TTL_S:
            time.sleep(EXPIRY_PAUSE_S)

    @rule(digest=digests)
    def end_delete(self, digest: str) -> None:
        self.twins.same(f"end_delete({digest[:8]})", lambda i: i.end_delete(digest))

    @rule(digest=digests)
    def forget(self, digest: str) -> None:
        self.twins.same(f"forget({digest[:8]})", lambda i: i.forget(digest))

    @rule(name=st.sampled_from(LOCKS), owner=st.sampled_from(("a", "b")), ttl_s=ttls)
    def acquire_lock(self, name: str, owner: str, ttl_s: float) -> None:
        self.twins.same(f"acquire_lock({name!r}, {owner!r}, {ttl_s})", lambda i: i.acquire_lock(name, owner, ttl_s))
        if ttl_s != LONG_TTL_S:
            time.sleep(EXPIRY_PAUSE_S)

    @rule(name=st.sampled_from(LOCKS), owner=st.sampled_from(("a", "b")))
    def release_lock(self, name: str, owner: str) -> None:
        self.twins.same(f"release_lock({name!r}, {owner!r})", lambda i: i.release_lock(name, owner))

    @rule(record=records, odd=st.sampled_from((
        ("run_id", "bad id!"), ("job", 7), ("kind", "bogus"), ("manifest", "xyz"), ("size", -1),
        ("size", 2**63), ("files", -1), ("created_at", math.nan), ("created_at", math.inf),
        ("expire_at", math.nan), ("last_access", -math.inf), ("holders", frozenset({""})),
    )))
    def reserve_oddly(self, record: ArtifactRecord, odd: tuple[str, Any]) -> None:
        # Values no caller should send: both must refuse them alike, or store them alike.
        record = replace(record, **{odd[0]: odd[1]})
        self.touched = [record.key] if isinstance(record.job, str) else []
        self.twins.same(f"reserve({record!r})", lambda i: i.reserve(record, []))

    @rule(key=keys, at=st.sampled_from((math.nan, math.inf, -math.inf, -1.0)), digest=st.sampled_from(("xyz", "")),
          ttl_s=st.sampled_from((math.nan, math.inf)))
    def misuse(self, key: tuple[str, str, str], at: float, digest: str, ttl_s: float) -> None:
        # Arguments no caller should send, on every operation that takes them.
        self.touched = [key]
        self.twins.same(f"touch{key} at {at}", lambda i: i.touch(*key, at))
        self.twins.same(f"begin_delete({digest!r})", lambda i: i.begin_delete(digest))
        self.twins.same(f"begin_delete(ttl={ttl_s})", lambda i: i.begin_delete(DIGESTS[0], ttl_s))
        self.twins.same(f"acquire_lock(ttl={ttl_s})", lambda i: i.acquire_lock(LOCKS[1], "c", ttl_s))
        self.twins.same("acquire_lock('bad name!')", lambda i: i.acquire_lock("bad name!", "c", LONG_TTL_S))
        self.twins.same(f"present([{digest!r}])", lambda i: i.present([digest]))
        self.twins.same(f"complete({key[0]!r}, {key[1]!r}, 'bogus')", lambda i: i.complete(key[0], key[1], "bogus"))


SETTINGS = RANDOM_SEQUENCES


@pytest.mark.slow
def test_redis_and_sqlite_indexes_agree_on_random_sequences(redis_url: str, tmp_path: Path) -> None:
    IndexTwinsMachine.redis_url, IndexTwinsMachine.db_dir = redis_url, tmp_path
    reached.clear()
    run_state_machine_as_test(IndexTwinsMachine, settings=SETTINGS)
    assert not RANDOM_MUST_REACH - set(reached), f"never reached: {sorted(RANDOM_MUST_REACH - set(reached))}"


# -- stories: the collector's races on purpose -------------------------------------------------

A, B, C, D = DIGESTS


def rec(run_id: str = "r0", job: str = "build", kind: str = "artifact", manifest: str = A, **fields: Any) -> ArtifactRecord:
    values: dict[str, Any] = dict(name="dist", size=100, files=2, pipeline="web", created_at=1714567890.123456,
                                  expire_at=None, last_access=1714567890.5, holders=frozenset({"test"}))
    values.update(fields)
    return ArtifactRecord(run_id=run_id, job=job, kind=kind, manifest=manifest, **values)


def story_collector_meets_uploader(twins: IndexTwins) -> None:
    first = rec()
    twins.same("reserve first", lambda i: i.reserve(first, [B, C]))
    twins.same("complete first", lambda i: i.complete(*first.key))
    twins.same("present", lambda i: i.present(DIGESTS))
    twins.same("begin_delete(B) while referenced", lambda i: i.begin_delete(B))
    twins.same("delete first", lambda i: i.delete(*first.key))
    twins.same("begin_delete(B)", lambda i: i.begin_delete(B))
    second = rec("r1", "", "source", manifest=D)
    twins.same("reserve second naming B", lambda i: i.reserve(second, [B]))  # reports B tombstoned
    twins.same("begin_delete(B) again", lambda i: i.begin_delete(B))
    twins.same("end_delete(B)", lambda i: i.end_delete(B))
    twins.same("complete second", lambda i: i.complete(*second.key))
    twins.same("complete unknown", lambda i: i.complete("r0", "build", "log"))
    twins.same("forget(B)", lambda i: i.forget(B))


def story_records_change_and_are_read(twins: IndexTwins) -> None:
    twins.same("reserve", lambda i: i.reserve(rec(kind="log"), [B]))
    twins.same("reserve again, replacing", lambda i: i.reserve(rec(kind="log", size=7, expire_at=1.5), [C]))
    twins.same("complete", lambda i: i.complete("r0", "build", "log"))
    for at in (1714567999.25, 1.0):  # forward only
        twins.same(f"touch({at})", lambda i: i.touch("r0", "build", "log", at))
    twins.same("get by job", lambda i: i.get("r0", "build"))
    twins.same("get by kind", lambda i: i.get("r0", kind="log"))
    twins.same("delete unknown", lambda i: i.delete("r1", "build", "log"))


def story_tombstones_and_locks_expire(twins: IndexTwins) -> None:
    twins.same("begin_delete(C, short)", lambda i: i.begin_delete(C, 0.001))
    twins.same("acquire_lock a", lambda i: i.acquire_lock(LOCKS[0], "a", LONG_TTL_S))
    twins.same("acquire_lock b, while a holds it", lambda i: i.acquire_lock(LOCKS[0], "b", LONG_TTL_S))
    twins.same("acquire_lock a renews", lambda i: i.acquire_lock(LOCKS[0], "a", 0.001))
    twins.same("release_lock b, which does not hold it", lambda i: i.release_lock(LOCKS[0], "b"))
    time.sleep(EXPIRY_PAUSE_S)
    twins.same("tombstoned expired", lambda i: i.tombstoned(DIGESTS))
    twins.same("reserve naming C", lambda i: i.reserve(rec(), [C]))
    twins.same("acquire_lock b takes the expired lock", lambda i: i.acquire_lock(LOCKS[0], "b", LONG_TTL_S))
    twins.same("release_lock a no longer holds it", lambda i: i.release_lock(LOCKS[0], "a"))
    twins.same("acquire_lock a cannot take it", lambda i: i.acquire_lock(LOCKS[0], "a", LONG_TTL_S))


def story_misuse(twins: IndexTwins) -> None:
    for field, value in (("size", 2**63), ("size", -1), ("files", True), ("created_at", math.nan),
                         ("expire_at", math.nan), ("last_access", math.inf), ("kind", "bogus"), ("manifest", "xyz"),
                         ("run_id", "bad id!")):
        twins.same(f"reserve({field}={value!r})", lambda i: i.reserve(replace(rec(), **{field: value}), []))
    twins.same("reserve(digests='abc')", lambda i: i.reserve(rec(), "abc"))  # type: ignore[arg-type]
    for at in (math.nan, math.inf):
        twins.same(f"touch({at})", lambda i: i.touch("r0", "build", "artifact", at))
    for ttl_s in (math.nan, math.inf):
        twins.same(f"begin_delete(ttl={ttl_s})", lambda i: i.begin_delete(A, ttl_s))
        twins.same(f"acquire_lock(ttl={ttl_s})", lambda i: i.acquire_lock(LOCKS[0], "a", ttl_s))
    twins.same("acquire_lock('bad name!')", lambda i: i.acquire_lock("bad name!", "a", LONG_TTL_S))


STORIES: dict[str, Callable[[IndexTwins], None]] = {
    name.removeprefix("story_"): value for name, value in globals().items() if name.startswith("story_")
}
ALL_KEYS = [(r, j, k) for r in RUN_IDS for j in JOBS for k in sorted(KINDS)]


@pytest.fixture
def twins(redis_url: str, tmp_path: Path) -> Iterator[IndexTwins]:
    pair = IndexTwins(redis_url, tmp_path)
    yield pair
    pair.close()


@pytest.mark.parametrize("story", sorted(STORIES))
def test_a_story_reads_the_same_on_both(twins: IndexTwins, story: str) -> None:
    STORIES[story](twins)
    twins.check(ALL_KEYS)


def test_the_stories_reach_every_state(redis_url: str, tmp_path: Path) -> None:
    reached.clear()
    for story in STORIES.values():
        twins = IndexTwins(redis_url, tmp_path)
        try:
            story(twins)
            twins.check(ALL_KEYS)
        finally:
            twins.close()
    assert not MUST_REACH - set(reached), f"never reached: {sorted(MUST_REACH - set(reached))}"


# -- the disagreements these tests found, one focused example each ---------------------------
# Each was a real difference between the backends before the shared checks in
# shared/artifacts/index/__init__.py (check_record, check_seconds).


@pytest.mark.parametrize("ttl_s", [math.nan, math.inf])
def test_a_ttl_must_be_finite_on_both(twins: IndexTwins, ttl_s: float) -> None:
    """Redis raised ValueError (nan) or OverflowError (inf, converting to ms); SQLite raised
    IntegrityError (nan stored as NULL) or took the lock and tombstone for ever (inf)."""
    assert twins.same("begin_delete", lambda i: i.begin_delete(A, ttl_s)) == Raised("ValueError")
    assert twins.same("acquire_lock", lambda i: i.acquire_lock(LOCKS[0], "a", ttl_s)) == Raised("ValueError")
    twins.check(ALL_KEYS)


def test_a_download_time_must_be_finite_on_both(twins: IndexTwins) -> None:
    """touch(at=nan): SQLite raised IntegrityError (max() with NULL), Redis ignored it."""
    twins.same("reserve", lambda i: i.reserve(rec(), []))
    assert twins.same("touch(nan)", lambda i: i.touch("r0", "build", "artifact", math.nan)) == Raised("ValueError")
    twins.check(ALL_KEYS)


@pytest.mark.parametrize("field, value", [("created_at", math.nan), ("expire_at", math.nan), ("size", 2**63)])
def test_a_record_either_could_not_store_alike_is_refused_by_both(twins: IndexTwins, field: str, value: Any) -> None:
    """created_at=nan: SQLite IntegrityError, Redis stored nan. expire_at=nan: SQLite stored
    NULL (never expires), Redis nan. size=2**63: SQLite OverflowError, Redis stored it."""
    assert twins.same("reserve", lambda i: i.reserve(replace(rec(), **{field: value}), [])) == Raised("ValueError")
    twins.check(ALL_KEYS)
