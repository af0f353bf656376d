"""A run's full status JSON (jobs, artifacts, deployments): `conveyor status RUN --format
json` and the server's `GET /api/v1/runs/{run}` answer with this one document."""
from __future__ import annotations

import re
from typing import Any

from coordinator import status_view
from shared.config import Settings
from shared.state.base import StateStore

# What a run id may look like before it is used as a key or a path part (generated ones
# are `YYYYMMDD-HHMMSS-hex`): hostile input never reaches a store or a file name.
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def is_run_id(text: str) -> bool:
    """Whether ``text`` can be a run id at all (no separators, no dot-dot, not empty)."""
    return bool(_RUN_ID.match(text)) and ".." not in text


def full_status_json(settings: Settings, store: StateStore, run_id: str) -> dict[str, Any] | None:
    """The run, its jobs with their artifacts and deployment records, and its trigger; None
    when the run is unknown."""
    from coordinator.artifact_view import members_by_job
    from deploy.view import deployment_extras
    from shared.artifacts import open_store
    from shared.artifacts.index import open_index

    artifact_store = open_store(settings.effective_artifacts_url, endpoint_url=settings.s3_endpoint_url)
    index = open_index(settings.effective_state_url)
    view = status_view.status_json(store, run_id, artifacts=members_by_job(artifact_store, index),
                                   extras=deployment_extras(store))
    if view is not None:
        run = store.get_run(run_id)
        trigger = (run.meta or {}).get("trigger") if run is not None else None
        if trigger is not None:
            view["trigger"] = trigger
    return view
