"""Deployment records in SQLite (embedded mode): `deploy_*` tables in the state store's file.

Every write is one `BEGIN IMMEDIATE` transaction, as in the state store, so compare-and-set
and the lock are atomic across the threads and processes sharing the file.
"""
from __future__ import annotations

import json
import time
from shared.sqlite_file import SQLiteFile
from deploy.record import Command, EnvRecord, GateAnswer, Record
from deploy.store.base import is_active

SCHEMA = """
CREATE TABLE IF NOT EXISTS deploy_records (
    run_id TEXT NOT NULL, job TEXT NOT NULL, version INTEGER NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (run_id, job));
CREATE TABLE IF NOT EXISTS deploy_commands (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, job TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS deploy_commands_job ON deploy_commands (run_id, job, id);
CREATE TABLE IF NOT EXISTS deploy_gates (
    run_id TEXT NOT NULL, gate TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (run_id, gate));
CREATE TABLE IF NOT EXISTS deploy_active (
    run_id TEXT NOT NULL, job TEXT NOT NULL, due INTEGER NOT NULL, PRIMARY KEY (run_id, job));
CREATE TABLE IF NOT EXISTS deploy_locks (name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS deploy_envs (key TEXT PRIMARY KEY, version INTEGER NOT NULL, data TEXT NOT NULL);
"""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class SQLiteDeployStore:
    """The deployment store in the embedded state database file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._db = SQLiteFile(path, SCHEMA)

    def close(self) -> None:
        self._db.close()

    # -- records ---------------------------------------------------------------------------

    def create(self, record: Record) -> bool:
        with self._db.transaction() as db:
            cursor = db.execute("INSERT OR IGNORE INTO deploy_records (run_id, job, version, data) VALUES (?, ?, 1, ?)",
                                (record["run_id"], record["job"], json.dumps(record)))
            if cursor.rowcount == 0:
                return False
            db.execute("INSERT OR REPLACE INTO deploy_active (run_id, job, due) VALUES (?, ?, ?)",
                       (record["run_id"], record["job"], record["next_tick_at"]))
            return True

    def load(self, run_id: str, job: str) -> tuple[Record, int] | None:
        row = self._db.conn().execute("SELECT version, data FROM deploy_records WHERE run_id = ? AND job = ?",
                                   (run_id, job)).fetchone()
        return None if row is None else (json.loads(row[1]), int(row[0]))

    def save(self, record: Record, version: int) -> bool:
        run_id, job = record["run_id"], record["job"]
        with self._db.transaction() as db:
            cursor = db.execute("UPDATE deploy_records SET version = version + 1, data = ? "
                                "WHERE run_id = ? AND job = ? AND version = ?",
                                (json.dumps(record), run_id, job, version))
            if cursor.rowcount == 0:
                return False
            if is_active(record):
                db.execute("INSERT OR REPLACE INTO deploy_active (run_id, job, due) VALUES (?, ?, ?)",
                           (run_id, job, record["next_tick_at"]))
            else:
                db.execute("DELETE FROM deploy_active WHERE run_id = ? AND job = ?", (run_id, job))
            return True

    def jobs(self, run_id: str) -> list[str]:
        rows = self._db.conn().execute("SELECT job FROM deploy_records WHERE run_id = ? ORDER BY job", (run_id,))
        return [row[0] for row in rows]

    # -- locks -----------------------------------------------------------------------------

    def lock(self, run_id: str, job: str, owner: str, ttl_ms: int) -> bool:
        name, now = f"{run_id}\n{job}", _now_ms()
        with self._db.transaction() as db:
            row = db.execute("SELECT owner, expires FROM deploy_locks WHERE name = ?", (name,)).fetchone()
            if row is not None and row[1] > now and row[0] != owner:
                return False
            db.execute("INSERT OR REPLACE INTO deploy_locks (name, owner, expires) VALUES (?, ?, ?)",
                       (name, owner, now + ttl_ms))
            return True

    def refresh_lock(self, run_id: str, job: str, owner: str, ttl_ms: int) -> bool:
        with self._db.transaction() as db:
            cursor = db.execute("UPDATE deploy_locks SET expires = ? WHERE name = ? AND owner = ?",
                                (_now_ms() + ttl_ms, f"{run_id}\n{job}", owner))
            return cursor.rowcount == 1

    def unlock(self, run_id: str, job: str, owner: str) -> None:
        with self._db.transaction() as db:
            db.execute("DELETE FROM deploy_locks WHERE name = ? AND owner = ?", (f"{run_id}\n{job}", owner))

    # -- commands and gates ------------------------------------------------------------------

    def add_command(self, run_id: str, job: str, command: Command) -> None:
        with self._db.transaction() as db:
            db.execute("INSERT INTO deploy_commands (run_id, job, data) VALUES (?, ?, ?)",
                       (run_id, job, json.dumps(command)))

    def commands(self, run_id: str, job: str, after: int) -> list[Command]:
        rows = self._db.conn().execute("SELECT data FROM deploy_commands WHERE run_id = ? AND job = ? ORDER BY id "
                                    "LIMIT -1 OFFSET ?", (run_id, job, after))
        return [json.loads(row[0]) for row in rows]

    def answer_gate(self, run_id: str, gate: str, answer: GateAnswer) -> GateAnswer:
        with self._db.transaction() as db:
            db.execute("INSERT OR IGNORE INTO deploy_gates (run_id, gate, data) VALUES (?, ?, ?)",
                       (run_id, gate, json.dumps(answer)))
            row = db.execute("SELECT data FROM deploy_gates WHERE run_id = ? AND gate = ?", (run_id, gate)).fetchone()
        return json.loads(row[0])

    def gate_answers(self, run_id: str) -> dict[str, GateAnswer]:
        rows = self._db.conn().execute("SELECT gate, data FROM deploy_gates WHERE run_id = ?", (run_id,))
        return {row[0]: json.loads(row[1]) for row in rows}

    # -- watchdog --------------------------------------------------------------------------

    def overdue(self, now_ms: int, grace_ms: int, bump_ms: int) -> list[tuple[str, str]]:
        with self._db.transaction() as db:
            rows = db.execute("SELECT run_id, job FROM deploy_active WHERE due <= ? LIMIT 100",
                              (now_ms - grace_ms,)).fetchall()
            for run_id, job in rows:
                db.execute("UPDATE deploy_active SET due = ? WHERE run_id = ? AND job = ?", (now_ms + bump_ms, run_id, job))
        return [(row[0], row[1]) for row in rows]

    # -- environments ----------------------------------------------------------------------

    def load_env(self, key: str) -> tuple[EnvRecord, int] | None:
        row = self._db.conn().execute("SELECT version, data FROM deploy_envs WHERE key = ?", (key,)).fetchone()
        return None if row is None else (json.loads(row[1]), int(row[0]))

    def save_env(self, key: str, data: EnvRecord, version: int) -> bool:
        with self._db.transaction() as db:
            if version == 0:
                cursor = db.execute("INSERT OR IGNORE INTO deploy_envs (key, version, data) VALUES (?, 1, ?)",
                                    (key, json.dumps(data)))
            else:
                cursor = db.execute("UPDATE deploy_envs SET version = version + 1, data = ? WHERE key = ? AND version = ?",
                                    (json.dumps(data), key, version))
            return cursor.rowcount == 1
