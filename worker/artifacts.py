"""A job's traffic with the artifact store: source and inputs in, artifacts and log out.

Failures are sorted so the job ends with the right reason: a path that would leave the
workspace is the job's own doing (`script_failure`, not retried: it would do the same
again), bytes that do not match their hash after the store's own retries are an
`integrity_error`, and anything else (store unreachable, disk full) is `infrastructure`,
which the runner retries.
"""
from __future__ import annotations

import errno
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from shared.artifacts.base import IntegrityError, ObjectStore, PathError
from shared.artifacts.index.base import ArtifactIndex, ArtifactRecord
from shared.artifacts.manifest import ManifestEntry, build_manifest, links_leaving
from shared.artifacts.publish import fetch_record, publish_file, publish_manifest
from shared.plan import Job, Plan
from shared.state.base import RunRecord
from shared.units import human_size
from worker.logs import LogSink

log = logging.getLogger("conveyor.worker.artifacts")

LINKS_NAMED = 3  # links named in the "kept N symlinks" log line; the rest is "..."


class ArtifactFailure(Exception):
    """Moving artifacts failed the job; `reason` is the job's failure reason."""

    def __init__(self, reason: str, message: str, retryable: bool):
        super().__init__(message)
        self.reason = reason
        self.retryable = retryable


@dataclass
class ArtifactAccess:
    """The store and index of a worker, opened on first use (most jobs never need them)."""

    artifacts_url: str
    state_url: str
    s3_endpoint_url: str | None = None
    expire_in_s: int = 0
    _store: ObjectStore | None = field(default=None, repr=False)
    _index: ArtifactIndex | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _reported: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def store(self) -> ObjectStore:
        with self._lock:
            if self._store is None:
                from shared.artifacts import open_store

                self._store = open_store(self.artifacts_url, endpoint_url=self.s3_endpoint_url)
            return self._store

    @property
    def index(self) -> ArtifactIndex:
        with self._lock:
            if self._index is None:
                from shared.artifacts.index import open_index

                self._index = open_index(self.state_url)
            return self._index

    def report_transfers(self) -> None:
        """Add what the store moved since the last report to the worker's metrics (each byte once,
        however many jobs share the store)."""
        from worker import metrics

        with self._lock:
            if self._store is None:
                return
            now = self._store.counters.snapshot()
            before, self._reported = self._reported, now
        metrics.artifact_bytes("up", now["bytes_uploaded"] - before.get("bytes_uploaded", 0))
        metrics.artifact_bytes("down", now["bytes_downloaded"] - before.get("bytes_downloaded", 0))
        metrics.artifact_dedup_hits(now["dedup_hits"] - before.get("dedup_hits", 0))

    def expire_at(self, job_expire_in: int | None, now: float) -> float | None:
        seconds = job_expire_in if job_expire_in is not None else self.expire_in_s
        return now + seconds if seconds else None


def _classify(action: str, exc: BaseException) -> ArtifactFailure:
    if isinstance(exc, ArtifactFailure):
        return exc
    if isinstance(exc, PathError):
        return ArtifactFailure("script_failure", f"{action}: {exc}", retryable=False)
    if isinstance(exc, IntegrityError):
        return ArtifactFailure("integrity_error", f"{action}: integrity check failed: {exc}", retryable=False)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {exc.filename}" if exc.filename else ""
        return ArtifactFailure("infrastructure", f"{action}: no space left on device{where}", retryable=True)
    return ArtifactFailure("infrastructure", f"{action}: {type(exc).__name__}: {exc}", retryable=True)


def _guarded(action: str, fn: Callable[[], object]) -> object:
    try:
        return fn()
    except Exception as exc:  # botocore and connection errors share no base class with ours
        raise _classify(action, exc) from exc


def fetch_inputs(access: ArtifactAccess, plan: Plan, job: Job, run: RunRecord, workspace: Path,
                 sink: LogSink) -> None:
    """Fill a fresh workspace: the run's source snapshot, then each dependency's artifacts.

    Dependencies are the job's direct `depends_on` (as GitLab's `needs:`); a dependency
    that produced nothing (skipped, failed, or no matching files) contributes nothing.
    """
    workspace.mkdir(parents=True, exist_ok=True)
    if run.meta.get("source_manifest"):
        _fetch_kind(access, run.run_id, "", "source", workspace, sink, "source")
    for dependency in job.depends_on:
        _fetch_kind(access, run.run_id, dependency, "artifact", workspace, sink, f"artifacts of {dependency}")


def _fetch_kind(access: ArtifactAccess, run_id: str, job: str, kind: str, workspace: Path, sink: LogSink,
                what: str) -> None:
    started = time.monotonic()
    records = _guarded(f"looking up {what}", lambda: access.index.get(run_id, job, kind))
    for record in records:  # type: ignore[union-attr]
        _guarded(f"downloading {what}", lambda: fetch_record(access.store, access.index, record, workspace))
        sink.system(f"downloaded {what}: {record.files} file(s), {human_size(record.size)} "
                    f"in {time.monotonic() - started:.1f}s")
        access.report_transfers()


def publish_outputs(access: ArtifactAccess, plan: Plan, job: Job, run: RunRecord, workspace: Path,
                    sink: LogSink) -> ArtifactRecord | None:
    """Store the files matching `artifacts.paths` after the job succeeded; None if none matched."""
    if not job.artifacts.paths:
        return None
    started = time.monotonic()
    manifest = _guarded("collecting artifacts", lambda: build_manifest(workspace, list(job.artifacts.paths)))
    if not manifest.entries:  # type: ignore[union-attr]
        sink.system(f"warning: no files match artifacts.paths {list(job.artifacts.paths)}; nothing uploaded")
        return None
    leaving = _guarded("collecting artifacts", lambda: links_leaving(workspace, manifest))  # type: ignore[arg-type]
    if leaving:
        sink.system(kept_links_line(leaving))  # type: ignore[arg-type]
    now = time.time()
    template = ArtifactRecord(
        run_id=run.run_id, job=job.name, kind="artifact", name=job.artifacts.name or job.name, manifest="",
        size=0, files=0, pipeline=plan.pipeline, created_at=now,
        expire_at=access.expire_at(job.artifacts.expire_in_seconds, now), last_access=now,
        holders=frozenset(plan.dependents.get(job.name, ())),
    )
    before = access.store.counters.snapshot()
    record = _guarded("uploading artifacts",
                      lambda: publish_manifest(access.store, access.index, workspace, manifest, template))
    after = access.store.counters.snapshot()
    access.report_transfers()
    sink.system(
        f"uploaded artifacts: {record.files} file(s), {human_size(record.size)} "  # type: ignore[union-attr]
        f"({human_size(after['bytes_uploaded'] - before['bytes_uploaded'])} new) "
        f"in {time.monotonic() - started:.1f}s"
    )
    return record  # type: ignore[return-value]


def kept_links_line(leaving: list[ManifestEntry]) -> str:
    """The one log line about symlinks kept as links although they point outside the workspace."""
    named = ", ".join(f"{_printable(e.path)} -> {_printable(e.link_target or '')}" for e in leaving[:LINKS_NAMED])
    more = ", ..." if len(leaving) > LINKS_NAMED else ""
    noun = "symlink" if len(leaving) == 1 else "symlinks"
    return (f"artifacts: kept {len(leaving)} {noun} pointing outside the workspace as links "
            f"({named}{more})")


def _printable(text: str, limit: int = 200) -> str:
    """`text` on one line, at most `limit` characters: control characters and undecodable
    bytes escaped (a link's path and target are the job's text, up to 4 KiB each, and one
    log line must stay one short line)."""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return "".join(c if c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF else repr(c)[1:-1] for c in text)


def archive_log(access: ArtifactAccess, plan: Plan, job: Job, run: RunRecord, full_log: Path) -> None:
    """Keep the job's full (uncapped, masked) log in the store; a failure here fails nothing."""
    if not full_log.is_file():
        return
    now = time.time()
    template = ArtifactRecord(
        run_id=run.run_id, job=job.name, kind="log", name=full_log.name, manifest="", size=0, files=1,
        pipeline=plan.pipeline, created_at=now, expire_at=access.expire_at(None, now), last_access=now,
    )
    try:
        publish_file(access.store, access.index, full_log, template)
    except Exception as exc:
        log.warning("archiving the log of %s/%s failed: %s", run.run_id, job.name, exc)
