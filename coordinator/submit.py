"""Submitting a run: compile with its run id, record it in the state store, send the canvas."""
from __future__ import annotations

import getpass
import secrets as random_tokens
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from coordinator.frontend import LoadResult, load_file
from shared.config import Settings
from shared.plan import Plan

if TYPE_CHECKING:
    from shared.artifacts.manifest import Manifest


def new_run_id() -> str:
    """Sortable by time, unique without coordination: 20261127-015301-3f9a1c."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + random_tokens.token_hex(3)


class SubmitError(Exception):
    """The run could not be submitted (its source could not be stored); nothing was recorded."""


@dataclass(frozen=True)
class Submission:
    run_id: str
    plan: Plan


def compile_run(pipeline_file: str | Path, parameters: Mapping[str, str]) -> tuple[str, LoadResult]:
    """A fresh run id and the pipeline compiled for it (`CONVEYOR_RUN_ID` is substituted)."""
    run_id = new_run_id()
    return run_id, load_file(pipeline_file, parameters, run_id=run_id)


def submit(app, store, run_id: str, plan: Plan, pipeline_file: str | Path, parameters: Mapping[str, str],
           source: str | Path | None, settings: Settings | None = None) -> Submission:
    """Record the compiled run and send its canvas; returns at once (workers carry the run).

    With `settings`, the source tree is first stored as a snapshot in the artifact store, so
    workers on any machine build exactly these files; without, workers copy it from its path
    (one machine only).
    """
    from coordinator.canvas import send_canvas
    from shared.state.base import JobMeta

    source_dir = (Path(source) if source else Path(pipeline_file).resolve().parent).resolve()
    snapshot = snapshot_source(settings, run_id, plan, source_dir) if settings is not None else {}
    store.create_run(
        run_id,
        plan.pipeline,
        {name: JobMeta(allow_failure=job.allow_failure) for name, job in plan.jobs.items()},
        plan.to_dict(),
        {
            **snapshot,
            "source": str(source_dir),
            "pipeline_file": str(Path(pipeline_file).resolve()),
            "timeout": plan.timeout,
            "submitted_by": _user(),
            "parameters": sorted(parameters),  # names only: values may be sensitive
        },
    )
    send_canvas(app, plan, run_id)
    return Submission(run_id, plan)


def snapshot_source(settings: Settings, run_id: str, plan: Plan, source_dir: Path) -> dict[str, object]:
    """Store `source_dir` (see shared/artifacts/source.py) and return what the run records of it."""
    from shared.artifacts.base import PathError
    from shared.artifacts.source import source_manifest

    try:
        manifest = source_manifest(source_dir, exclude=settings.data_dir)
    except PathError as exc:
        raise SubmitError(f"source {source_dir}: {exc}; hint: workers rebuild the tree elsewhere, so links "
                          "must be relative and stay inside it (or pass another --source)") from None
    return publish_source(settings, run_id, plan, source_dir, manifest, str(source_dir))


def publish_source(settings: Settings, run_id: str, plan: Plan, root: Path, manifest: Manifest,
                   what: str) -> dict[str, object]:
    """Store the tree ``manifest`` describes under ``root`` as the run's source record (job "",
    kind "source", every job a holder, the configured expiry); the meta keys the run keeps.

    Used for a directory (`snapshot_source`) and for a commit exported from a git mirror.
    """
    from shared.artifacts import open_store
    from shared.artifacts.index import open_index
    from shared.artifacts.index.base import ArtifactRecord
    from shared.artifacts.publish import publish_manifest
    from shared.celery_app import redacted

    now = time.time()
    expire_in = settings.artifacts_expire_in
    try:
        store = open_store(settings.effective_artifacts_url, endpoint_url=settings.s3_endpoint_url)
        index = open_index(settings.effective_state_url)
        try:
            record = publish_manifest(store, index, root, manifest, ArtifactRecord(
                run_id=run_id, job="", kind="source", name="source", manifest="", size=0, files=0,
                pipeline=plan.pipeline, created_at=now, expire_at=now + expire_in if expire_in else None,
                last_access=now, holders=frozenset(plan.jobs),
            ))
        finally:
            index.close()
    except Exception as exc:  # S3 or Redis unreachable, bad credentials, disk full
        raise SubmitError(f"storing the source snapshot of {what} in {redacted(settings.effective_artifacts_url)} "
                          f"failed: {type(exc).__name__}: {exc}") from None
    counters = store.counters.snapshot()
    return {"source_manifest": record.manifest, "source_files": record.files, "source_bytes": record.size,
            "source_uploaded_bytes": counters["bytes_uploaded"]}


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"
