"""A state store whose `get_plan` remembers: a run's plan never changes once stored.

A 500-job plan is a few hundred KB of JSON, and parsing it was most of the time of
`GET /api/v1/runs/{run}` (twice per request: job order and deployment views). Plans are
immutable, so a cache is always right, on every replica, without invalidation; it is
bounded (least recently used) so a server's memory does not grow with its history.
Callers must treat the returned dict as read-only (every reader in the server does).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from shared.state.base import StateStore

DEFAULT_PLANS = 64


class PlanCachingStore:
    """Wraps a `StateStore`: `get_plan` is cached, every other call goes through."""

    def __init__(self, store: StateStore, size: int = DEFAULT_PLANS) -> None:
        self._store = store
        self._size = size
        self._plans: OrderedDict[str, dict] = OrderedDict()
        self._lock = threading.Lock()

    def get_plan(self, run_id: str) -> dict:
        with self._lock:
            plan = self._plans.get(run_id)
            if plan is not None:
                self._plans.move_to_end(run_id)
                return plan
        plan = self._store.get_plan(run_id)  # raises UnknownRun: nothing cached for a miss
        with self._lock:
            self._plans[run_id] = plan
            while len(self._plans) > self._size:
                self._plans.popitem(last=False)
        return plan

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)
