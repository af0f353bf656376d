"""Moving trees through the store *and* the index: what jobs and the CLI call.

`upload_tree`/`download_tree` only move bytes. Here every stored tree also gets an index
record, reserved before its first object is uploaded (so a collector never sees one of its
objects at zero references) and completed after its manifest is stored (so readers never
see a record whose objects are missing).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from shared.artifacts.base import ObjectInfo, ObjectStore, hash_file
from shared.artifacts.index.base import TOMBSTONE_TTL_S, ArtifactIndex, ArtifactRecord
from shared.artifacts.manifest import DEFAULT_WORKERS, Manifest, ManifestEntry, _parallel, download_tree

TOMBSTONE_POLL_S = 0.2


def publish_manifest(store: ObjectStore, index: ArtifactIndex, root: Path, manifest: Manifest,
                     record: ArtifactRecord, workers: int = DEFAULT_WORKERS) -> ArtifactRecord:
    """Upload `manifest`'s files from `root` and record it; returns the completed record.

    `record` supplies the identity and times; manifest digest, size and file count are
    filled in here.
    """
    data = manifest.to_bytes()
    manifest_info = ObjectInfo(hashlib.sha256(data).hexdigest(), len(data))
    unique: dict[str, ManifestEntry] = {}
    for entry in manifest.files:
        unique.setdefault(entry.sha256, entry)  # type: ignore[arg-type]
    record = replace(record, manifest=manifest_info.digest, size=manifest.total_size,
                     files=len(manifest.entries), complete=False)
    digests = [*unique, manifest_info.digest]
    dying = index.reserve(record, digests)
    if dying:
        # A collector is deleting some of these right now: `has()` may still say yes and
        # the object vanish a moment later. Wait for the deletions, then upload afresh.
        _wait_for_tombstones(index, dying)
    # Our reservation holds these now, so what the index knows to be stored stays stored.
    known = index.present(digests)
    missing = [e for d, e in unique.items() if d not in known]
    store.counters.add(dedup_hits=len(unique) - len(missing))
    # Not known to the index: almost always new, so small ones skip the existence probe.
    _parallel(lambda e: store.put_file(root / e.path, e.sha256, probe=False), missing, workers)
    if manifest_info.digest in known:
        store.counters.add(dedup_hits=1)
    else:
        store.put_bytes(data)
    index.complete(record.run_id, record.job, record.kind)
    return replace(record, complete=True)


def publish_file(store: ObjectStore, index: ArtifactIndex, path: Path, record: ArtifactRecord) -> ArtifactRecord:
    """Store one file (a job's log) as its own record; `manifest` is the file's digest."""
    info = hash_file(path)
    record = replace(record, manifest=info.digest, size=info.size, files=1, complete=False)
    dying = index.reserve(record, [info.digest])
    if dying:
        _wait_for_tombstones(index, dying)
    store.put_file(path, info.digest)
    index.complete(record.run_id, record.job, record.kind)
    return replace(record, complete=True)


def fetch_record(store: ObjectStore, index: ArtifactIndex, record: ArtifactRecord, dest: Path,
                 workers: int = DEFAULT_WORKERS) -> Manifest:
    """Recreate a recorded tree under `dest` (verified, path-checked) and note the access."""
    manifest = download_tree(store, record.manifest, dest, workers)
    index.touch(record.run_id, record.job, record.kind, time.time())
    return manifest


def _wait_for_tombstones(index: ArtifactIndex, digests: Sequence[str] | set[str]) -> None:
    pending = set(digests)
    deadline = time.monotonic() + TOMBSTONE_TTL_S
    while pending and time.monotonic() < deadline:
        time.sleep(TOMBSTONE_POLL_S)
        pending = index.tombstoned(sorted(pending))
