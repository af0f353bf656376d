"""A run's artifacts over the API (docs/server.md, "Artifacts"): the list of what its jobs
stored, and one stored file at a time, verified against its digest as it streams.

A requested path is only ever a key looked up in the artifact's manifest, never joined to
a directory: objects are read by digest from the content-addressed store. Paths that could
not be a member (absolute, `..`, NUL, backslashes, not normalised) are refused before any
store is asked.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import re
import threading
import time
from collections.abc import Iterator
from typing import Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse

from coordinator.artifact_view import record_json
from coordinator.server.common import ApiError, Services, known_run, requires, services
from shared.artifacts.base import ArtifactError, ObjectNotFound, ObjectStore, PathError
from shared.artifacts.index.base import ArtifactIndex, ArtifactRecord
from shared.artifacts.manifest import Manifest, ManifestEntry, check_member_path
from shared.tokens import Token

router = APIRouter()
log = logging.getLogger("conveyor.server")
_open_lock = threading.Lock()


class CorruptObject(Exception):
    """Stored bytes that do not hash to their digest: the response is cut, not completed."""


def member_json(entry: ManifestEntry) -> dict[str, Any]:
    """One member of an artifact as the list shows it (enough to rebuild its manifest)."""
    item: dict[str, Any] = {"path": entry.path, "digest": entry.sha256, "size": entry.size, "mode": entry.mode}
    if entry.is_symlink:
        item["link_target"] = entry.link_target
    return item


@router.get("/api/v1/runs/{run_id}/artifacts")
def list_artifacts(run_id: str, request: Request, all_kinds: int = Query(0, alias="all"),
                   _: Token = Depends(requires("read")),
                   svc: Services = Depends(services)) -> list[dict[str, Any]]:
    """The run's artifact records (`conveyor artifacts ls --format json`), each with its
    `members`: path, digest, size, mode (and `link_target` for a symlink). `?all=1` adds
    the source snapshot and archived logs (without members)."""
    known_run(svc, run_id)
    store, index = _artifact_stores(request, svc)
    items = []
    for record in index.get(run_id):
        if record.kind != "artifact" and not all_kinds:
            continue
        item = record_json(record)
        if record.kind == "artifact":
            item["members"] = [member_json(e) for e in _manifest(store, record).entries]
        items.append(item)
    return items


@router.get("/api/v1/runs/{run_id}/artifacts/{job}/{path:path}", response_model=None,
            response_class=StreamingResponse)
def get_artifact(run_id: str, job: str, path: str, request: Request,
                 kind: Literal["artifact", "log"] = "artifact", _: Token = Depends(requires("read")),
                 svc: Services = Depends(services)) -> Response:
    """One file of a job's artifact (`?kind=log`: the job's archived log, by its file name),
    as `application/octet-stream`. Its bytes are hashed as they go out and the last chunk is
    held back until they match the digest: a corrupt object ends in a cut connection (the
    client sees fewer bytes than Content-Length), never in a clean end."""
    known_run(svc, run_id)
    if "\\" in path:
        raise ApiError(400, "bad_request", "an artifact path uses '/' only")
    try:
        check_member_path(path)
    except PathError:
        raise ApiError(400, "bad_request", "not an artifact path (relative, normalised, no '..')") from None
    if job not in svc.store.get_jobs(run_id):
        raise ApiError(404, "not_found", f"run {run_id!r} has no job {job!r}")
    store, index = _artifact_stores(request, svc)
    records = index.get(run_id, job, kind)
    if not records:
        raise ApiError(404, "not_found", f"job {job!r} of run {run_id!r} has no {'archived log' if kind == 'log' else 'artifacts'}")
    record = records[0]
    digest, size = _member(store, record, path)
    chunks = _object_chunks(store, digest)
    # Small files are read whole before answering: a corrupt one gets a proper error.
    first = next(chunks, b"")
    second = next(chunks, None) if first else None
    if second is None:
        if hashlib.sha256(first).hexdigest() != digest or len(first) != size:
            log.error("artifact %s/%s/%s: stored object %s does not match its digest", run_id, job, path, digest)
            raise ApiError(502, "corrupt", f"{path}: the stored copy does not match its digest "
                                           "(see `conveyor artifacts verify`)")
        body: Iterator[bytes] = iter([first] if first else [])
    else:
        body = _verified([first, second], chunks, digest, size, f"{run_id}/{job}/{path}")
    index.touch(run_id, job, kind, time.time())  # retention policies go by last access
    headers = {"Content-Length": str(size), "Content-Disposition": _attachment(path),
               "X-Content-Type-Options": "nosniff", "Cache-Control": "private, no-store",
               "X-Conveyor-Digest": f"sha256:{digest}"}
    return StreamingResponse(body, media_type="application/octet-stream", headers=headers)


def _member(store: ObjectStore, record: ArtifactRecord, path: str) -> tuple[str, int]:
    """(digest, size) of ``path`` in ``record``."""
    if record.kind == "log":
        # A log record is one file, the log itself; its name is the stored file's name.
        if path != record.name.rsplit("/", 1)[-1]:
            raise ApiError(404, "not_found", f"the archived log of {record.job!r} is {record.name.rsplit('/', 1)[-1]!r}")
        return record.manifest, record.size
    entry = next((e for e in _manifest(store, record).entries if e.path == path), None)
    if entry is None:
        raise ApiError(404, "not_found", f"artifact of {record.job!r} has no file {path!r}")
    if entry.is_symlink or entry.sha256 is None:
        raise ApiError(404, "not_found", f"{path!r} is a symbolic link (to {entry.link_target!r}), not a file")
    return entry.sha256, entry.size


def _manifest(store: ObjectStore, record: ArtifactRecord) -> Manifest:
    try:
        return Manifest.from_bytes(store.get_bytes(record.manifest))
    except (ArtifactError, ValueError) as exc:
        log.error("artifact manifest %s of %s/%s unreadable: %s", record.manifest, record.run_id, record.job, exc)
        raise ApiError(502, "corrupt", f"the manifest of {record.job!r}'s artifact is unreadable") from None


def _object_chunks(store: ObjectStore, digest: str) -> Iterator[bytes]:
    # `_read_chunks` is the backends' one streaming read (the public reads write a file or
    # hold the whole object); verification is done here, as the chunks go out.
    chunks = store._read_chunks(digest)  # type: ignore[attr-defined]

    def guarded() -> Iterator[bytes]:
        try:
            yield from chunks
        except ObjectNotFound:
            raise ApiError(404, "not_found", "the stored file is gone (collected or deleted)") from None

    return guarded()


def _verified(head: list[bytes], rest: Iterator[bytes], digest: str, size: int, what: str) -> Iterator[bytes]:
    """The chunks as they come, hashing them, holding the last one back until the hash and
    the size are right; otherwise raise, which aborts the response mid-body."""
    sha = hashlib.sha256()
    received = 0
    held: bytes | None = None
    for chunk in itertools.chain(head, rest):
        sha.update(chunk)
        received += len(chunk)
        if received > size:
            break
        if held is not None:
            yield held
        held = chunk
    if received != size or sha.hexdigest() != digest:
        log.error("artifact %s: stored object %s does not match its digest or size; download cut", what, digest)
        raise CorruptObject(f"{what}: stored object {digest} is corrupt")
    if held is not None:
        yield held


_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def _attachment(path: str) -> str:
    """`attachment` with the member's last name: an ASCII fallback without quotes, slashes
    or controls, and the exact name percent-encoded (RFC 6266 / 5987)."""
    name = path.rsplit("/", 1)[-1]
    plain = _SAFE_NAME.sub("_", name)
    if plain.strip(".") == "":
        plain = "artifact"
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(name, safe='')}"


def _artifact_stores(request: Request, svc: Services) -> tuple[ObjectStore, ArtifactIndex]:
    """The artifact store and index, opened once per app (both are safe across threads)."""
    from shared.artifacts import open_store
    from shared.artifacts.index import open_index

    state = request.app.state
    with _open_lock:
        opened = getattr(state, "artifact_stores", None)
        if opened is None:
            settings = svc.settings
            opened = (open_store(settings.effective_artifacts_url, endpoint_url=settings.s3_endpoint_url),
                      open_index(settings.effective_state_url))
            state.artifact_stores = opened
    return opened
