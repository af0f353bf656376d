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
    "state_backend",
]

SQLITE_PREFIX = "sqlite:///"


def state_backend(url: str) -> tuple[str, str]:
    """Which backend a state URL names: ("redis", url) or ("sqlite", file path).

    Every store kept beside the run state (artifact index, deployments) opens the same URL
    through this, so they agree on what it means. SQLite URLs follow SQLAlchemy:
    `sqlite:///state.db` is relative to the working directory, `sqlite:////var/lib/x.db`
    absolute.
    """
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("redis", "rediss"):
        return "redis", url
    if scheme == "sqlite":
        if not url.startswith(SQLITE_PREFIX) or len(url) == len(SQLITE_PREFIX):
            raise ValueError(f"expected sqlite:///PATH, got {url!r}")
        return "sqlite", unquote(url[len(SQLITE_PREFIX):])
    raise ValueError(f"unsupported state URL scheme {scheme!r}: expected redis://, rediss:// or sqlite:///")


def open_state(url: str, *, retention_s: float = DEFAULT_RETENTION_S) -> StateStore:
    """Open the state store at `url`; runs are kept `retention_s` seconds after they end."""
    backend, where = state_backend(url)
    if backend == "redis":
        from shared.state.redis import RedisState

        return RedisState(where, retention_s=retention_s)
    from shared.state.sqlite import SQLiteState

    return SQLiteState(where, retention_s=retention_s)
