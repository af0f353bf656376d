"""The artifact index: records, refcounts, tombstones and the collector lock, in the state store's backend.

`open_index(url)` takes the same URLs as `shared.state.open_state`: `redis://` / `rediss://`
(distributed mode) or `sqlite:///path` (embedded mode, the same file as the state store).
The contract is `ArtifactIndex` in base.py; the checks below are shared by both backends so
they refuse the same inputs.
"""
from __future__ import annotations

import math
import re
from typing import Collection

from shared.artifacts.base import check_digest
from shared.artifacts.index.base import (
    KINDS,
    STALE_RESERVATION_S,
    TOMBSTONE_TTL_S,
    ArtifactIndex,
    ArtifactRecord,
)
from shared.state import state_backend
from shared.state.base import check_run_id

__all__ = [
    "KINDS", "STALE_RESERVATION_S", "TOMBSTONE_TTL_S", "ArtifactIndex", "ArtifactRecord", "UnknownRecord",
    "open_index",
]

# Lock names become Redis key names.
LOCK_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# Sizes and file counts are stored as SQLite INTEGERs (64-bit signed).
MAX_COUNT = 2**63 - 1


class UnknownRecord(LookupError):
    """`complete` named a record that is not reserved (never reserved, or collected as stale)."""

    def __init__(self, run_id: str, job: str, kind: str) -> None:
        super().__init__(run_id, job, kind)
        self.key = (run_id, job, kind)

    def __str__(self) -> str:
        run_id, job, kind = self.key
        return f"no reserved {kind} record for run {run_id} job {job!r} (collected as a stale reservation?)"


def open_index(state_url: str) -> ArtifactIndex:
    """Open the artifact index stored beside the run state at `state_url`."""
    backend, where = state_backend(state_url)
    if backend == "redis":
        from shared.artifacts.index.redis import RedisArtifactIndex

        return RedisArtifactIndex(where)
    from shared.artifacts.index.sqlite import SQLiteArtifactIndex

    return SQLiteArtifactIndex(where)


# -- checks shared by both backends ----------------------------------------------------

def check_key(run_id: str, job: str, kind: str) -> None:
    """Refuse a record key either backend could not store safely."""
    check_run_id(run_id)
    if not isinstance(job, str):
        raise TypeError(f"job must be a string, got {type(job).__name__}")
    if kind not in KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}; expected one of {sorted(KINDS)}")


def check_seconds(what: str, value: float) -> None:
    """Refuse a time or TTL that is not a finite number of seconds. NaN would be stored as
    NULL by SQLite (refused, or read back as "never expires") and as "nan" by Redis, and an
    infinite TTL overflows Redis's milliseconds while SQLite would keep it forever."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value!r}")


def check_record(record: ArtifactRecord) -> None:
    """Refuse a record either backend could not store, or would store differently."""
    check_key(record.run_id, record.job, record.kind)
    for what in ("size", "files"):
        value = getattr(record, what)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{what} must be an int, got {type(value).__name__}")
        if not 0 <= value <= MAX_COUNT:
            raise ValueError(f"{what} {value} outside [0, {MAX_COUNT}]")
    check_seconds("created_at", record.created_at)
    check_seconds("last_access", record.last_access)
    if record.expire_at is not None:
        check_seconds("expire_at", record.expire_at)


def reserved_digests(record: ArtifactRecord, digests: Collection[str]) -> list[str]:
    """Check `record`; the distinct digests its reservation references, sorted, always
    including the manifest's.

    The manifest is added even when the caller forgot it: an unreferenced manifest would be
    collected while the record still points at it.
    """
    check_record(record)
    if isinstance(digests, str):
        raise TypeError("digests must be a collection of digests, not one string")
    wanted = {check_digest(d) for d in digests}
    wanted.add(check_digest(record.manifest))
    return sorted(wanted)


def check_lock_name(name: str) -> None:
    """Refuse lock names that could not be embedded in a key name."""
    if not isinstance(name, str) or not LOCK_NAME_PATTERN.fullmatch(name):
        raise ValueError(f"invalid lock name {name!r}: expected {LOCK_NAME_PATTERN.pattern}")
