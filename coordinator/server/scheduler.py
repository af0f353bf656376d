"""`on.schedule`: cron entries fire once per tick across every server.

Each server's watcher calls `Scheduler.tick()` about every second. The schedules are the
`on.schedule` entries of each repository's pipeline file on its default branch, read from
the mirror and refreshed every `REFRESH_S` (a push that changes them takes effect within
that time). For each entry, the due tick comes from the pure `cron.due_ticks` (a server
that was down fires only the most recent missed tick); the first server to claim
`(entry, tick)` in the coordination keys starts the run, at the tip of the entry's branch.

Entry keys are made of the repository, the pipeline file and the entry's own text (cron,
time zone, branch), not its position: reordering entries does not re-fire them.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from coordinator.frontend import load_text
from coordinator.git_mirror import Mirror, MirrorError, branch_ref
from coordinator.server.coordination import claim
from coordinator.server.repositories import Repository
from coordinator.triggers.cron import due_ticks, next_fire
from coordinator.triggers.events import schedule_event
from coordinator.triggers.filters import Schedule

log = logging.getLogger("conveyor.server.schedules")

REFRESH_S = 60.0
CHECK_S = 5.0
TICK_CLAIM_TTL_S = 7 * 86400


@dataclass(frozen=True)
class ScheduleEntry:
    """One `on.schedule` entry of one repository's pipeline."""

    repository: Repository
    schedule: Schedule
    branch: str

    @property
    def key(self) -> str:
        text = "\0".join((self.repository.forge, self.repository.name.lower(), self.repository.pipeline,
                          self.schedule.cron.source, self.schedule.timezone, self.branch))
        return "schedule:" + hashlib.sha256(text.encode()).hexdigest()[:32]

    def next_fire(self, after: datetime) -> datetime:
        return next_fire(self.schedule.cron, after, self.schedule.timezone)


def read_schedules(mirror: Mirror, repository: Repository) -> list[ScheduleEntry]:
    """The entries of ``repository``'s pipeline at the tip of its default branch (fetched now)."""
    sha = mirror.fetch_ref(branch_ref(repository.default_branch))
    text = mirror.read_file(sha, repository.pipeline)
    if text is None:
        return []
    result = load_text(text, repository.pipeline, {})
    if result.on is None:
        return []
    return [ScheduleEntry(repository, entry, entry.branch or repository.default_branch) for entry in result.on.schedule]


class Scheduler:
    """Fires due schedules; `clock` is injectable so tests can move time."""

    def __init__(self, runtime, clock: Callable[[], float] = time.time) -> None:
        self.runtime = runtime
        self.clock = clock
        self.entries: list[ScheduleEntry] = []
        self._refreshed_at = float("-inf")
        self._checked_at = float("-inf")

    def refresh(self) -> None:
        entries: list[ScheduleEntry] = []
        for repository in self.runtime.repositories.all:
            try:
                entries.extend(read_schedules(self.runtime.starter.mirror(repository), repository))
            except MirrorError as exc:
                log.warning("schedules of %s not read: %s", repository.name, exc)
        self.entries = entries
        self._refreshed_at = time.monotonic()

    def tick(self) -> list[str]:
        """Fire what is due now; the run ids started by this server."""
        monotonic = time.monotonic()
        if monotonic - self._refreshed_at >= REFRESH_S:
            self.refresh()
        if monotonic - self._checked_at < CHECK_S:
            return []
        self._checked_at = monotonic
        return self.fire_due(datetime.fromtimestamp(self.clock(), timezone.utc))

    def fire_due(self, now: datetime) -> list[str]:
        coordination = self.runtime.coordination
        started: list[str] = []
        for entry in self.entries:
            raw = coordination.get(entry.key + ":last")
            last = datetime.fromisoformat(raw) if raw else None
            tick = due_ticks(entry.schedule.cron, entry.schedule.timezone, last, now)
            if tick is None or not claim(coordination, f"{entry.key}:{tick.isoformat()}", TICK_CLAIM_TTL_S):
                continue
            coordination.put(entry.key + ":last", tick.isoformat())
            try:
                started.extend(self._start(entry, tick))
            except Exception as exc:  # one entry's failure must not stop the others
                log.warning("schedule %s of %s at %s: %s", entry.schedule.cron.source, entry.repository.name,
                            tick.isoformat(), exc)
        return started

    def _start(self, entry: ScheduleEntry, tick: datetime) -> tuple[str, ...]:
        mirror = self.runtime.starter.mirror(entry.repository)
        sha = mirror.fetch_ref(branch_ref(entry.branch))
        event = schedule_event(entry.repository.name, entry.branch, sha, delivery=f"schedule@{tick.isoformat()}",
                               default_branch=entry.repository.default_branch)
        started = self.runtime.starter.start(entry.repository, event)
        log.info("schedule %s of %s fired for %s: %s", entry.schedule.cron.source, entry.repository.name,
                 tick.isoformat(), started.run_ids or started.ignored)
        return started.run_ids
