"""What a deployment tells the state store about its job: the lease, the outcome, the log lines.

The job stays `running` in the state store while its deployment ticks; each tick
heartbeats the claim's lease with the claim token and, once the outcome is decided,
finishes the job with it (a token that is no longer current cannot overwrite a newer
attempt). Events become lines of the job's log, so `conveyor logs RUN JOB` tells the story.
"""
from __future__ import annotations

import logging

from deploy.record import Event, Record, event
from shared.state.base import CANCELLED, FAILED, SUCCESS, TERMINAL, StateStore

log = logging.getLogger("conveyor.deploy")

MIN_LEASE_MS = 30_000
_JOB_STATUS = {"success": SUCCESS, "failed": FAILED, "cancelled": CANCELLED}


def heartbeat(state: StateStore, rec: Record, now: int, lease_ms: int) -> bool:
    """Heartbeat the job's lease; True when the run is cancelled (or past its timeout)."""
    run_id, job = rec["run_id"], rec["job"]
    if rec["job_finished"]:
        return False
    answer = state.heartbeat(run_id, job, rec["token"], max(lease_ms, MIN_LEASE_MS))
    if answer == "cancel":
        return True
    if answer == "lost":
        record = state.get_jobs(run_id, [job]).get(job)
        if record is None or record.status in TERMINAL:
            rec["job_finished"] = True  # ended without us (cancelled before the claim landed): restore anyway
            return True
    deadline = rec.get("deadline")
    if deadline is not None and now > deadline:
        state.request_cancel(run_id)
        return True
    return False


def finish(state: StateStore, rec: Record, now: int) -> None:
    """Report the decided outcome to the state store, once (fenced by the claim token)."""
    result = rec.get("result")
    if result is None or rec["job_finished"]:
        return
    status = _JOB_STATUS[result["status"]]
    reason = result.get("reason") if status != SUCCESS else None
    try:
        accepted = state.finish(rec["run_id"], rec["job"], rec["token"], status, reason=reason)
    except Exception as exc:  # retried by the next tick: job_finished stays False
        log.warning("finishing %s/%s failed: %s", rec["run_id"], rec["job"], exc)
        return
    rec["job_finished"] = True
    if not accepted:
        event(rec, now, "note", message="the job had already ended in the state store")


def write_logs(state: StateStore, rec: Record, events_before: int) -> None:
    """New events as lines in the job's log, so `conveyor logs RUN JOB` tells the story."""
    new = rec["events"][events_before:] if events_before <= len(rec["events"]) else rec["events"][-10:]
    if not new:
        return
    lines = [("system", "deploy: " + format_event(e)) for e in new]
    try:
        state.append_logs(rec["run_id"], rec["job"], lines)
    except Exception as exc:  # logs are a convenience; the record has the events
        log.debug("deploy log append failed: %s", exc)


def format_event(e: Event) -> str:
    """`at type key=value ...`, empty fields left out."""
    fields = " ".join(f"{k}={v}" for k, v in e.items() if k not in ("at", "type") and v not in (None, "", [], {}))
    return f"{e['at']} {e['type']} {fields}".rstrip()
