"""From a trigger event to a run: mirror, pipeline at the commit, `on:`, forks, concurrency.

One path for every way the server starts a run (webhook, schedule, `POST /api/v1/runs`):

1. fetch the commit into the repository's bare mirror (coordinator/git_mirror.py);
2. read the pipeline file *at that commit* and load it with the trigger as context
   (`CONVEYOR_*` trigger variables, the `git` expression root);
3. missing or invalid file: a run that fails at once, its job log holding the
   diagnostics, and a failure status on the commit: never a silent drop;
4. `on:` decides (webhooks and schedules; the API asks for `api: true`);
5. a fork's pull request loses secrets and deployments unless `trust_forks`;
6. the tree at that commit becomes the run's source snapshot;
7. the run is recorded, its concurrency group consulted (it may cancel older runs or
   wait for them), and its canvas sent, unless it waits;
8. a pending commit status is queued; the server's watcher sends the final one.

Everything blocking (git, S3, Redis) runs on the caller's thread: the HTTP handlers call
this through a thread pool.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from coordinator.frontend import LoadResult, load_text
from coordinator.git_mirror import Mirror, MirrorError, is_null_sha
from coordinator.server.coordination import Coordination
from coordinator.server.repositories import Repository
from coordinator.submit import SubmitError, new_run_id
from coordinator.triggers.concurrency import GroupRun, decide, next_to_start
from coordinator.triggers.events import TriggerEvent
from coordinator.triggers.filters import match
from coordinator.triggers.fork_safety import withhold_for_fork
from shared.config import Settings
from shared.plan import Plan
from shared.state.base import JobMeta, StateStore

log = logging.getLogger("conveyor.server.runs")

# The job of a run whose pipeline could not be loaded: its log holds the diagnostics.
INVALID_JOB = "pipeline"
WATCHED = "watched"  # coordination set: runs whose end a server must report
GROUP_LOCK_TTL_S = 15.0


class StartError(Exception):
    """The event names something the server cannot build (a commit it cannot fetch, a bad ref).

    `status` is the HTTP answer: 400 for hostile or impossible input, 502 when the
    repository could not be reached (the forge redelivers later).
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Started:
    """What a start did: the runs created (one today), or why the event was ignored."""

    run_ids: tuple[str, ...] = ()
    ignored: str = ""
    diagnostics: tuple[str, ...] = field(default=())  # `file:line:col: message` of an invalid pipeline
    diagnostic_items: tuple[dict, ...] = field(default=())  # the same as {file, line, col, severity, ...}


StatusHook = Callable[[Repository, str, str, str, str], None]
"""`(repository, run_id, pipeline name, commit sha, state)`: queue a commit status (never blocks)."""


class RunStarter:
    """Starts runs of configured repositories; one per server process, shared by threads."""

    def __init__(self, settings: Settings, store: StateStore, coordination: Coordination,
                 send_canvas: Callable[[Plan, str], None], on_status: StatusHook | None = None) -> None:
        self.settings = settings
        self.store = store
        self.coordination = coordination
        self.send_canvas = send_canvas
        self.on_status = on_status or (lambda *args: None)

    def mirror(self, repository: Repository) -> Mirror:
        return Mirror(self.settings.data_dir, repository.name, repository.url)

    # -- the one path -------------------------------------------------------------------

    def start(self, repository: Repository, event: TriggerEvent, *, parameters: Mapping[str, str] | None = None,
              record_invalid: bool = True) -> Started:
        """Start the run ``event`` asks for; `Started.ignored` says why not when `on:` filters it out.

        A missing or invalid pipeline file is a failed run with its diagnostics when
        ``record_invalid`` (webhooks, schedules); else only `Started.diagnostics` (the API
        answers 422 and nobody needs a run to read them).
        """
        mirror = self.mirror(repository)
        try:
            mirror.ensure_commit(event.sha, event.ref or None)
        except MirrorError as exc:
            raise StartError(400 if isinstance(exc, ValueError) else 502, str(exc)) from None
        try:
            text = mirror.read_file(event.sha, repository.pipeline)
        except MirrorError as exc:
            text, problem = None, str(exc)
        else:
            problem = f"{repository.pipeline}:1:1: error: pipeline file not found at commit {event.sha[:12]}; " \
                      f"hint: add it, or set `pipeline` of repository {repository.name} in conveyor.toml"
        run_id = new_run_id()
        trigger = event.to_dict()
        if text is None:
            return self._invalid(repository, event, run_id, [problem], record_invalid, name=repository.pipeline)
        result = load_text(text, repository.pipeline, dict(parameters or {}), run_id=run_id, trigger=trigger)
        if not result.ok or result.plan is None:
            return self._invalid(repository, event, run_id, [str(d) for d in result.diagnostics], record_invalid,
                                 [d.to_dict() for d in result.diagnostics], name=_declared_name(text, repository.pipeline))
        decision = match(result.on, event, self._changed_paths(mirror, event, result))
        if not decision.run:
            return Started(ignored=decision.reason)
        plan: Plan = result.plan  # type: ignore[assignment]
        notes: list[str] = []
        if event.pr is not None and event.pr.fork and not repository.trust_forks:
            plan, withheld = withhold_for_fork(plan)
            notes.extend(withheld.notes(event.pr.head_repository))
        try:
            snapshot = mirror.snapshot(event.sha, self.settings, run_id, plan)
        except (MirrorError, SubmitError) as exc:
            raise StartError(502, f"storing the source of {repository.name} at {event.sha[:12]}: {exc}") from None
        meta = {**snapshot, **self._meta(repository, event, parameters)}
        group = _group_key(repository, plan)
        if group:
            meta["concurrency_group"] = group
        self.store.create_run(run_id, plan.pipeline,
                              {name: JobMeta(allow_failure=job.allow_failure) for name, job in plan.jobs.items()},
                              plan.to_dict(), meta)
        for text_note in notes:
            self.coordination.note(run_id, {"kind": "fork", "message": text_note})
        self._watch(repository, run_id, plan.pipeline, event.sha)
        if group:
            self._join_group(group, run_id, plan, bool(plan.concurrency and plan.concurrency["cancel_in_progress"]))
        else:
            self.send_canvas(plan, run_id)
        return Started(run_ids=(run_id,))

    # -- pieces ---------------------------------------------------------------------------

    def _changed_paths(self, mirror: Mirror, event: TriggerEvent, result: LoadResult) -> list[str] | None:
        """Only computed when a path filter needs it: it may fetch the default branch."""
        on = result.on
        wants = [f for f in (on.push if event.event == "push" else on.pull_request if event.event == "pull_request"
                             else None,) if f is not None]
        if not any(f.paths or f.paths_ignore for f in wants):
            return None
        before = event.before if event.before and not is_null_sha(event.before) else None
        try:
            return mirror.changed_paths(before, event.sha, event.default_branch or None)
        except MirrorError as exc:
            log.warning("changed paths of %s at %s: %s", mirror.name, event.sha[:12], exc)
            return None  # unknown: the filters let the run through rather than drop it

    def _meta(self, repository: Repository, event: TriggerEvent, parameters: Mapping[str, str] | None) -> dict:
        return {
            "trigger": event.to_dict(),
            "repository": repository.name,
            "forge": repository.forge,
            "pipeline_file": repository.pipeline,
            "submitted_by": event.actor or event.event,
            "parameters": sorted(parameters or {}),  # names only: values may be sensitive
        }

    def _invalid(self, repository: Repository, event: TriggerEvent, run_id: str, lines: list[str],
                 record: bool, diagnostics: list[dict] | None = None, *, name: str) -> Started:
        """A run that failed at once: one job whose log is the diagnostics. ``name`` is the
        pipeline's name when the file still declares one (its commit status then has the
        same context as the pipeline's other runs), else the file's path."""
        if not record:
            return Started(diagnostics=tuple(lines), diagnostic_items=tuple(diagnostics or ()))
        result = load_text(_INVALID_PIPELINE, "<invalid>", {}, run_id=run_id)
        plan: Plan = result.plan  # type: ignore[assignment]
        meta = {**self._meta(repository, event, None), "invalid": True, "diagnostics": lines}
        self.store.create_run(run_id, name, {INVALID_JOB: JobMeta()}, plan.to_dict(), meta)
        claim = self.store.claim(run_id, INVALID_JOB, "conveyor-server", 60_000)
        self.store.append_logs(run_id, INVALID_JOB, [("stderr", line) for line in lines])
        token = getattr(claim, "token", None)
        if token is not None:
            self.store.finish(run_id, INVALID_JOB, token, "failed", exit_code=None, reason=None)
        self._watch(repository, run_id, name, event.sha)
        return Started(run_ids=(run_id,), diagnostics=tuple(lines))

    def _watch(self, repository: Repository, run_id: str, pipeline: str, sha: str) -> None:
        self.coordination.add(WATCHED, run_id)
        self.on_status(repository, run_id, pipeline, sha, "pending")

    # -- concurrency groups ---------------------------------------------------------------

    def _join_group(self, group: str, run_id: str, plan: Plan, cancel_in_progress: bool) -> None:
        with _GroupLock(self.coordination, group):
            self.coordination.add("group:" + group, run_id)
            self.coordination.put("waiting:" + run_id, group)  # until it starts or is cancelled
            runs = self._group_runs(group)
            me = next(r for r in runs if r.id == run_id)
            decision = decide(runs, me, cancel_in_progress)
            for other in decision.cancel:
                self.coordination.delete("waiting:" + other)
                self.store.request_cancel(other)
                self.coordination.note(other, {"kind": "concurrency", "message": f"cancelled by newer run {run_id}"})
            self.coordination.note(run_id, {"kind": "concurrency", "message": f"group {group}: {decision.reason}"})
            if decision.superseded:
                self.coordination.delete("waiting:" + run_id)
                self.store.request_cancel(run_id)
            elif not decision.wait:
                self.coordination.delete("waiting:" + run_id)
                self.send_canvas(plan, run_id)

    def _group_runs(self, group: str) -> list[GroupRun]:
        out = []
        for run_id in self.coordination.members("group:" + group):
            run = self.store.get_run(run_id)
            if run is None:  # purged after its retention
                self.coordination.discard("group:" + group, run_id)
                continue
            status = run.status
            if status == "running" and self.coordination.get("waiting:" + run_id):
                status = "waiting"
            if status in ("success", "failed", "cancelled") and self.coordination.get("waiting:" + run_id):
                self.coordination.delete("waiting:" + run_id)  # cancelled while it waited
            out.append(GroupRun(run_id, _parse_time(run.created_at), status))
        return out

    def release_group(self, group: str) -> str | None:
        """After a run of ``group`` ended: start the next waiting one (once across servers)."""
        with _GroupLock(self.coordination, group):
            runs = self._group_runs(group)
            for run in runs:
                if run.status in ("success", "failed", "cancelled"):
                    self.coordination.discard("group:" + group, run.id)
            nxt = next_to_start(runs)
            if nxt is None:
                return None
            self.coordination.delete("waiting:" + nxt)
            plan = Plan.from_dict(self.store.get_plan(nxt))
            self.coordination.note(nxt, {"kind": "concurrency", "message": f"group {group}: started, its turn came"})
            self.send_canvas(plan, nxt)
            return nxt


class _GroupLock:
    """A short lock over one group across servers: decisions read then write the group."""

    def __init__(self, coordination: Coordination, group: str) -> None:
        self.coordination, self.key = coordination, "lock:group:" + group

    def __enter__(self) -> None:
        deadline = time.monotonic() + GROUP_LOCK_TTL_S
        while self.coordination.remember(self.key, "1", GROUP_LOCK_TTL_S) is not None:
            if time.monotonic() > deadline:
                raise StartError(503, f"concurrency group busy: {self.key[11:]}")
            time.sleep(0.01)

    def __exit__(self, *exc: object) -> None:
        self.coordination.delete(self.key)


_NAME_LINE = re.compile(rb"^name:[ \t]*['\"]?([A-Za-z0-9][A-Za-z0-9 _./-]{0,99}?)['\"]?[ \t]*(#.*)?$", re.MULTILINE)


def _declared_name(text: bytes | str, fallback: str) -> str:
    """The top-level `name:` of a file that did not load, read by a line match only (the
    file is invalid, and hostile until proven otherwise: it is not parsed again)."""
    raw = text.encode() if isinstance(text, str) else text
    found = _NAME_LINE.search(raw[:65536])
    return found.group(1).decode() if found else fallback


def _group_key(repository: Repository, plan: Plan) -> str:
    """The group, scoped per repository (two repositories' `main` are different groups)."""
    concurrency: Any = getattr(plan, "concurrency", None)
    if not concurrency or not concurrency.get("group"):
        return ""
    return f"{repository.forge}:{repository.name.lower()}:{concurrency['group']}"


def _parse_time(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return datetime.fromtimestamp(0, timezone.utc)


# A stand-in plan for a run whose pipeline could not be loaded; never sent to workers.
_INVALID_PIPELINE = f"""
name: invalid-pipeline
jobs:
  {INVALID_JOB}:
    steps: [{{name: validate, script: ["false"]}}]
"""
