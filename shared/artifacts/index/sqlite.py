"""The artifact index in SQLite: embedded mode, in the same file as the state store.

Tables are prefixed `artifact_` so they sit beside `shared/state/sqlite.py`'s tables in
`state.db` without touching them (nor its `user_version`). Like the state store, every
write is one `BEGIN IMMEDIATE` transaction (the database write lock is taken before the
read-check-write), the file runs in WAL mode so readers never wait, and a busy timeout
makes this connection wait for the state store's transactions instead of failing.

    artifact_records         one row per (run_id, job, kind): the ArtifactRecord
    artifact_record_digests  (run_id, job, kind, digest): what a record references
    artifact_refs            digest -> count; a row exists only while count > 0
    artifact_present         digest: a complete record confirmed it stored (until tombstoned)
    artifact_tombstones      digest -> expires_at (epoch s): a collector is deleting it
    artifact_locks           name -> owner, expires_at (epoch s)

Times of tombstones and locks come from this host's clock; embedded mode has one host.
"""
from __future__ import annotations

import json
import sqlite3
import time
from typing import Collection, Iterator, Sequence

from shared.sqlite_file import SQLiteFile
from shared.artifacts.base import check_digest
from shared.artifacts.index import UnknownRecord, check_key, check_lock_name, check_seconds, reserved_digests
from shared.artifacts.index.base import TOMBSTONE_TTL_S, ArtifactRecord
from shared.state.base import check_run_id

SCHEMA = """
CREATE TABLE IF NOT EXISTS artifact_records (
    run_id TEXT NOT NULL,
    job TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    manifest TEXT NOT NULL,
    size INTEGER NOT NULL,
    files INTEGER NOT NULL,
    pipeline TEXT NOT NULL,
    created_at REAL NOT NULL,
    expire_at REAL,
    last_access REAL NOT NULL,
    holders TEXT NOT NULL,
    complete INTEGER NOT NULL,
    PRIMARY KEY (run_id, job, kind)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS artifact_record_digests (
    run_id TEXT NOT NULL,
    job TEXT NOT NULL,
    kind TEXT NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (run_id, job, kind, digest)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS artifact_refs (
    digest TEXT PRIMARY KEY,
    count INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS artifact_present (
    digest TEXT PRIMARY KEY
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS artifact_tombstones (
    digest TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS artifact_locks (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
"""

# records() reads this many rows per query, so no read transaction stays open while the
# collector deletes between two items.
PAGE_SIZE = 500
# SQLite's default limit on bound parameters is 999 (older builds) or 32766.
_IN_BATCH = 500

_RECORD_COLUMNS = ("run_id", "job", "kind", "name", "manifest", "size", "files", "pipeline", "created_at",
                   "expire_at", "last_access", "holders", "complete")
_KEY_WHERE = "run_id = ? AND job = ? AND kind = ?"


class SQLiteArtifactIndex:
    """The artifact index in one SQLite file; safe for several threads and processes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._db = SQLiteFile(path, SCHEMA)

    def close(self) -> None:
        self._db.close()

    # -- records -----------------------------------------------------------------------

    def reserve(self, record: ArtifactRecord, digests: Collection[str]) -> set[str]:
        wanted = reserved_digests(record, digests)
        key = record.key
        row = (*key, record.name, record.manifest, int(record.size), int(record.files), record.pipeline,
               float(record.created_at), _opt_float(record.expire_at), float(record.last_access),
               json.dumps(sorted(record.holders)), 0)
        with self._db.transaction() as db:
            self._release(db, key)
            db.execute(f"INSERT INTO artifact_records ({', '.join(_RECORD_COLUMNS)})"
                       f" VALUES ({', '.join('?' * len(_RECORD_COLUMNS))})", row)
            db.executemany("INSERT INTO artifact_record_digests (run_id, job, kind, digest) VALUES (?, ?, ?, ?)",
                           [(*key, d) for d in wanted])
            db.executemany("INSERT INTO artifact_refs (digest, count) VALUES (?, 1)"
                           " ON CONFLICT (digest) DO UPDATE SET count = count + 1", [(d,) for d in wanted])
            tombstoned = db.execute(
                "SELECT t.digest FROM artifact_tombstones t JOIN artifact_record_digests d ON d.digest = t.digest"
                " WHERE d.run_id = ? AND d.job = ? AND d.kind = ? AND t.expires_at > ?",
                (*key, time.time()),
            )
            return {r[0] for r in tombstoned}

    @staticmethod
    def _release(db: sqlite3.Connection, key: tuple[str, str, str]) -> list[str]:
        """Drop a record and one reference per digest it names; the digests now at zero."""
        db.execute(
            "UPDATE artifact_refs SET count = count - 1 WHERE digest IN"
            f" (SELECT digest FROM artifact_record_digests WHERE {_KEY_WHERE})", key,
        )
        zeros = [r[0] for r in db.execute(
            "SELECT r.digest FROM artifact_refs r JOIN artifact_record_digests d ON d.digest = r.digest"
            " WHERE d.run_id = ? AND d.job = ? AND d.kind = ? AND r.count <= 0 ORDER BY r.digest", key,
        )]
        db.executemany("DELETE FROM artifact_refs WHERE digest = ?", [(d,) for d in zeros])
        db.execute(f"DELETE FROM artifact_record_digests WHERE {_KEY_WHERE}", key)
        db.execute(f"DELETE FROM artifact_records WHERE {_KEY_WHERE}", key)
        return zeros

    def complete(self, run_id: str, job: str, kind: str) -> None:
        check_key(run_id, job, kind)
        with self._db.transaction() as db:
            if db.execute(f"UPDATE artifact_records SET complete = 1 WHERE {_KEY_WHERE}",
                          (run_id, job, kind)).rowcount == 0:
                raise UnknownRecord(run_id, job, kind)
            db.execute("INSERT OR IGNORE INTO artifact_present (digest) SELECT digest FROM artifact_record_digests"
                       f" WHERE {_KEY_WHERE}", (run_id, job, kind))

    def forget(self, digest: str) -> None:
        check_digest(digest)
        with self._db.transaction() as db:
            db.execute("DELETE FROM artifact_present WHERE digest = ?", (digest,))

    def present(self, digests: Sequence[str]) -> set[str]:
        wanted = list(dict.fromkeys(check_digest(d) for d in digests))
        db = self._db.conn()
        found: set[str] = set()
        for start in range(0, len(wanted), _IN_BATCH):
            batch = wanted[start:start + _IN_BATCH]
            rows = db.execute(f"SELECT digest FROM artifact_present WHERE digest IN ({_marks(batch)})", batch)
            found.update(r[0] for r in rows)
        return found

    def get(self, run_id: str, job: str | None = None, kind: str | None = None) -> list[ArtifactRecord]:
        check_run_id(run_id)
        sql = "SELECT * FROM artifact_records WHERE run_id = ? AND complete = 1"
        params: list[str] = [run_id]
        if job is not None:
            sql += " AND job = ?"
            params.append(job)
        if kind is not None:
            sql += " AND kind = ?"
            params.append(kind)
        return [_record(r) for r in self._db.conn().execute(sql + " ORDER BY job, kind", params)]

    def touch(self, run_id: str, job: str, kind: str, at: float) -> None:
        check_key(run_id, job, kind)
        check_seconds("at", at)
        # max(): a slow download reporting late must not make the record look less recently used.
        with self._db.transaction() as db:
            db.execute(f"UPDATE artifact_records SET last_access = max(last_access, ?) WHERE {_KEY_WHERE}",
                       (float(at), run_id, job, kind))

    def records(self) -> Iterator[ArtifactRecord]:
        db = self._db.conn()
        after: tuple[str, str, str] | None = None
        while True:
            if after is None:
                rows = db.execute("SELECT * FROM artifact_records ORDER BY run_id, job, kind LIMIT ?",
                                  (PAGE_SIZE,)).fetchall()
            else:
                rows = db.execute("SELECT * FROM artifact_records WHERE (run_id, job, kind) > (?, ?, ?)"
                                  " ORDER BY run_id, job, kind LIMIT ?", (*after, PAGE_SIZE)).fetchall()
            for row in rows:
                yield _record(row)
            if len(rows) < PAGE_SIZE:
                return
            after = (rows[-1]["run_id"], rows[-1]["job"], rows[-1]["kind"])

    def digests(self, run_id: str, job: str, kind: str) -> set[str]:
        """The digests a record references (empty when unknown); for a dry-run collection."""
        check_key(run_id, job, kind)
        rows = self._db.conn().execute(f"SELECT digest FROM artifact_record_digests WHERE {_KEY_WHERE}",
                                    (run_id, job, kind))
        return {r[0] for r in rows}

    def delete(self, run_id: str, job: str, kind: str) -> list[str]:
        check_key(run_id, job, kind)
        with self._db.transaction() as db:
            return self._release(db, (run_id, job, kind))

    # -- refcounts and tombstones ------------------------------------------------------

    def refcounts(self, digests: Sequence[str]) -> dict[str, int]:
        counts = {check_digest(d): 0 for d in digests}
        wanted = list(counts)
        db = self._db.conn()
        for start in range(0, len(wanted), _IN_BATCH):
            batch = wanted[start:start + _IN_BATCH]
            rows = db.execute(f"SELECT digest, count FROM artifact_refs WHERE digest IN ({_marks(batch)})", batch)
            counts.update({r[0]: r[1] for r in rows})
        return counts

    def begin_delete(self, digest: str, ttl_s: float = TOMBSTONE_TTL_S) -> bool:
        check_digest(digest)
        check_seconds("ttl_s", ttl_s)
        with self._db.transaction() as db:
            now = time.time()
            # Dead collectors' tombstones would otherwise stay forever; drop them while we hold the lock.
            db.execute("DELETE FROM artifact_tombstones WHERE expires_at <= ?", (now,))
            if db.execute("SELECT 1 FROM artifact_refs WHERE digest = ? AND count > 0", (digest,)).fetchone():
                return False
            db.execute("INSERT INTO artifact_tombstones (digest, expires_at) VALUES (?, ?)"
                       " ON CONFLICT (digest) DO UPDATE SET expires_at = excluded.expires_at",
                       (digest, now + float(ttl_s)))
            db.execute("DELETE FROM artifact_present WHERE digest = ?", (digest,))
            return True

    def end_delete(self, digest: str) -> None:
        check_digest(digest)
        with self._db.transaction() as db:
            db.execute("DELETE FROM artifact_tombstones WHERE digest = ?", (digest,))

    def tombstoned(self, digests: Sequence[str]) -> set[str]:
        wanted = list(dict.fromkeys(check_digest(d) for d in digests))
        db = self._db.conn()
        now = time.time()
        found: set[str] = set()
        for start in range(0, len(wanted), _IN_BATCH):
            batch = wanted[start:start + _IN_BATCH]
            rows = db.execute(f"SELECT digest FROM artifact_tombstones WHERE digest IN ({_marks(batch)})"
                              " AND expires_at > ?", (*batch, now))
            found.update(r[0] for r in rows)
        return found

    # -- the collector lock ------------------------------------------------------------

    def acquire_lock(self, name: str, owner: str, ttl_s: float) -> bool:
        check_lock_name(name)
        check_seconds("ttl_s", ttl_s)
        with self._db.transaction() as db:
            now = time.time()
            row = db.execute("SELECT owner, expires_at FROM artifact_locks WHERE name = ?", (name,)).fetchone()
            if row is not None and row["owner"] != owner and row["expires_at"] > now:
                return False
            # The holder asking again extends its lease: a long collection renews as it goes.
            db.execute("INSERT INTO artifact_locks (name, owner, expires_at) VALUES (?, ?, ?)"
                       " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at",
                       (name, owner, now + float(ttl_s)))
            return True

    def release_lock(self, name: str, owner: str) -> None:
        check_lock_name(name)
        with self._db.transaction() as db:
            db.execute("DELETE FROM artifact_locks WHERE name = ? AND owner = ?", (name, owner))


def _marks(values: Sequence[object]) -> str:
    return ", ".join("?" * len(values))


def _opt_float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _record(row: sqlite3.Row) -> ArtifactRecord:
    return ArtifactRecord(
        run_id=row["run_id"],
        job=row["job"],
        kind=row["kind"],
        name=row["name"],
        manifest=row["manifest"],
        size=row["size"],
        files=row["files"],
        pipeline=row["pipeline"],
        created_at=row["created_at"],
        expire_at=row["expire_at"],
        last_access=row["last_access"],
        holders=frozenset(json.loads(row["holders"])),
        complete=bool(row["complete"]),
    )
