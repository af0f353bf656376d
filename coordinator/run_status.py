"""A run's full status JSON (jobs, artifacts, deployments): `conveyor status RUN --format
json` and the server's `GET /api/v1/runs/{run}` answer with this one document."""
from __future__ import annotations

from typing import Any

from coordinator import status_view
from shared.config import Settings
from shared.state.base import RUN_ID_PATTERN, RunRecord, StateStore


def is_run_id(text: str) -> bool:
    """Whether ``text`` can be a run id at all (what the stores enforce: no separators, a
    letter or digit first): hostile input never reaches a store or a file name."""
    return RUN_ID_PATTERN.fullmatch(text) is not None


def open_artifact_view(settings: Settings) -> tuple[Any, Any]:
    """(artifact store, artifact index) for `full_status_json`; a server opens them once."""
    from shared.artifacts import open_store
    from shared.artifacts.index import open_index

    return (open_store(settings.effective_artifacts_url, endpoint_url=settings.s3_endpoint_url),
            open_index(settings.effective_state_url))


def full_status_json(settings: Settings, store: StateStore, run_id: str,
                     artifact_view: tuple[Any, Any] | None = None,
                     run: RunRecord | None = None) -> dict[str, Any] | None:
    """The run, its jobs with their artifacts and deployment records, and its trigger; None
    when the run is unknown. ``artifact_view`` is `open_artifact_view(settings)`, opened
    here when not given (a CLI call opens it once anyway)."""
    from coordinator.artifact_view import members_by_job
    from deploy.view import deployment_extras

    artifact_store, index = artifact_view or open_artifact_view(settings)
    run = run or store.get_run(run_id)
    view = status_view.status_json(store, run_id, artifacts=members_by_job(artifact_store, index),
                                   extras=deployment_extras(store), run=run)
    if view is not None:
        trigger = (run.meta or {}).get("trigger") if run is not None else None
        if trigger is not None:
            view["trigger"] = trigger
    return view
