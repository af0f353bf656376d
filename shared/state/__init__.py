"""The run/job state store: the source of truth for runs, jobs, attempts, leases and logs.

`open_state(url)` picks the backend from the URL scheme: `redis://` / `rediss://` for
distributed mode, `sqlite:///path` for embedded mode. See docs/state.md.
"""
from __future__ import annotations

from urllib.parse import unquote

from shared.state.base import (
    DEFAULT_RETENTION_S,
    AttemptRecord,
    Claim,
    Event,
    JobMeta,
    JobRecord,
    LogEntry,
    Refusal,
    RunExists,
    RunRecord,
    StateError,
    StateStore,
    UnknownJob,
    UnknownRun,
)

__all__ = [
    "AttemptRecord",
    "Claim",
    "Event",
    "JobMeta",
    "JobRecord",
    "LogEntry",
    "Refusal",
    "RunExists",
    "RunRecord",
    "StateError",
    "StateStore",
    "UnknownJob",
    "UnknownRun",
    "open_state",
]

SQLITE_PREFIX = "sqlite:///"


def open_state(url: str, *, retention_s: float = DEFAULT_RETENTION_S) -> StateStore:
    """Open the state store at `url`; runs are kept `retention_s` seconds after they end.

    SQLite URLs follow SQLAlchemy: `sqlite:///state.db` is relative to the working
    directory, `sqlite:////var/lib/conveyor/state.db` is absolute.
    """
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("redis", "rediss"):
        from shared.state.redis import RedisState

        return RedisState(url, retention_s=retention_s)
    if scheme == "sqlite":
        if not url.startswith(SQLITE_PREFIX) or len(url) == len(SQLITE_PREFIX):
            raise ValueError(f"expected sqlite:///PATH, got {url!r}")
        from shared.state.sqlite import SQLiteState

        return SQLiteState(unquote(url[len(SQLITE_PREFIX):]), retention_s=retention_s)
    raise ValueError(f"unsupported state URL scheme {scheme!r}: expected redis://, rediss:// or sqlite:///")
