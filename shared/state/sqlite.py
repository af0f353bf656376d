"""The SQLite state store: embedded mode, one file, no services.

Each operation is one `BEGIN IMMEDIATE` transaction: it takes the database's write lock
before reading, so a read-check-write cannot interleave with another thread or process,
which gives the same atomicity as the Redis backend's Lua scripts. The file runs in WAL
mode so readers (status, log followers) never wait for writers. Timestamps come from this
host's clock; embedded mode has one host.
"""
from __future__ import annotations

import json
import sqlite3
import time
from typing import Any, Mapping, Sequence

from shared.sqlite_file import SQLiteFile
from shared.state.base import (
    CANCELLED,
    DEFAULT_RETENTION_S,
    FAILED,
    HEARTBEAT_CANCEL,
    HEARTBEAT_LOST,
    HEARTBEAT_OK,
    PENDING,
    REASON_CANCELLED,
    REASON_WORKER_LOST,
    REFUSED_CANCELLED,
    REFUSED_FINISHED,
    REFUSED_LEASED,
    REFUSED_WORKER_LOST,
    RETRYING,
    RUNNING,
    SKIPPED,
    TERMINAL,
    AttemptRecord,
    Claim,
    Event,
    HeartbeatResult,
    JobMeta,
    JobRecord,
    LogEntry,
    Refusal,
    RunExists,
    RunRecord,
    UnknownJob,
    UnknownRun,
    can_transition,
    check_count,
    check_create_args,
    check_lease_ms,
    check_run_id,
    check_skip_reason,
    finish_args,
    iso_ms,
    run_counters,
    run_outcome,
)

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    pipeline TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    finished_at INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    meta TEXT NOT NULL,
    plan TEXT NOT NULL,
    open_jobs INTEGER NOT NULL,
    failed_jobs INTEGER NOT NULL DEFAULT 0,
    cancelled_jobs INTEGER NOT NULL DEFAULT 0,
    expires_at INTEGER
);
CREATE INDEX IF NOT EXISTS runs_created ON runs (created_at);
CREATE INDEX IF NOT EXISTS runs_expires ON runs (expires_at);
CREATE TABLE IF NOT EXISTS jobs (
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    position INTEGER NOT NULL,
    status TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    started_at INTEGER,
    finished_at INTEGER,
    exit_code INTEGER,
    reason TEXT,
    allow_failure INTEGER NOT NULL,
    token INTEGER NOT NULL DEFAULT 0,
    lost INTEGER NOT NULL DEFAULT 0,
    lease_expires_at INTEGER,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS attempts (
    run_id TEXT NOT NULL,
    job TEXT NOT NULL,
    number INTEGER NOT NULL,
    worker TEXT NOT NULL,
    token INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    finished_at INTEGER,
    status TEXT NOT NULL,
    exit_code INTEGER,
    reason TEXT,
    retry_delay REAL,
    PRIMARY KEY (run_id, job, number)
);
CREATE TABLE IF NOT EXISTS logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    job TEXT NOT NULL,
    stream TEXT NOT NULL,
    text TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_job ON logs (run_id, job, id);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    job TEXT,
    from_status TEXT NOT NULL,
    to_status TEXT NOT NULL,
    at INTEGER NOT NULL,
    attempt INTEGER,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS events_run ON events (run_id, id);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters (name, value) VALUES ('token', 0);
"""

# How often a blocking read looks again; SQLite has no change notification across processes.
POLL_S = 0.05


def _visible(table: str) -> str:
    """A condition on `table`'s rows: their run has not expired (the parameter is now, epoch ms).

    Logs and events of an expired run stay until the next create_run sweeps them, but are
    invisible before that, like the run itself (and like Redis, where they expire with it).
    """
    return f"NOT EXISTS (SELECT 1 FROM runs WHERE runs.run_id = {table}.run_id AND runs.expires_at <= ?)"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class SQLiteState:
    """The state store in one SQLite file; safe for several threads and processes."""

    def __init__(self, path: str, *, retention_s: float = DEFAULT_RETENTION_S) -> None:
        self.path = path
        self.retention_ms = int(retention_s * 1000)
        self._db = SQLiteFile(path, SCHEMA, user_version=SCHEMA_VERSION)

    def close(self) -> None:
        self._db.close()

    # -- shared write helpers ----------------------------------------------------------

    @staticmethod
    def _run_row(db: sqlite3.Connection, run_id: str, now: int) -> sqlite3.Row | None:
        row = db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None or (row["expires_at"] is not None and row["expires_at"] <= now):
            return None
        return row

    @staticmethod
    def _job_row(db: sqlite3.Connection, run_id: str, job: str) -> sqlite3.Row:
        row = db.execute("SELECT * FROM jobs WHERE run_id = ? AND name = ?", (run_id, job)).fetchone()
        if row is None:
            raise UnknownJob(f"{run_id}: {job}")
        return row

    @staticmethod
    def _emit(db: sqlite3.Connection, run_id: str, job: str | None, src: str, dst: str, now: int,
              attempt: int | None, reason: str | None) -> None:
        db.execute(
            "INSERT INTO events (run_id, job, from_status, to_status, at, attempt, reason)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (run_id, job, src, dst, now, attempt, reason),
        )

    def _set_job(self, db: sqlite3.Connection, run_id: str, job: str, **fields: Any) -> None:
        columns = ", ".join(f"{name} = ?" for name in fields)  # names are ours, never user input
        db.execute(f"UPDATE jobs SET {columns} WHERE run_id = ? AND name = ?", (*fields.values(), run_id, job))

    def _job_terminal(self, db: sqlite3.Connection, run_id: str, status: str, allow_failure: bool, now: int) -> None:
        """Bookkeeping for a job that just became terminal; ends the run with its last job."""
        failed, cancelled = run_counters(status, allow_failure)
        db.execute(
            "UPDATE runs SET open_jobs = open_jobs - 1, failed_jobs = failed_jobs + ?,"
            " cancelled_jobs = cancelled_jobs + ? WHERE run_id = ?",
            (failed, cancelled, run_id),
        )
        run = db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if run["open_jobs"] > 0:
            return
        outcome = run_outcome(run["failed_jobs"], run["cancelled_jobs"], bool(run["cancel_requested"]))
        db.execute(
            "UPDATE runs SET status = ?, finished_at = ?, expires_at = ? WHERE run_id = ?",
            (outcome, now, now + self.retention_ms, run_id),
        )
        self._emit(db, run_id, None, RUNNING, outcome, now, None, None)

    # -- runs --------------------------------------------------------------------------

    def create_run(
        self,
        run_id: str,
        pipeline: str,
        jobs: Mapping[str, JobMeta],
        plan: dict,
        meta: dict,
    ) -> None:
        check_create_args(run_id, pipeline, jobs)
        meta_json, plan_json = json.dumps(meta), json.dumps(plan)
        with self._db.transaction() as db:
            now = _now_ms()
            self._purge_expired(db, now)
            if db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone():
                raise RunExists(run_id)
            db.execute(
                "INSERT INTO runs (run_id, pipeline, status, created_at, meta, plan, open_jobs)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run_id, pipeline, RUNNING, now, meta_json, plan_json, len(jobs)),
            )
            db.executemany(
                "INSERT INTO jobs (run_id, name, position, status, allow_failure) VALUES (?, ?, ?, ?, ?)",
                [(run_id, name, i, PENDING, int(m.allow_failure)) for i, (name, m) in enumerate(jobs.items())],
            )

    @staticmethod
    def _purge_expired(db: sqlite3.Connection, now: int) -> None:
        expired = [r[0] for r in db.execute("SELECT run_id FROM runs WHERE expires_at <= ?", (now,))]
        for table in ("logs", "events", "attempts", "jobs", "runs"):
            db.executemany(f"DELETE FROM {table} WHERE run_id = ?", [(r,) for r in expired])

    def get_run(self, run_id: str) -> RunRecord | None:
        check_run_id(run_id)
        row = self._run_row(self._db.conn(), run_id, _now_ms())
        return _run_record(row) if row is not None else None

    def get_plan(self, run_id: str) -> dict:
        check_run_id(run_id)
        row = self._run_row(self._db.conn(), run_id, _now_ms())
        if row is None:
            raise UnknownRun(run_id)
        return json.loads(row["plan"])

    def get_jobs(self, run_id: str, names: Sequence[str] | None = None) -> dict[str, JobRecord]:
        check_run_id(run_id)
        db = self._db.conn()
        # One read transaction so jobs and attempts come from the same snapshot.
        db.execute("BEGIN")
        try:
            if self._run_row(db, run_id, _now_ms()) is None:
                raise UnknownRun(run_id)
            jobs = db.execute("SELECT * FROM jobs WHERE run_id = ? ORDER BY position", (run_id,)).fetchall()
            if names is not None:
                wanted = set(names)
                jobs = [j for j in jobs if j["name"] in wanted]
                missing = wanted - {j["name"] for j in jobs}
                if missing:
                    raise UnknownJob(f"{run_id}: {sorted(missing)[0]}")
            attempts: dict[str, list[AttemptRecord]] = {}
            for a in db.execute("SELECT * FROM attempts WHERE run_id = ? ORDER BY job, number", (run_id,)):
                attempts.setdefault(a["job"], []).append(_attempt_record(a))
        finally:
            db.execute("COMMIT")
        return {j["name"]: _job_record(j, attempts.get(j["name"], [])) for j in jobs}

    def list_runs(self, limit: int = 20) -> list[RunRecord]:
        rows = self._db.conn().execute(
            "SELECT * FROM runs WHERE expires_at IS NULL OR expires_at > ?"
            " ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (_now_ms(), limit),
        )
        return [_run_record(r) for r in rows]

    # -- jobs --------------------------------------------------------------------------

    def claim(
        self, run_id: str, job: str, worker: str, lease_ms: int, max_lost: int = 1
    ) -> Claim | Refusal:
        check_run_id(run_id)
        lease_ms = check_lease_ms(lease_ms)
        with self._db.transaction() as db:
            now = _now_ms()
            run = self._run_row(db, run_id, now)
            if run is None:
                raise UnknownRun(run_id)
            row = self._job_row(db, run_id, job)
            src = row["status"]
            if src in TERMINAL:
                return Refusal(REFUSED_FINISHED)  # a redelivered message must not run the job again
            if src == RUNNING and row["lease_expires_at"] is not None and row["lease_expires_at"] > now:
                return Refusal(REFUSED_LEASED)
            lost = row["lost"]
            if src == RUNNING:
                # The lease expired without a finish: the worker holding it is gone.
                lost += 1
                db.execute(
                    "UPDATE attempts SET status = ?, reason = ?, finished_at = ?"
                    " WHERE run_id = ? AND job = ? AND number = ?",
                    (FAILED, REASON_WORKER_LOST, now, run_id, job, row["attempt"]),
                )
            refusal = None
            if run["cancel_requested"]:
                status, reason, refusal = CANCELLED, REASON_CANCELLED, REFUSED_CANCELLED
            elif src == RUNNING and lost > max_lost:
                status, reason, refusal = FAILED, REASON_WORKER_LOST, REFUSED_WORKER_LOST
            if refusal is not None:
                self._set_job(db, run_id, job, status=status, reason=reason, finished_at=now,
                              lost=lost, lease_expires_at=None)
                self._emit(db, run_id, job, src, status, now, row["attempt"], reason)
                self._job_terminal(db, run_id, status, bool(row["allow_failure"]), now)
                return Refusal(refusal)

            (token,) = db.execute(
                "UPDATE counters SET value = value + 1 WHERE name = 'token' RETURNING value"
            ).fetchone()
            attempt = row["attempt"] + 1
            db.execute(
                "INSERT INTO attempts (run_id, job, number, worker, token, started_at, status)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run_id, job, attempt, worker, token, now, RUNNING),
            )
            self._set_job(
                db, run_id, job, status=RUNNING, attempt=attempt, worker=worker, token=token, lost=lost,
                started_at=row["started_at"] if row["started_at"] is not None else now,
                finished_at=None, exit_code=None, reason=None, lease_expires_at=now + lease_ms,
            )
            self._emit(db, run_id, job, src, RUNNING, now, attempt, REASON_WORKER_LOST if src == RUNNING else None)
            return Claim(token=token, attempt=attempt)

    def heartbeat(self, run_id: str, job: str, token: int, lease_ms: int) -> HeartbeatResult:
        check_run_id(run_id)
        lease_ms = check_lease_ms(lease_ms)
        with self._db.transaction() as db:
            now = _now_ms()
            run = self._run_row(db, run_id, now)
            row = db.execute("SELECT * FROM jobs WHERE run_id = ? AND name = ?", (run_id, job)).fetchone()
            # The token, not the lease, decides: an expired lease nobody re-claimed is still ours.
            if run is None or row is None or row["status"] != RUNNING or row["token"] != token:
                return HEARTBEAT_LOST
            self._set_job(db, run_id, job, lease_expires_at=now + lease_ms)
            return HEARTBEAT_CANCEL if run["cancel_requested"] else HEARTBEAT_OK

    def finish(
        self,
        run_id: str,
        job: str,
        token: int,
        status: str,
        exit_code: int | None = None,
        reason: str | None = None,
        retry_delay: float | None = None,
    ) -> bool:
        check_run_id(run_id)
        reason, retry_delay = finish_args(status, exit_code, reason, retry_delay)
        with self._db.transaction() as db:
            now = _now_ms()
            if self._run_row(db, run_id, now) is None:
                return False  # expired run: nothing to write, as for a stale token
            row = self._job_row(db, run_id, job)
            src = row["status"]
            # Only a claimed job (running, or retrying after a claim) has a token to present.
            if src not in (RUNNING, RETRYING) or row["token"] != token or not can_transition(src, status):
                return False
            fields: dict[str, Any] = {"status": status}
            if src == RUNNING:
                db.execute(
                    "UPDATE attempts SET status = ?, finished_at = ?, exit_code = ?, reason = ?, retry_delay = ?"
                    " WHERE run_id = ? AND job = ? AND number = ?",
                    (status, now, exit_code, reason, retry_delay, run_id, job, row["attempt"]),
                )
                fields.update(exit_code=exit_code, reason=reason, lease_expires_at=None)
            else:
                # retrying -> failed/cancelled: giving up on a scheduled retry keeps the last exit code.
                if exit_code is not None:
                    fields["exit_code"] = exit_code
                if reason is not None:
                    fields["reason"] = reason
            if status in TERMINAL:
                fields["finished_at"] = now
            self._set_job(db, run_id, job, **fields)
            final_reason = fields.get("reason", row["reason"])
            self._emit(db, run_id, job, src, status, now, row["attempt"], final_reason)
            if status in TERMINAL:
                self._job_terminal(db, run_id, status, bool(row["allow_failure"]), now)
            return True

    def skip(self, run_id: str, job: str, reason: str) -> bool:
        check_run_id(run_id)
        check_skip_reason(reason)
        with self._db.transaction() as db:
            now = _now_ms()
            if self._run_row(db, run_id, now) is None:
                raise UnknownRun(run_id)
            row = self._job_row(db, run_id, job)
            if not can_transition(row["status"], SKIPPED):
                return False
            self._set_job(db, run_id, job, status=SKIPPED, reason=reason, finished_at=now)
            self._emit(db, run_id, job, row["status"], SKIPPED, now, row["attempt"], reason)
            self._job_terminal(db, run_id, SKIPPED, bool(row["allow_failure"]), now)
            return True

    def request_cancel(self, run_id: str) -> list[str]:
        check_run_id(run_id)
        with self._db.transaction() as db:
            now = _now_ms()
            run = self._run_row(db, run_id, now)
            if run is None:
                raise UnknownRun(run_id)
            if run["status"] != RUNNING:
                return []
            db.execute("UPDATE runs SET cancel_requested = 1 WHERE run_id = ?", (run_id,))
            running = []
            for row in db.execute("SELECT * FROM jobs WHERE run_id = ? ORDER BY position", (run_id,)).fetchall():
                if row["status"] == RUNNING:
                    running.append(row["name"])
                elif can_transition(row["status"], CANCELLED):
                    self._set_job(db, run_id, row["name"], status=CANCELLED, reason=REASON_CANCELLED,
                                  finished_at=now)
                    self._emit(db, run_id, row["name"], row["status"], CANCELLED, now, row["attempt"],
                               REASON_CANCELLED)
                    self._job_terminal(db, run_id, CANCELLED, bool(row["allow_failure"]), now)
            return running

    # -- logs and events ---------------------------------------------------------------

    def append_logs(self, run_id: str, job: str, entries: Sequence[tuple[str, str]]) -> None:
        check_run_id(run_id)
        with self._db.transaction() as db:
            now = _now_ms()
            if self._run_row(db, run_id, now) is None:
                raise UnknownRun(run_id)
            self._job_row(db, run_id, job)
            db.executemany(
                "INSERT INTO logs (run_id, job, stream, text, at) VALUES (?, ?, ?, ?, ?)",
                [(run_id, job, stream, text, now) for stream, text in entries],
            )

    def read_logs(
        self,
        run_id: str,
        job: str,
        after: str | None = None,
        count: int = 1000,
        block_ms: int = 0,
    ) -> tuple[list[LogEntry], str]:
        check_run_id(run_id)
        check_count(count)
        rows, cursor = self._poll(
            "SELECT * FROM logs WHERE run_id = ? AND job = ? AND id > ? AND " + _visible("logs") + " ORDER BY id LIMIT ?",
            (run_id, job), after, count, block_ms,
        )
        return [LogEntry(r["stream"], r["text"], iso_ms(r["at"])) for r in rows], cursor

    def events(
        self, run_id: str, after: str | None = None, block_ms: int = 0
    ) -> tuple[list[Event], str]:
        check_run_id(run_id)
        rows, cursor = self._poll(
            "SELECT * FROM events WHERE run_id = ? AND id > ? AND " + _visible("events") + " ORDER BY id LIMIT ?",
            (run_id,), after, 1000, block_ms,
        )
        events = [
            Event(r["job"], r["from_status"], r["to_status"], iso_ms(r["at"]), r["attempt"], r["reason"])
            for r in rows
        ]
        return events, cursor

    def _poll(
        self, sql: str, params: tuple, after: str | None, count: int, block_ms: int
    ) -> tuple[list[sqlite3.Row], str]:
        """Rows of `sql` (params, then the cursor, now for `_visible`, and the count)."""
        cursor = after or "0"
        deadline = time.monotonic() + block_ms / 1000
        db = self._db.conn()
        while True:
            rows = db.execute(sql, (*params, int(cursor), _now_ms(), count)).fetchall()
            if rows:
                return rows, str(rows[-1]["id"])
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return [], cursor
            time.sleep(min(POLL_S, remaining))


def _run_record(row: sqlite3.Row) -> RunRecord:
    return RunRecord(
        run_id=row["run_id"],
        pipeline=row["pipeline"],
        status=row["status"],
        created_at=iso_ms(row["created_at"]),
        finished_at=iso_ms(row["finished_at"]),
        cancel_requested=bool(row["cancel_requested"]),
        meta=json.loads(row["meta"]),
    )


def _attempt_record(row: sqlite3.Row) -> AttemptRecord:
    return AttemptRecord(
        number=row["number"],
        worker=row["worker"],
        started_at=iso_ms(row["started_at"]),
        finished_at=iso_ms(row["finished_at"]),
        status=row["status"],
        exit_code=row["exit_code"],
        reason=row["reason"],
        retry_delay=row["retry_delay"],
    )


def _job_record(row: sqlite3.Row, attempts: list[AttemptRecord]) -> JobRecord:
    return JobRecord(
        name=row["name"],
        status=row["status"],
        attempt=row["attempt"],
        worker=row["worker"],
        started_at=iso_ms(row["started_at"]),
        finished_at=iso_ms(row["finished_at"]),
        exit_code=row["exit_code"],
        reason=row["reason"],
        allow_failure=bool(row["allow_failure"]),
        attempts=attempts,
    )
