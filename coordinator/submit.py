"""Submitting a run: compile with its run id, record it in the state store, send the canvas."""
from __future__ import annotations

import getpass
import secrets as random_tokens
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from coordinator.frontend import LoadResult, load_file
from shared.plan import Plan


def new_run_id() -> str:
    """Sortable by time, unique without coordination: 20261127-015301-3f9a1c."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + random_tokens.token_hex(3)


@dataclass(frozen=True)
class Submission:
    run_id: str
    plan: Plan


def compile_run(pipeline_file: str | Path, parameters: Mapping[str, str]) -> tuple[str, LoadResult]:
    """A fresh run id and the pipeline compiled for it (`CONVEYOR_RUN_ID` is substituted)."""
    run_id = new_run_id()
    return run_id, load_file(pipeline_file, parameters, run_id=run_id)


def submit(app, store, run_id: str, plan: Plan, pipeline_file: str | Path, parameters: Mapping[str, str],
           source: str | Path | None) -> Submission:
    """Record the compiled run and send its canvas; returns at once (workers carry the run)."""
    from coordinator.canvas import build_canvas
    from shared.state.base import JobMeta

    source_dir = Path(source) if source else Path(pipeline_file).resolve().parent
    store.create_run(
        run_id,
        plan.pipeline,
        {name: JobMeta(allow_failure=job.allow_failure) for name, job in plan.jobs.items()},
        plan.to_dict(),
        {
            "source": str(source_dir.resolve()),
            "pipeline_file": str(Path(pipeline_file).resolve()),
            "timeout": plan.timeout,
            "submitted_by": _user(),
            "parameters": sorted(parameters),  # names only: values may be sensitive
        },
    )
    build_canvas(app, plan, run_id).apply_async()
    return Submission(run_id, plan)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"
