"""The artifact garbage collector: drop records the retention policies reject, then unreferenced objects.

One collection, under the cluster-wide lock `artifacts-gc`:

1. decide on every record (`retention.select_deletions`) and delete the rejected ones
   from the index, which drops their objects' references;
2. sweep the store: an object whose refcount is zero is tombstoned (`begin_delete`, which
   refuses if a reservation referenced it meanwhile), deleted, and un-tombstoned. An
   uploader reserving it in between learns from `reserve` that it must upload it again.

A dry run takes the same lock and decisions, deletes nothing, and counts as unreferenced
the objects the record deletions would have released, so it reports what a real run would.
Every decision is logged at INFO on `conveyor.artifacts.gc`.
"""
from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

from shared.artifacts.base import ObjectInfo, ObjectStore
from shared.artifacts.index.base import ArtifactIndex, ArtifactRecord
from shared.artifacts.retention import RetentionPolicy, format_size, select_deletions
from shared.state.base import TERMINAL, StateStore, UnknownRun

GC_LOCK = "artifacts-gc"
DEFAULT_LOCK_TTL_S = 600.0
# Objects whose refcounts are read in one index call.
SWEEP_BATCH = 500

logger = logging.getLogger("conveyor.artifacts.gc")


class LockLost(RuntimeError):
    """Another collector took the lock: our lease expired before we renewed it."""


@dataclass
class GcReport:
    """What one collection did (or, in a dry run, would do)."""

    dry_run: bool = False
    skipped: bool = False
    records_deleted: int = 0
    records_kept: int = 0
    objects_deleted: int = 0
    bytes_freed: int = 0
    decisions: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for people: counts and bytes, and whether anything went wrong."""
        if self.skipped:
            return f"artifact gc skipped: another collector holds the lock {GC_LOCK}"
        verb = "would delete" if self.dry_run else "deleted"
        text = (f"{'dry run: ' if self.dry_run else ''}{verb} {self.records_deleted} record(s), "
                f"kept {self.records_kept}; {verb} {self.objects_deleted} object(s), "
                f"{format_size(self.bytes_freed)} ({self.bytes_freed} bytes)")
        if self.errors:
            text += f"; {len(self.errors)} error(s)"
        return text


def default_owner() -> str:
    """A lock owner unique to this collection: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def collect(
    store: ObjectStore,
    index: ArtifactIndex,
    policies: Sequence[RetentionPolicy],
    held: Callable[[ArtifactRecord], str | None],
    *,
    dry_run: bool = False,
    now: float | None = None,
    owner: str | None = None,
    lock_ttl_s: float = DEFAULT_LOCK_TTL_S,
) -> GcReport:
    """Run one collection; returns a report with `skipped=True` if another collector holds the lock.

    Errors deleting single objects are logged and listed in `report.errors`; the sweep goes
    on (a later collection retries them). Losing the lock stops the collection.
    """
    owner = owner or default_owner()
    report = GcReport(dry_run=dry_run)
    if not index.acquire_lock(GC_LOCK, owner, lock_ttl_s):
        report.skipped = True
        logger.info(report.summary())
        return report
    lease = _Lease(index, owner, lock_ttl_s)
    try:
        released = _collect_records(index, policies, held, time.time() if now is None else now, report, lease)
        _sweep(store, index, released, report, lease)
    except LockLost as exc:
        report.errors.append(str(exc))
        logger.warning("stopped: %s", exc)
    finally:
        index.release_lock(GC_LOCK, owner)
    logger.info(report.summary())
    return report


def _collect_records(index: ArtifactIndex, policies: Sequence[RetentionPolicy],
                     held: Callable[[ArtifactRecord], str | None], now: float, report: GcReport,
                     lease: "_Lease") -> Counter[str]:
    """Decide on every record and delete the rejected ones (unless dry run).

    Returns, for a dry run, the references the deletions would drop per digest (empty otherwise).
    """
    released: Counter[str] = Counter()
    for decision in select_deletions(index.records(), policies, now, held):
        lease.renew()
        record = decision.record
        _note(report, f"{decision.action} record {_label(record)}: {decision.reason}")
        if decision.action == "keep":
            report.records_kept += 1
            continue
        report.records_deleted += 1
        if report.dry_run:
            # Not in the ArtifactIndex protocol yet: both backends provide it.
            released.update(index.digests(*record.key))
        else:
            index.delete(*record.key)
    return released


def _sweep(store: ObjectStore, index: ArtifactIndex, released: Counter[str], report: GcReport,
           lease: "_Lease") -> None:
    batch: list[ObjectInfo] = []
    for info in store.iter_objects():
        batch.append(info)
        if len(batch) >= SWEEP_BATCH:
            _sweep_batch(store, index, batch, released, report, lease)
            batch = []
    if batch:
        _sweep_batch(store, index, batch, released, report, lease)


def _sweep_batch(store: ObjectStore, index: ArtifactIndex, batch: list[ObjectInfo], released: Counter[str],
                 report: GcReport, lease: "_Lease") -> None:
    counts = index.refcounts([info.digest for info in batch])
    for info in batch:
        lease.renew()
        if counts[info.digest] - released[info.digest] > 0:
            continue
        if not report.dry_run:
            if not index.begin_delete(info.digest):
                logger.info("keep object %s: referenced again during collection", info.digest)
                continue
            try:
                store.delete(info.digest)
            except Exception as exc:  # noqa: BLE001 - one failed delete must not stop the sweep
                report.errors.append(f"object {info.digest}: {exc}")
                logger.warning("cannot delete object %s: %s", info.digest, exc)
                continue
            finally:
                # Whatever happened, uploaders waiting on the tombstone may go on.
                index.end_delete(info.digest)
        report.objects_deleted += 1
        report.bytes_freed += info.size
        _note(report, f"delete object {info.digest} ({info.size} bytes): unreferenced")


def _note(report: GcReport, line: str) -> None:
    report.decisions.append(line)
    logger.info("%s%s", "dry run: " if report.dry_run else "", line)


def _label(record: ArtifactRecord) -> str:
    return f"{record.run_id}/{record.job or '-'}/{record.kind}"


class _Lease:
    """Renews the collector lock before it expires, and notices when another collector took it."""

    def __init__(self, index: ArtifactIndex, owner: str, ttl_s: float) -> None:
        self.index, self.owner, self.ttl_s = index, owner, ttl_s
        self.renewed = time.monotonic()

    def renew(self) -> None:
        # A third of the TTL leaves two thirds of it for one slow step (a large S3 delete).
        if time.monotonic() - self.renewed < self.ttl_s / 3:
            return
        if not self.index.acquire_lock(GC_LOCK, self.owner, self.ttl_s):
            raise LockLost(f"lost the lock {GC_LOCK} to another collector")
        self.renewed = time.monotonic()


def held_by_pending_jobs(state: StateStore) -> Callable[[ArtifactRecord], str | None]:
    """A `held` function for one collection: a record is held while its run exists and one of
    its `holders` is not terminal there. Each run's jobs are read once (so make a new one per
    collection, or it would answer from stale statuses)."""
    statuses: dict[str, dict[str, str] | None] = {}

    def held(record: ArtifactRecord) -> str | None:
        if not record.holders:
            return None
        if record.run_id not in statuses:
            statuses[record.run_id] = _job_statuses(state, record.run_id)
        jobs = statuses[record.run_id]
        if jobs is None:
            return None
        waiting = sorted(name for name in record.holders if name in jobs and jobs[name] not in TERMINAL)
        if not waiting:
            return None
        return "held by " + ", ".join(f"{jobs[name]} job {name}" for name in waiting)

    return held


def _job_statuses(state: StateStore, run_id: str) -> dict[str, str] | None:
    """Job name -> status, or None when the run is gone (expired runs hold nothing)."""
    if state.get_run(run_id) is None:
        return None
    try:
        return {name: job.status for name, job in state.get_jobs(run_id).items()}
    except UnknownRun:
        return None
