"""The periodic artifact collection every worker offers; the `artifacts-gc` lock lets one run at a time.

Each worker wakes every `gc_interval` seconds (jittered, so a fleet started together does
not knock on the lock at once) and runs `shared.artifacts.gc.collect`; whoever holds the
lock collects, the others skip. Decisions go to the `conveyor.artifacts.gc` logger.
"""
from __future__ import annotations

import logging
import random
import threading

from shared.config import Settings

log = logging.getLogger("conveyor.artifacts.gc")


def collect_once(settings: Settings, owner: str):
    """One collection with the configured policies; returns the report."""
    from shared.artifacts import open_store
    from shared.artifacts.gc import collect, held_by_pending_jobs
    from shared.artifacts.index import open_index
    from shared.artifacts.retention import parse_policies
    from shared.state import open_state

    policies = parse_policies(list(settings.retention), "conveyor.toml")
    store = open_store(settings.effective_artifacts_url, endpoint_url=settings.s3_endpoint_url)
    index = open_index(settings.effective_state_url)
    state = open_state(settings.effective_state_url)
    try:
        return collect(store, index, policies, held_by_pending_jobs(state), owner=owner)
    finally:
        index.close()
        state.close()


def start_periodic_gc(settings: Settings, owner: str, stop: threading.Event | None = None) -> threading.Thread | None:
    """Start the collection thread (daemon); None when `gc_interval` is 0."""
    if settings.gc_interval <= 0:
        return None
    stop = stop or threading.Event()

    def loop() -> None:
        while not stop.wait(settings.gc_interval * random.uniform(0.8, 1.2)):
            try:
                report = collect_once(settings, owner)
            except Exception as exc:  # a store outage must not kill the worker's collector
                log.warning("artifact collection failed: %s", exc)
                continue
            if not report.skipped:
                log.info("artifact collection: %s", report.summary())

    thread = threading.Thread(target=loop, name="conveyor-artifact-gc", daemon=True)
    thread.start()
    return thread
