"""What several `conveyor server` processes agree on, kept beside the run state.

Servers are stateless: nothing that decides what happens next may live in one server's
memory. This module is the few shared primitives they need, written once over two
backends (kombu's habit: behaviour here, each backend supplies a handful of primitives):

- ``remember(key, value, ttl)``: store ``value`` unless the key exists; return what was
  there. Delivery ids (a redelivery gets the first answer), schedule ticks (one run per
  tick across servers) and "final status sent" flags are all this.
- ``put``/``get``/``delete``: plain values (the last fired tick of a schedule).
- ``add``/``discard``/``members``: small sets (runs whose end the servers watch for;
  runs of a concurrency group).
- ``note``/``notes``: a run's event log beyond job statuses (commit-status attempts,
  fork safety, concurrency decisions), shown in the run's status JSON.

Backends: Redis (the state store's database) for a cluster; the embedded SQLite file for
a server on one machine. Any backend error propagates: the server answers 503 and the
forge redelivers, instead of guessing.
"""
from __future__ import annotations

import json
import time
from typing import Any, Protocol

from shared.state import state_backend

PREFIX = "conveyor:server:"
# A run's notes are a diagnostic log, not a data store: a run that somehow keeps adding
# them (a forge that is down for days) keeps the newest ones.
MAX_NOTES = 500


class Coordination(Protocol):
    """Shared keys, sets and per-run notes. Every method is atomic; keys are plain text."""

    def remember(self, key: str, value: str, ttl_s: float | None) -> str | None:
        """Store ``value`` under ``key`` unless the key exists; None when stored now, else
        the value already there. Expires after ``ttl_s`` seconds (None: never)."""
        ...

    def put(self, key: str, value: str, ttl_s: float | None = None) -> None: ...

    def get(self, key: str) -> str | None: ...

    def delete(self, key: str) -> None: ...

    def add(self, name: str, member: str) -> None: ...

    def discard(self, name: str, member: str) -> None: ...

    def members(self, name: str) -> set[str]: ...

    def note(self, run_id: str, note: dict[str, Any]) -> None:
        """Append one event to the run's notes (``at`` is added when missing)."""
        ...

    def notes(self, run_id: str) -> list[dict[str, Any]]: ...

    def ping(self) -> None:
        """Raise when the backend cannot be reached (readiness)."""
        ...

    def close(self) -> None: ...


def claim(coordination: Coordination, key: str, ttl_s: float | None) -> bool:
    """True for exactly one caller across servers until ``key`` expires."""
    return coordination.remember(key, "1", ttl_s) is None


def _stamped(note: dict[str, Any]) -> str:
    return json.dumps({"at": round(time.time(), 3), **note}, sort_keys=True)


class RedisCoordination:
    """Keys under `conveyor:server:` in the state store's Redis database."""

    def __init__(self, url: str) -> None:
        import redis

        # Short timeouts: a webhook waiting on a dead Redis should answer 503 quickly.
        self.client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=5, socket_connect_timeout=5)

    def remember(self, key: str, value: str, ttl_s: float | None) -> str | None:
        full = PREFIX + key
        px = int(ttl_s * 1000) if ttl_s else None
        previous = self.client.set(full, value, nx=True, px=px, get=True)
        return previous  # None: set now (SET NX GET answers the old value or nil)

    def put(self, key: str, value: str, ttl_s: float | None = None) -> None:
        self.client.set(PREFIX + key, value, px=int(ttl_s * 1000) if ttl_s else None)

    def get(self, key: str) -> str | None:
        return self.client.get(PREFIX + key)

    def delete(self, key: str) -> None:
        self.client.delete(PREFIX + key)

    def add(self, name: str, member: str) -> None:
        self.client.sadd(PREFIX + "set:" + name, member)

    def discard(self, name: str, member: str) -> None:
        self.client.srem(PREFIX + "set:" + name, member)

    def members(self, name: str) -> set[str]:
        return set(self.client.smembers(PREFIX + "set:" + name))

    def note(self, run_id: str, note: dict[str, Any]) -> None:
        key = PREFIX + "notes:" + run_id
        pipe = self.client.pipeline()
        pipe.rpush(key, _stamped(note))
        pipe.ltrim(key, -MAX_NOTES, -1)
        # Outlives any run's retention in the state store (runs are purged after days).
        pipe.expire(key, 90 * 86400)
        pipe.execute()

    def notes(self, run_id: str) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in self.client.lrange(PREFIX + "notes:" + run_id, 0, -1)]

    def ping(self) -> None:
        self.client.ping()

    def close(self) -> None:
        self.client.close()


class SQLiteCoordination:
    """Tables in the embedded state file (one server on one machine)."""

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS server_keys (key TEXT PRIMARY KEY, value TEXT NOT NULL, expire_at REAL);
    CREATE TABLE IF NOT EXISTS server_sets (name TEXT NOT NULL, member TEXT NOT NULL, PRIMARY KEY (name, member));
    CREATE TABLE IF NOT EXISTS server_notes (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL,
                                             note TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS server_notes_run ON server_notes (run_id, id);
    """

    def __init__(self, path: str) -> None:
        from shared.sqlite_file import SQLiteFile

        self.file = SQLiteFile(path, self.SCHEMA)

    def remember(self, key: str, value: str, ttl_s: float | None) -> str | None:
        now = time.time()
        with self.file.transaction() as db:
            db.execute("DELETE FROM server_keys WHERE key = ? AND expire_at IS NOT NULL AND expire_at <= ?",
                       (key, now))
            row = db.execute("SELECT value FROM server_keys WHERE key = ?", (key,)).fetchone()
            if row is not None:
                return row[0]
            db.execute("INSERT INTO server_keys (key, value, expire_at) VALUES (?, ?, ?)",
                       (key, value, now + ttl_s if ttl_s else None))
            return None

    def put(self, key: str, value: str, ttl_s: float | None = None) -> None:
        with self.file.transaction() as db:
            db.execute("INSERT OR REPLACE INTO server_keys (key, value, expire_at) VALUES (?, ?, ?)",
                       (key, value, time.time() + ttl_s if ttl_s else None))

    def get(self, key: str) -> str | None:
        row = self.file.conn().execute(
            "SELECT value FROM server_keys WHERE key = ? AND (expire_at IS NULL OR expire_at > ?)",
            (key, time.time())).fetchone()
        return row[0] if row else None

    def delete(self, key: str) -> None:
        with self.file.transaction() as db:
            db.execute("DELETE FROM server_keys WHERE key = ?", (key,))

    def add(self, name: str, member: str) -> None:
        with self.file.transaction() as db:
            db.execute("INSERT OR IGNORE INTO server_sets (name, member) VALUES (?, ?)", (name, member))

    def discard(self, name: str, member: str) -> None:
        with self.file.transaction() as db:
            db.execute("DELETE FROM server_sets WHERE name = ? AND member = ?", (name, member))

    def members(self, name: str) -> set[str]:
        rows = self.file.conn().execute("SELECT member FROM server_sets WHERE name = ?", (name,)).fetchall()
        return {row[0] for row in rows}

    def note(self, run_id: str, note: dict[str, Any]) -> None:
        with self.file.transaction() as db:
            db.execute("INSERT INTO server_notes (run_id, note) VALUES (?, ?)", (run_id, _stamped(note)))
            db.execute("DELETE FROM server_notes WHERE run_id = ? AND id NOT IN "
                       "(SELECT id FROM server_notes WHERE run_id = ? ORDER BY id DESC LIMIT ?)",
                       (run_id, run_id, MAX_NOTES))

    def notes(self, run_id: str) -> list[dict[str, Any]]:
        rows = self.file.conn().execute("SELECT note FROM server_notes WHERE run_id = ? ORDER BY id",
                                        (run_id,)).fetchall()
        return [json.loads(row[0]) for row in rows]

    def ping(self) -> None:
        self.file.conn().execute("SELECT 1").fetchone()

    def close(self) -> None:
        pass


def open_coordination(state_url: str) -> Coordination:
    """The coordination keys beside the run state at ``state_url`` (redis:// or sqlite:///)."""
    backend, where = state_backend(state_url)
    if backend == "redis":
        return RedisCoordination(where)
    return SQLiteCoordination(where)
