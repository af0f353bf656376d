"""What the CLI shows of a run's artifacts: records from the index, members from manifests."""
from __future__ import annotations

import logging
from typing import Any, Callable

from shared.artifacts.index.base import ArtifactIndex, ArtifactRecord
from shared.state.base import iso_ms

log = logging.getLogger("conveyor.cli")


def record_json(record: ArtifactRecord) -> dict[str, Any]:
    return {
        "job": record.job, "kind": record.kind, "name": record.name, "manifest": record.manifest,
        "files": record.files, "size": record.size,
        "created_at": iso_ms(record.created_at * 1000),
        "expire_at": iso_ms(record.expire_at * 1000) if record.expire_at else None,
        "last_access": iso_ms(record.last_access * 1000),
    }


def members_by_job(store, index: ArtifactIndex) -> Callable[[str], dict[str, list[dict[str, Any]]]]:
    """For `status --format json`: each job's artifact members (path, sha256, size)."""
    from shared.artifacts.manifest import Manifest

    def lookup(run_id: str) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for record in index.get(run_id, kind="artifact"):
            try:
                manifest = Manifest.from_bytes(store.get_bytes(record.manifest))
            except Exception as exc:  # the status must still show; say what is wrong
                log.warning("artifact manifest %s of %s unreadable: %s", record.manifest, record.job, exc)
                out.setdefault(record.job, []).append({"path": None, "sha256": record.manifest, "size": record.size,
                                                       "error": str(exc)})
                continue
            out.setdefault(record.job, []).extend(
                {"path": e.path, "sha256": e.sha256, "size": e.size, **({"link_target": e.link_target}
                                                                          if e.is_symlink else {})}
                for e in manifest.entries
            )
        return out

    return lookup
