"""Deployment strategies: pure state-machine steps over a deployment record.

`advance(record, observation, now_ms)` returns the next record: requests (abort,
rollback, a cancelled run) first, then the strategy's own step, then, once aborting or
rolling back, the shared restore step. Nothing here touches a socket or a process.
"""
from __future__ import annotations

import copy

from deploy.record import ABORTING, QUEUED, ROLLING_BACK, TERMINAL, Record
from deploy.strategies import blue_green, canary, rolling
from deploy.strategies.base import Observation, finish_restore, handle_requests, restore

STRATEGIES = {"rolling": rolling, "blue_green": blue_green, "canary": canary}

__all__ = ["Observation", "advance", "STRATEGIES"]


def advance(record: Record, obs: Observation, now_ms: int) -> Record:
    """The record after one decision step (the input is not modified)."""
    rec = copy.deepcopy(record)
    if rec["state"] == QUEUED or rec["state"] in TERMINAL:
        return rec
    handle_requests(rec, obs, now_ms)
    if rec["state"] not in (ABORTING, ROLLING_BACK):
        STRATEGIES[rec["strategy"]].advance(rec, obs, now_ms)
    if rec["state"] in (ABORTING, ROLLING_BACK) and restore(rec, obs, now_ms):
        finish_restore(rec, now_ms)
    return rec
