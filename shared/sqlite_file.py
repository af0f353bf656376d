"""One SQLite file shared by the embedded stores (run state, artifact index, deployments).

Each store keeps its own tables in the same file; this holds what they share: a connection
per thread (never one inherited through fork), WAL and a busy timeout so several threads
and processes can write, and `BEGIN IMMEDIATE` transactions, so a read-modify-write takes
the write lock before it reads.
"""
from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import contextmanager
from typing import Iterator

BUSY_TIMEOUT_S = 30.0


class SQLiteFile:
    """Connections to one database file, created with `schema` (idempotent DDL) on open.

    `user_version`, when given, is written with the schema (only the run state store owns
    the file's version).
    """

    def __init__(self, path: str, schema: str, user_version: int | None = None) -> None:
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        db = self.conn()
        # WAL is a property of the file: set once, every later connection uses it.
        db.execute("PRAGMA journal_mode=WAL")
        version = f" PRAGMA user_version = {int(user_version)};" if user_version is not None else ""
        db.executescript(f"BEGIN IMMEDIATE; {schema}{version} COMMIT;")

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (autocommit; rows as sqlite3.Row)."""
        conn = getattr(self._local, "conn", None)
        # A connection inherited through fork() must not be used by the child.
        if conn is None or self._local.pid != os.getpid():
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn, self._local.pid = conn, os.getpid()
            with self._lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding the file's write lock from its first statement."""
        db = self.conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        """Close every connection any thread opened."""
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()
