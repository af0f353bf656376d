"""Runs for the state store tests: `new_run` creates one with the given jobs."""
from __future__ import annotations

import itertools

from shared.state import JobMeta, StateStore

_run_ids = itertools.count(1)


def new_run(store: StateStore, *jobs: str, allow_failure: tuple[str, ...] = (), meta: dict | None = None) -> str:
    """Create a run with the given jobs (default: one job `build`); returns its id."""
    run_id = f"run-{next(_run_ids)}"
    names = jobs or ("build",)
    store.create_run(
        run_id,
        "demo",
        {name: JobMeta(allow_failure=name in allow_failure) for name in names},
        {"levels": [list(names)]},
        meta or {},
    )
    return run_id
