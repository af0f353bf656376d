"""The artifact index contract: which run/job produced which manifest, and per-object refcounts.

The object store only holds bytes. Everything needed to clean it up safely lives here, in
the state store's backend (Redis through Lua scripts, or the embedded SQLite file):

- an `ArtifactRecord` per stored tree (a job's artifacts, a run's source snapshot, a job's
  archived log), with its expiry, creation and last-access times and the jobs of its run
  that will still download it (`holders`);
- a reference count per object digest: how many records name it. Records are reserved
  *before* their objects are uploaded, so an object being uploaded is never at zero;
- a *present* mark per object a complete record confirmed stored, so re-uploading an
  unchanged tree asks the index once instead of the store once per file;
- a tombstone per object a collector is deleting. `reserve` reports tombstoned digests so
  the uploader waits for the deletion to end and uploads them again instead of trusting a
  `has()` that is about to become false;
- a named lock with a TTL, so one collector runs at a time across the cluster.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Iterator, Literal, Protocol, Sequence

Kind = Literal["artifact", "source", "log"]
KINDS: frozenset[str] = frozenset({"artifact", "source", "log"})

# A record not completed this long after it was reserved belongs to an uploader that died.
STALE_RESERVATION_S = 3600.0
# How long a collector's tombstone survives if the collector dies mid-delete.
TOMBSTONE_TTL_S = 300.0


@dataclass(frozen=True)
class ArtifactRecord:
    """One stored tree. `manifest` is the digest of its manifest object (for `log`, of the log
    object itself). Times are epoch seconds. The key is (run_id, job, kind); `job` is "" for a
    run's source snapshot."""

    run_id: str
    job: str
    kind: str
    name: str
    manifest: str
    size: int
    files: int
    pipeline: str
    created_at: float
    expire_at: float | None
    last_access: float
    holders: frozenset[str] = field(default_factory=frozenset)
    complete: bool = False

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.run_id, self.job, self.kind)


class ArtifactIndex(Protocol):
    """Records, refcounts, tombstones and the collector lock; every method is atomic."""

    def reserve(self, record: ArtifactRecord, digests: Collection[str]) -> set[str]:
        """Store `record` (incomplete) and add one reference to each distinct digest in
        `digests` (which includes the manifest's). Re-reserving the same key first releases
        the old record's references. Returns the digests that are tombstoned right now."""
        ...

    def complete(self, run_id: str, job: str, kind: str) -> None:
        """Mark a reserved record complete (its objects are all uploaded) and each of its
        digests *present*: stored, and staying so until a collector tombstones it."""
        ...

    def present(self, digests: Sequence[str]) -> set[str]:
        """Which of `digests` a complete record has confirmed stored and no collector is
        deleting. Checked *after* `reserve` (which holds them), a present object cannot
        disappear, so the uploader skips it without asking the store."""
        ...

    def forget(self, digest: str) -> None:
        """Clear an object's present mark: it was found corrupt or missing and deleted, so the
        next upload of that content must store it again."""
        ...

    def digests(self, run_id: str, job: str, kind: str) -> set[str]:
        """The digests a record references (empty for an unknown record)."""
        ...

    def get(self, run_id: str, job: str | None = None, kind: str | None = None) -> list[ArtifactRecord]:
        """A run's complete records, optionally only one job's and/or one kind; sorted by (job, kind)."""
        ...

    def touch(self, run_id: str, job: str, kind: str, at: float) -> None:
        """Set a record's last-access time (a download happened)."""
        ...

    def records(self) -> Iterator[ArtifactRecord]:
        """Every record, complete or not (for the collector)."""
        ...

    def delete(self, run_id: str, job: str, kind: str) -> list[str]:
        """Remove a record and drop one reference from each of its digests; returns the
        digests whose count reached zero. Unknown keys are a no-op returning []."""
        ...

    def refcounts(self, digests: Sequence[str]) -> dict[str, int]:
        """The current reference count of each digest (0 when unknown)."""
        ...

    def begin_delete(self, digest: str, ttl_s: float = TOMBSTONE_TTL_S) -> bool:
        """Tombstone `digest` if its count is zero (True); False when it is referenced."""
        ...

    def end_delete(self, digest: str) -> None:
        """Remove the tombstone once the object is gone from the store."""
        ...

    def tombstoned(self, digests: Sequence[str]) -> set[str]:
        """Which of `digests` are tombstoned right now."""
        ...

    def acquire_lock(self, name: str, owner: str, ttl_s: float) -> bool:
        """Take the named lock for `owner` unless someone else holds an unexpired one."""
        ...

    def release_lock(self, name: str, owner: str) -> None:
        """Release the lock if `owner` still holds it."""
        ...

    def close(self) -> None: ...
