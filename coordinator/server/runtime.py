"""What a server process runs beside its HTTP handlers, and what they share.

`ServerRuntime` holds the configured repositories, the coordination keys, the run
starter and the commit-status sender, and runs two background threads, every
`WATCH_INTERVAL_S`:

- the *watcher*: runs the servers started and that have ended get their final commit
  status (sent by exactly one server: a claim in the coordination keys), and their
  concurrency group's next waiting run is started;
- the *scheduler*: schedules that are due fire (coordinator/server/scheduler.py), once
  per tick across servers; it has its own thread because refreshing the schedules
  fetches every repository, which may be slow.

Everything it decides from is in the shared stores, so any server can do this work and a
server that dies mid-way leaves nothing another one cannot finish.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from coordinator.server.coordination import Coordination, claim
from coordinator.server.repositories import Repositories, Repository
from coordinator.server.run_starter import WATCHED, RunStarter
from shared.config import Settings
from shared.plan import Plan
from shared.state.base import StateStore

log = logging.getLogger("conveyor.server")

WATCH_INTERVAL_S = 1.0
FINAL_STATUS_TTL_S = 30 * 86400


class ServerRuntime:
    """Shared by every request of one server process; `start()`/`stop()` the watcher."""

    def __init__(self, settings: Settings, store: StateStore, coordination: Coordination,
                 repositories: Repositories, send_canvas: Callable[[Plan, str], None],
                 status_sender: Any | None = None, public_url: str = "") -> None:
        self.settings = settings
        self.store = store
        self.coordination = coordination
        self.repositories = repositories
        self.public_url = (public_url or settings.public_url or "").rstrip("/")
        self.status_sender = status_sender
        self.starter = RunStarter(settings, store, coordination, send_canvas, on_status=self.queue_status)
        self.scheduler: Any = None  # set by the scheduler module when repositories have schedules
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- commit statuses ---------------------------------------------------------------

    def queue_status(self, repository: Repository, run_id: str, pipeline: str, sha: str, state: str) -> None:
        """Queue one commit status for the run's commit; never blocks, never raises."""
        try:
            self._queue_status(repository, run_id, pipeline, sha, state)
        except Exception as exc:  # a status is a courtesy to the forge: the run goes on regardless
            log.warning("commit status for run %s not queued: %s", run_id, exc)
            self._note(run_id, {"kind": "commit_status", "state": state, "outcome": "gave_up",
                                "error": f"{type(exc).__name__}: {exc}"})

    def _queue_status(self, repository: Repository, run_id: str, pipeline: str, sha: str, state: str) -> None:
        from coordinator.forge_status import build_request, context_for

        if self.status_sender is None or not repository.status_api:
            return
        token = repository.status_token()
        if not token:
            self._note(run_id, {"kind": "commit_status", "state": state, "outcome": "skipped",
                                "error": f"{repository.status_token_env or 'status_token_env'} is not set"})
            return
        target = f"{self.public_url}/runs/{run_id}" if self.public_url else ""
        request = build_request(repository.forge, repository.status_api, repository.name, sha, state,
                                context_for(pipeline), _DESCRIPTIONS.get(state, state), target, token)
        self.status_sender.submit(request, lambda attempt: self._note(run_id, {"kind": "commit_status", **attempt}))

    def _note(self, run_id: str, note: dict[str, Any]) -> None:
        try:
            self.coordination.note(run_id, note)
        except Exception as exc:
            log.warning("run %s: event not recorded (%s): %s", run_id, exc, note)

    # -- the watcher ---------------------------------------------------------------------

    def start(self) -> None:
        # Two threads: a slow fetch while refreshing schedules must not hold back final
        # statuses and concurrency groups.
        self._threads = [threading.Thread(target=self._watch_loop, name="conveyor-server-watcher", daemon=True),
                         threading.Thread(target=self._schedule_loop, name="conveyor-server-scheduler", daemon=True)]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        if self.status_sender is not None:
            self.status_sender.close(timeout)

    def _watch_loop(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL_S):
            try:
                self.watch_once()
            except Exception as exc:  # Redis restarting: try again next round
                log.warning("watcher: %s: %s", type(exc).__name__, exc)

    def _schedule_loop(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL_S):
            if self.scheduler is None:
                continue
            try:
                self.scheduler.tick()
            except Exception as exc:
                log.warning("scheduler: %s: %s", type(exc).__name__, exc)

    def watch_once(self) -> None:
        """One pass over the watched runs (also called by tests)."""
        for run_id in sorted(self.coordination.members(WATCHED)):
            run = self.store.get_run(run_id)
            if run is None:
                self.coordination.discard(WATCHED, run_id)
                continue
            if run.status == "running":
                continue
            meta = run.meta or {}
            if meta.get("concurrency_group"):
                self.starter.release_group(meta["concurrency_group"])
            if claim(self.coordination, f"final:{run_id}", FINAL_STATUS_TTL_S):
                repository = self.repositories.find(meta.get("forge", ""), meta.get("repository", ""))
                if repository is not None:
                    from coordinator.forge_status import status_for_run

                    state = status_for_run(run.status, invalid=bool(meta.get("invalid")))
                    sha = (meta.get("trigger") or {}).get("sha", "")
                    self.queue_status(repository, run_id, run.pipeline, sha, state)
                self.coordination.discard(WATCHED, run_id)


_DESCRIPTIONS = {
    "pending": "Conveyor: running",
    "success": "Conveyor: passed",
    "failure": "Conveyor: failed",
    "error": "Conveyor: cancelled or could not run",
}



def build_runtime(settings: Settings, store: StateStore, celery_app: Any = None) -> ServerRuntime:
    """The runtime from settings: repositories checked (`RepositoryConfigError` on a
    mistake), coordination beside the state, canvases sent to the configured broker
    (through ``celery_app`` when given: the embedded server's, whose worker is in-process)."""
    from coordinator.server.coordination import open_coordination
    from coordinator.server.repositories import parse_repositories
    from coordinator.status_sender import StatusSender

    repositories = Repositories(parse_repositories(settings.repositories))
    app_holder: list[Any] = [celery_app] if celery_app is not None else []

    def send_canvas(plan: Plan, run_id: str) -> None:
        from coordinator.canvas import send_canvas as send
        from shared.celery_app import create_app

        if not app_holder:  # created on first use: a server with no runs needs no broker
            app_holder.append(create_app(settings))
        send(app_holder[0], plan, run_id)

    runtime = ServerRuntime(settings, store, open_coordination(settings.effective_state_url), repositories,
                            send_canvas, StatusSender())
    if repositories.all:
        from coordinator.server.scheduler import Scheduler

        runtime.scheduler = Scheduler(runtime)
    return runtime
