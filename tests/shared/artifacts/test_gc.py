"""The garbage collector on a real filesystem store and SQLite index (and once on S3 + Redis)."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Iterator

import pytest
import redis

from shared.artifacts import build_manifest, upload_tree
from shared.artifacts.gc import GC_LOCK, collect, held_by_pending_jobs
from shared.artifacts.index import ArtifactIndex, ArtifactRecord
from shared.artifacts.index.redis import RedisArtifactIndex
from shared.artifacts.index.sqlite import SQLiteArtifactIndex
from shared.artifacts.retention import RetentionPolicy
from shared.state import JobMeta
from shared.state.sqlite import SQLiteState

NOW = 1_700_000_000.0
DAY = 86400.0


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def never_held(record: ArtifactRecord) -> None:
    return None


def publish(store, index: ArtifactIndex, root: Path, run_id: str, files: dict[str, bytes], *, job: str = "build",
            age: float = 0.0, expire_in: float | None = None, holders: tuple[str, ...] = (),
            complete: bool = True) -> ArtifactRecord:
    """Collect `files` as a job's artifact the way a worker does: reserve, upload, complete."""
    workspace = root / "workspaces" / run_id / job
    workspace.mkdir(parents=True)
    for name, data in files.items():
        (workspace / name).write_bytes(data)
    manifest = build_manifest(workspace, list(files))
    created = NOW - age
    record = ArtifactRecord(
        run_id=run_id, job=job, kind="artifact", name="dist", manifest=sha(manifest.to_bytes()),
        size=manifest.total_size, files=len(files), pipeline="web", created_at=created,
        expire_at=None if expire_in is None else created + expire_in, last_access=created,
        holders=frozenset(holders),
    )
    assert index.reserve(record, manifest.digests()) == set()
    digest, _ = upload_tree(store, workspace, list(files))
    assert digest == record.manifest
    if complete:
        index.complete(run_id, job, "artifact")
    return record


def objects(store) -> set[str]:
    return {info.digest for info in store.iter_objects()}


def keys(index: ArtifactIndex) -> set[tuple[str, str, str]]:
    return {r.key for r in index.records()}


@pytest.fixture
def index(tmp_path: Path) -> Iterator[SQLiteArtifactIndex]:
    index = SQLiteArtifactIndex(str(tmp_path / "state.db"))
    yield index
    index.close()


def test_expired_records_and_the_objects_only_they_used_are_removed(fs_store, index, tmp_path, caplog):
    old = publish(fs_store, index, tmp_path, "run-1", {"a.txt": b"a" * 10, "b.txt": b"b" * 20},
                  age=3 * DAY, expire_in=DAY)
    live = publish(fs_store, index, tmp_path, "run-2", {"c.txt": b"c" * 30}, expire_in=DAY)
    old_manifest_size = len(fs_store.get_bytes(old.manifest))
    with caplog.at_level(logging.INFO, logger="conveyor.artifacts.gc"):
        report = collect(fs_store, index, [], never_held, now=NOW)
    assert keys(index) == {live.key}
    assert objects(fs_store) == {sha(b"c" * 30), live.manifest}
    assert (report.records_deleted, report.records_kept, report.objects_deleted) == (1, 1, 3)
    assert report.bytes_freed == 10 + 20 + old_manifest_size
    assert report.errors == [] and not report.skipped and not report.dry_run
    assert "delete record run-1/build/artifact: expired 2d ago" in report.decisions
    assert "keep record run-2/build/artifact: no retention rule applies; expires in 1d" in report.decisions
    assert f"delete object {sha(b'a' * 10)} (10 bytes): unreferenced" in report.decisions
    logged = [r.getMessage() for r in caplog.records]
    assert logged[:-1] == report.decisions  # every decision, in order
    assert logged[-1] == report.summary()
    assert report.summary().startswith("deleted 1 record(s), kept 1; deleted 3 object(s)")


def test_an_object_shared_by_a_live_and_an_expired_record_is_kept(fs_store, index, tmp_path):
    publish(fs_store, index, tmp_path, "run-1", {"lib.so": b"shared", "old.txt": b"old"}, age=2 * DAY,
            expire_in=DAY)
    live = publish(fs_store, index, tmp_path, "run-2", {"lib.so": b"shared"})
    report = collect(fs_store, index, [], never_held, now=NOW)
    assert objects(fs_store) == {sha(b"shared"), live.manifest}
    assert index.refcounts([sha(b"shared")]) == {sha(b"shared"): 1}
    assert report.objects_deleted == 2  # old.txt and run-1's manifest


def test_policies_decide_too(fs_store, index, tmp_path):
    for n in range(4):
        publish(fs_store, index, tmp_path, f"run-{n}", {"out": f"build {n}".encode()}, age=n * 3600)
    report = collect(fs_store, index, [RetentionPolicy(keep_last=2)], never_held, now=NOW)
    assert keys(index) == {("run-0", "build", "artifact"), ("run-1", "build", "artifact")}
    assert objects(fs_store) >= {sha(b"build 0"), sha(b"build 1")}
    assert not objects(fs_store) & {sha(b"build 2"), sha(b"build 3")}
    assert report.records_deleted == 2


def test_orphans_and_stale_reservations_are_collected(fs_store, index, tmp_path):
    orphan = fs_store.put_bytes(b"uploaded, then the worker died before reserving").digest
    stale = publish(fs_store, index, tmp_path, "run-1", {"half": b"half an upload"}, age=2 * 3600, complete=False)
    uploading = publish(fs_store, index, tmp_path, "run-2", {"x": b"in flight"}, age=60, complete=False)
    report = collect(fs_store, index, [], never_held, now=NOW)
    assert keys(index) == {uploading.key}
    assert objects(fs_store) == {sha(b"in flight"), uploading.manifest}
    assert orphan not in objects(fs_store) and stale.manifest not in objects(fs_store)
    assert any(d.startswith("delete record run-1/build/artifact: stale reservation") for d in report.decisions)
    assert "keep record run-2/build/artifact: upload in progress (reserved 1m ago)" in report.decisions


def test_a_dry_run_deletes_nothing_and_reports_what_a_real_run_does(fs_store, index, tmp_path):
    publish(fs_store, index, tmp_path, "run-1", {"lib": b"shared", "a": b"only mine"}, age=3 * DAY, expire_in=DAY)
    publish(fs_store, index, tmp_path, "run-2", {"lib": b"shared"})
    publish(fs_store, index, tmp_path, "run-3", {"b": b"b" * 100}, age=40 * DAY)
    fs_store.put_bytes(b"orphan")
    policies = [RetentionPolicy(max_age_s=30 * DAY)]
    before_objects, before_keys = objects(fs_store), keys(index)
    before_counts = index.refcounts(sorted(before_objects))

    dry = collect(fs_store, index, policies, never_held, now=NOW, dry_run=True)
    assert (objects(fs_store), keys(index)) == (before_objects, before_keys)
    assert index.refcounts(sorted(before_objects)) == before_counts

    real = collect(fs_store, index, policies, never_held, now=NOW)
    assert dry.dry_run and not real.dry_run
    assert dry.decisions == real.decisions
    # run-1's own file and manifest, run-3's file and manifest, the orphan; not the shared lib.
    counted = (dry.records_deleted, dry.records_kept, dry.objects_deleted, dry.bytes_freed)
    assert counted == (real.records_deleted, real.records_kept, real.objects_deleted, real.bytes_freed)
    assert counted[:3] == (2, 1, 5) and sha(b"shared") in objects(fs_store)
    assert dry.summary().startswith("dry run: would delete 2 record(s), kept 1; would delete 5 object(s)")


def test_a_record_held_by_a_pending_job_survives_until_the_job_ends(fs_store, tmp_path):
    path = str(tmp_path / "state.db")  # embedded mode: state and index share the file
    state, index = SQLiteState(path), SQLiteArtifactIndex(path)
    try:
        state.create_run("run-1", "web", {"build": JobMeta(), "deploy": JobMeta()},
                         {"levels": [["build"], ["deploy"]]}, {})
        record = publish(fs_store, index, tmp_path, "run-1", {"app": b"app"}, age=2 * DAY, expire_in=DAY,
                         holders=("deploy",))
        gone_run = publish(fs_store, index, tmp_path, "run-0", {"old": b"old"}, age=2 * DAY, expire_in=DAY,
                           holders=("deploy",))  # its run expired from the state store: nothing holds it

        report = collect(fs_store, index, [], held_by_pending_jobs(state), now=NOW)
        assert keys(index) == {record.key}
        assert "keep record run-1/build/artifact: held by pending job deploy" in report.decisions
        assert {sha(b"app"), record.manifest} <= objects(fs_store)
        assert gone_run.manifest not in objects(fs_store)

        claim = state.claim("run-1", "deploy", "worker-1", 60_000)
        report = collect(fs_store, index, [], held_by_pending_jobs(state), now=NOW)
        assert "keep record run-1/build/artifact: held by running job deploy" in report.decisions

        assert state.finish("run-1", "deploy", claim.token, "success")
        report = collect(fs_store, index, [], held_by_pending_jobs(state), now=NOW)
        assert keys(index) == set() and objects(fs_store) == set()
        assert report.records_deleted == 1
    finally:
        index.close()
        state.close()


def test_a_second_collector_is_skipped_while_the_lock_is_held(fs_store, index, tmp_path):
    publish(fs_store, index, tmp_path, "run-1", {"a": b"a"}, age=2 * DAY, expire_in=DAY)
    assert index.acquire_lock(GC_LOCK, "another-host:42", 600)
    report = collect(fs_store, index, [], never_held, now=NOW)
    assert report.skipped and report.decisions == [] and report.records_deleted == 0
    assert report.summary() == f"artifact gc skipped: another collector holds the lock {GC_LOCK}"
    assert len(objects(fs_store)) == 2 and len(keys(index)) == 1

    index.release_lock(GC_LOCK, "another-host:42")
    assert collect(fs_store, index, [], never_held, now=NOW).records_deleted == 1
    # A finished collection leaves the lock free.
    assert index.acquire_lock(GC_LOCK, "another-host:42", 600)


def test_the_lock_is_released_when_a_collection_fails(fs_store, index, tmp_path):
    publish(fs_store, index, tmp_path, "run-1", {"a": b"a"}, age=2 * DAY, expire_in=DAY)

    def state_store_down(record: ArtifactRecord) -> None:
        raise ConnectionError("state store unreachable")

    with pytest.raises(ConnectionError):
        collect(fs_store, index, [], state_store_down, now=NOW)
    assert len(keys(index)) == 1  # nothing deleted on the way
    assert index.acquire_lock(GC_LOCK, "next", 600)


def test_a_collector_that_lost_its_lock_stops(fs_store, index, tmp_path):
    publish(fs_store, index, tmp_path, "run-1", {"a": b"a"}, age=2 * DAY, expire_in=DAY)

    def lease_expires_meanwhile(record: ArtifactRecord) -> None:
        index.release_lock(GC_LOCK, "slow")
        assert index.acquire_lock(GC_LOCK, "thief", 600)

    report = collect(fs_store, index, [], lease_expires_meanwhile, now=NOW, owner="slow", lock_ttl_s=1e-6)
    assert report.errors == [f"lost the lock {GC_LOCK} to another collector"]
    assert report.records_deleted == 0 and len(keys(index)) == 1 and len(objects(fs_store)) == 2
    assert not index.acquire_lock(GC_LOCK, "someone", 600)  # still the thief's


class UploaderDuringDelete:
    """The store, where an uploader reserves an object in the middle of its deletion."""

    def __init__(self, store, index: ArtifactIndex, record: ArtifactRecord) -> None:
        self.store, self.index, self.record = store, index, record
        self.reported: set[str] | None = None

    def __getattr__(self, name: str):
        return getattr(self.store, name)

    def delete(self, digest: str) -> None:
        if digest == self.record.manifest:
            self.reported = self.index.reserve(self.record, [digest])
        self.store.delete(digest)


def test_a_digest_tombstoned_during_collection_is_reported_by_reserve(fs_store, index, tmp_path):
    data = b"the same bytes, built again"
    orphan = fs_store.put_bytes(data).digest
    again = ArtifactRecord(run_id="run-9", job="log", kind="log", name="log", manifest=orphan, size=len(data),
                           files=1, pipeline="web", created_at=NOW, expire_at=None, last_access=NOW)
    racing = UploaderDuringDelete(fs_store, index, again)
    report = collect(racing, index, [], never_held, now=NOW)
    assert racing.reported == {orphan}  # so the uploader waits and uploads again, not trusting has()
    assert report.objects_deleted == 1 and not fs_store.has(orphan)
    assert index.tombstoned([orphan]) == set()  # the collector's end_delete let the uploader go on
    assert index.refcounts([orphan]) == {orphan: 1}
    fs_store.put_bytes(data)
    index.complete("run-9", "log", "log")
    assert collect(fs_store, index, [], never_held, now=NOW).objects_deleted == 0
    assert fs_store.has(orphan)


def test_an_object_referenced_after_its_count_was_read_is_kept(fs_store, index, tmp_path):
    orphan = fs_store.put_bytes(b"dedup hit").digest
    record = ArtifactRecord(run_id="run-9", job="log", kind="log", name="log", manifest=orphan, size=9, files=1,
                            pipeline="web", created_at=NOW, expire_at=None, last_access=NOW)
    read_counts = index.refcounts

    def refcounts_then_reserve(digests):
        counts = read_counts(digests)
        index.reserve(record, [orphan])  # an uploader's reservation lands right after the read
        return counts

    index.refcounts = refcounts_then_reserve  # type: ignore[method-assign]
    report = collect(fs_store, index, [], never_held, now=NOW)
    assert fs_store.has(orphan) and report.objects_deleted == 0


class FailingDelete:
    """The store, refusing to delete one object (a permission error, a flaky S3 call)."""

    def __init__(self, store, broken: str) -> None:
        self.store, self.broken = store, broken

    def __getattr__(self, name: str):
        return getattr(self.store, name)

    def delete(self, digest: str) -> None:
        if digest == self.broken:
            raise PermissionError(f"cannot delete {digest}")
        self.store.delete(digest)


def test_a_failed_object_delete_is_reported_and_the_sweep_goes_on(fs_store, index):
    broken = fs_store.put_bytes(b"stuck").digest
    other = fs_store.put_bytes(b"fine").digest
    report = collect(FailingDelete(fs_store, broken), index, [], never_held, now=NOW)
    assert report.errors == [f"object {broken}: cannot delete {broken}"]
    assert report.objects_deleted == 1 and objects(fs_store) == {broken} and other not in objects(fs_store)
    assert index.tombstoned([broken]) == set()
    assert report.summary().endswith("; 1 error(s)")


@pytest.fixture
def redis_index(redis_url: str) -> Iterator[RedisArtifactIndex]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    index = RedisArtifactIndex(redis_url)
    yield index
    index.close()


def test_collection_on_s3_with_a_redis_index(s3_store, redis_index, tmp_path):
    publish(s3_store, redis_index, tmp_path, "run-1", {"lib": b"shared", "a": b"a" * 1000}, age=2 * DAY,
            expire_in=DAY)
    live = publish(s3_store, redis_index, tmp_path, "run-2", {"lib": b"shared"})
    s3_store.put_bytes(b"orphan")
    assert redis_index.acquire_lock(GC_LOCK, "other", 600)
    assert collect(s3_store, redis_index, [], never_held, now=NOW).skipped
    redis_index.release_lock(GC_LOCK, "other")

    dry = collect(s3_store, redis_index, [], never_held, now=NOW, dry_run=True)
    assert len(objects(s3_store)) == 5
    report = collect(s3_store, redis_index, [], never_held, now=NOW)
    assert objects(s3_store) == {sha(b"shared"), live.manifest}
    assert keys(redis_index) == {live.key}
    assert (report.records_deleted, report.objects_deleted, report.bytes_freed) == (
        dry.records_deleted, dry.objects_deleted, dry.bytes_freed)
    assert report.objects_deleted == 3 and report.bytes_freed > 1006
