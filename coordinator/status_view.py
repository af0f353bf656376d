"""What `conveyor status` and `conveyor runs` show: the spec's JSON shapes and plain-text tables.

The pieces a live follower also needs (jobs in display order, durations, retry countdowns,
a plain table) live here too, so that `status` and the end-of-run summary cannot disagree.
Everything is read from the state store; nothing here writes.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Mapping, Sequence

from coordinator.terminal import clean
from shared.state import JobRecord, RunRecord, StateStore, UnknownRun
from shared import worker_labels
from shared.state.base import FAILED, RETRYING, RUNNING, AttemptRecord, epoch_seconds

NONE = "-"  # what an empty cell shows, so columns never collapse


# -- ordering -------------------------------------------------------------------------------


def plan_of(store: StateStore, run_id: str) -> Mapping[str, Any]:
    """The run's stored plan dict, or an empty one when the run is gone."""
    try:
        return store.get_plan(run_id)
    except UnknownRun:
        return {}


def job_levels(plan: Mapping[str, Any], names: Iterable[str]) -> list[list[str]]:
    """`names` grouped by the plan's levels, in display order.

    A job the plan does not place (a minimal plan, or one from an older version) goes into
    one last level in store order rather than disappearing from the view.
    """
    remaining = list(names)
    known = set(remaining)
    placed: set[str] = set()
    levels: list[list[str]] = []
    for level in plan.get("levels", ()):
        kept = [name for name in level if name in known and name not in placed]
        placed.update(kept)
        if kept:
            levels.append(kept)
    rest = [name for name in remaining if name not in placed]
    if rest:
        levels.append(rest)
    return levels


def dependencies(plan: Mapping[str, Any], job: str) -> list[str]:
    """The jobs `job` waits for, per the plan (empty when the plan does not say)."""
    return list(plan.get("jobs", {}).get(job, {}).get("depends_on", ()))


def ordered_jobs(store: StateStore, run_id: str) -> dict[str, JobRecord]:
    """The run's jobs in plan order (level by level); raises UnknownRun."""
    jobs = store.get_jobs(run_id)
    levels = job_levels(plan_of(store, run_id), jobs)
    return {name: jobs[name] for level in levels for name in level}


# -- time -----------------------------------------------------------------------------------




def duration_text(seconds: float | None) -> str:
    """A short human duration: `4.2s`, `3m 07s`, `1h 02m`; `-` when unknown."""
    if seconds is None:
        return NONE
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"


def job_seconds(job: JobRecord, now: float) -> float | None:
    """Time since the job's first attempt started, until it finished (or `now` while open)."""
    start = epoch_seconds(job.started_at)
    if start is None:
        return None
    end = epoch_seconds(job.finished_at)
    return (end if end is not None else now) - start


def retry_in(job: JobRecord, now: float) -> float | None:
    """Seconds until a `retrying` job is due to run again (0 when overdue); None otherwise."""
    if job.status != RETRYING or not job.attempts:
        return None
    last = job.attempts[-1]
    ended = epoch_seconds(last.finished_at)
    if ended is None or last.retry_delay is None:
        return None
    return max(0.0, ended + last.retry_delay - now)


def status_label(job: JobRecord, now: float) -> str:
    """The job status as a person reads it: notes an allowed failure and a pending retry."""
    if job.status == FAILED and job.allow_failure:
        return "failed (allowed)"
    wait = retry_in(job, now)
    if wait is not None:
        # "due": the delay is over and the retry waits for a worker to pick it up.
        return f"retrying (in {duration_text(wait)})" if wait > 0 else "retrying (due)"
    return job.status


# -- tables ---------------------------------------------------------------------------------


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, no colour and no box drawing (greppable).

    Cells are cleaned of control characters (coordinator/terminal.py): they hold job
    names, reasons and paths that pipelines and jobs wrote.
    """
    headers = [clean(h) for h in headers]
    rows = [[clean(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [headers, *rows]]
    return "\n".join(lines)


SUMMARY_HEADERS = ("JOB", "STATUS", "REASON", "ATTEMPTS", "DURATION", "WORKER")


def summary_row(name: str, job: JobRecord, now: float) -> list[str]:
    """The cells of one job under SUMMARY_HEADERS, safe to print (coordinator/terminal.py)."""
    return [
        clean(name),
        clean(status_label(job, now)),
        clean(job.reason or NONE),
        str(job.attempt),
        duration_text(job_seconds(job, now)),
        clean(job.worker or NONE),
    ]


# -- JSON -----------------------------------------------------------------------------------


def _job_json(job: JobRecord, artifacts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "status": job.status,
        "attempts": job.attempt,
        "worker": job.worker,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "exit_code": job.exit_code,
        "reason": job.reason,
        "allow_failure": job.allow_failure,
        "artifacts": artifacts,
        "attempt_history": [
            {
                "number": a.number,
                "worker": a.worker,
                "started_at": a.started_at,
                "finished_at": a.finished_at,
                "exit_code": a.exit_code,
                "reason": a.reason,
                "retry_delay": a.retry_delay,
            }
            for a in job.attempts
        ],
    }


def status_json(store: StateStore, run_id: str,
                artifacts: Callable[[str], Mapping[str, list[dict[str, Any]]]] | None = None,
                extras: Callable[[str, str], Mapping[str, Any]] | None = None,
                run: RunRecord | None = None) -> dict[str, Any] | None:
    """`conveyor status RUN --format json`: the run and its jobs in plan order; None if unknown.

    `artifacts(run_id)` maps job names to their artifact members (path, sha256, size);
    `extras(run_id, job)` adds keys to a job (its `deployment` record). `run`: the run's
    record when the caller has just read it.
    """
    run = run or store.get_run(run_id)
    if run is None:
        return None
    try:
        jobs = ordered_jobs(store, run_id)
    except UnknownRun:  # expired between the two reads
        return None
    members = artifacts(run_id) if artifacts is not None else {}
    plan = plan_of(store, run_id)
    levels = {name: index for index, level in enumerate(job_levels(plan, jobs)) for name in level}
    waiting = waiting_reasons(store, plan, jobs, run.created_at)
    return {
        "run_id": run.run_id,
        "pipeline": run.pipeline,
        "status": run.status,
        "created_at": run.created_at,
        "finished_at": run.finished_at,
        "cancel_requested": run.cancel_requested,
        # `waiting` only on a job that could start but that no live worker can take.
        "jobs": {name: {**_job_entry(run_id, name, job, members, extras), "level": levels[name],
                        **({"waiting": waiting[name]} if name in waiting else {})}
                 for name, job in jobs.items()},
    }


def waiting_reasons(store: StateStore, plan: Mapping[str, Any], jobs: Mapping[str, JobRecord],
                    created_at: str) -> dict[str, str]:
    """job -> why it waits (`waiting for a worker with labels gpu`), for the jobs that could
    start but that no live worker can take (shared/worker_labels.py); empty where that is not
    known (a SQLite store: no worker announces itself there)."""
    try:
        return worker_labels.waiting_reasons(getattr(store, "client", None), plan, jobs, created_at)
    except Exception:  # the workers' hash unreadable (Redis restarting): the view goes on without it
        return {}


def _job_entry(run_id: str, name: str, job: JobRecord, members: Mapping[str, list[dict[str, Any]]],
               extras: Callable[[str, str], Mapping[str, Any]] | None) -> dict[str, Any]:
    entry = _job_json(job, members.get(name, []))
    if extras is not None:
        entry.update(extras(run_id, name))
    return entry


def runs_json(store: StateStore, limit: int) -> list[dict[str, Any]]:
    """`conveyor runs --format json`: the newest `limit` runs, newest first."""
    return [
        {
            "run_id": run.run_id,
            "pipeline": run.pipeline,
            "status": run.status,
            "created_at": run.created_at,
            "finished_at": run.finished_at,
        }
        for run in store.list_runs(limit)
    ]


# -- text -----------------------------------------------------------------------------------


def _run_seconds(created_at: str, finished_at: str | None, now: float) -> float:
    end = epoch_seconds(finished_at)
    return (end if end is not None else now) - (epoch_seconds(created_at) or now)


def status_text(store: StateStore, run_id: str) -> str:
    """`conveyor status RUN`: a header and one row per job, by level; raises UnknownRun."""
    view = status_json(store, run_id)
    if view is None:
        raise UnknownRun(run_id)
    return render_status(view)


def render_status(view: Mapping[str, Any], now: float | None = None) -> str:
    """The text of `conveyor status` from the status JSON (``status_json``, or the server's
    `GET /api/v1/runs/{run}`): one renderer whichever way the CLI got the run."""
    now = time.time() if now is None else now
    rows = []
    for name, job in view.get("jobs", {}).items():
        record = job_record_of(name, job)
        _, status, reason, attempts, took, worker = summary_row(name, record, now)
        if job.get("waiting") and record.reason is None:
            reason = clean(str(job["waiting"]))
        exit_code = NONE if record.exit_code is None else str(record.exit_code)
        level = job.get("level")
        rows.append([NONE if level is None else str(level), name, status, reason, attempts, took, exit_code, worker])
    created, finished = view.get("created_at"), view.get("finished_at")
    cancel = ", cancel requested" if view.get("cancel_requested") and view.get("status") == RUNNING else ""
    header = [
        clean(f"run {view.get('run_id')} (pipeline {view.get('pipeline')}): {view.get('status')}{cancel}"),
        clean(f"created {created}, {f'finished {finished}' if finished else 'not finished'}, "
              f"{'took' if finished else 'running for'} "
              f"{duration_text(_run_seconds(created, finished, now))}"),
    ]
    table = text_table(("LEVEL", "JOB", "STATUS", "REASON", "ATTEMPTS", "DURATION", "EXIT", "WORKER"), rows)
    return "\n".join([*header, "", table])


def job_record_of(name: str, job: Mapping[str, Any]) -> JobRecord:
    """A job of the status JSON as the store's record (what the text views are made from)."""
    attempts = [AttemptRecord(number=a.get("number", 0), worker=a.get("worker") or "", started_at=a.get("started_at"),
                              finished_at=a.get("finished_at"), status="", exit_code=a.get("exit_code"),
                              reason=a.get("reason"), retry_delay=a.get("retry_delay"))
                for a in job.get("attempt_history") or []]
    return JobRecord(name=name, status=job.get("status", ""), attempt=job.get("attempts") or 0,
                     worker=job.get("worker"), started_at=job.get("started_at"), finished_at=job.get("finished_at"),
                     exit_code=job.get("exit_code"), reason=job.get("reason"),
                     allow_failure=bool(job.get("allow_failure")), attempts=attempts)


def runs_text(store: StateStore, limit: int) -> str:
    """`conveyor runs`: the newest runs, one per line, newest first."""
    runs = store.list_runs(limit)
    if not runs:
        return "no runs"
    now = time.time()
    rows = [
        [run.run_id, run.pipeline, run.status, run.created_at,
         duration_text(_run_seconds(run.created_at, run.finished_at, now))]
        for run in runs
    ]
    return text_table(("RUN", "PIPELINE", "STATUS", "CREATED", "DURATION"), rows)
