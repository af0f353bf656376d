"""`concurrency: {group, cancel_in_progress}`: what a new run does to its group, and who goes next.

Spec (server.md): "a new run in the same group cancels the group's running runs when
`cancel_in_progress`, else waits until they end." The server evaluates `group` (it may
use variables: `${CONVEYOR_BRANCH}`), scopes it to the repository, reads the group's
runs, and asks `decide`; when a run of the group ends it asks `next_to_start`.

A run of a group is `running` (it holds the group), `waiting` (created, not started, in
line for the group) or ended (`success`, `failed`, `cancelled`; ignored here). Runs are
ordered by `(created_at, id)` so that every server agrees on the order, ties included.

| `cancel_in_progress` | new run | older runs of the group |
|---|---|---|
| true | starts at once | every running or waiting one is cancelled |
| true, and a NEWER run of the group exists (two deliveries raced) | is cancelled itself (`superseded`): the newest run wins | cancelled as well |
| false | waits if any run of the group is running, or an older one is waiting | untouched |

Choices the spec leaves open: with `cancel_in_progress: false` the waiting runs start one
at a time, oldest first (a FIFO line: every commit gets its run; GitHub Actions instead
keeps only the newest pending run); with `cancel_in_progress: true` the new run does not
wait for the cancelled runs to finish stopping (cancelling is asynchronous, as with
`conveyor cancel`).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Sequence

RUNNING = "running"
WAITING = "waiting"
ACTIVE = frozenset({RUNNING, WAITING})
ENDED = frozenset({"success", "failed", "cancelled"})


@dataclass(frozen=True)
class GroupRun:
    """One run of a concurrency group: `status` is running, waiting, success, failed or cancelled."""

    id: str
    created_at: datetime
    status: str

    def __post_init__(self) -> None:
        if self.status not in ACTIVE | ENDED:
            raise ValueError(f"GroupRun.status: {self.status!r} is not one of "
                             f"{', '.join(sorted(ACTIVE | ENDED))}")


@dataclass(frozen=True)
class ConcurrencyDecision:
    """What to do when a new run joins its group.

    `cancel`: ids of the group's runs to cancel, oldest first (never the new run's id).
    `wait`: the new run waits (status `waiting`) instead of starting.
    `superseded`: a newer run of the group exists and `cancel_in_progress` is true, so
    the new run itself is cancelled instead of started.
    `reason`: one line for the run's events.
    """

    cancel: tuple[str, ...]
    wait: bool
    superseded: bool
    reason: str


def _order(run: GroupRun) -> tuple[datetime, str]:
    return (run.created_at, run.id)


def decide(group_runs: Sequence[GroupRun], new_run: GroupRun, cancel_in_progress: bool) -> ConcurrencyDecision:
    """Decide for `new_run` given the group's runs (`group_runs` may include it and ended runs)."""
    others = sorted((r for r in group_runs if r.id != new_run.id and r.status in ACTIVE), key=_order)
    older = [r for r in others if _order(r) < _order(new_run)]
    newer = [r for r in others if _order(r) > _order(new_run)]
    if cancel_in_progress:
        cancel = tuple(r.id for r in older)
        if newer:
            return ConcurrencyDecision(cancel=cancel, wait=False, superseded=True,
                                       reason=f"superseded by newer run {newer[-1].id} of the group")
        reason = (f"cancels {len(cancel)} older run(s) of the group: {', '.join(cancel)}" if cancel
                  else "no other run in the group")
        return ConcurrencyDecision(cancel=cancel, wait=False, superseded=False, reason=reason)
    blockers = [r for r in others if r.status == RUNNING or (r.status == WAITING and _order(r) < _order(new_run))]
    if blockers:
        return ConcurrencyDecision(cancel=(), wait=True, superseded=False,
                                   reason=f"waits for {', '.join(r.id for r in blockers)} in the group")
    return ConcurrencyDecision(cancel=(), wait=False, superseded=False, reason="no other run in the group")


def next_to_start(group_runs: Sequence[GroupRun]) -> str | None:
    """The waiting run to start now (the oldest), or None while a run of the group is running."""
    if any(r.status == RUNNING for r in group_runs):
        return None
    waiting = sorted((r for r in group_runs if r.status == WAITING), key=_order)
    return waiting[0].id if waiting else None
