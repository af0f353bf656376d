"""Where deployment records live: beside the run state, in the same Redis or SQLite file.

`open_deploy_store(url)` takes the state store's URL (redis://, rediss://, sqlite:///path);
`deploy_store_for(store_or_url)` also accepts an open state store and shares its connection.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from deploy.store.base import DeployStore

__all__ = ["DeployStore", "deploy_store_for", "open_deploy_store"]

SQLITE_PREFIX = "sqlite:///"


def open_deploy_store(state_url: str) -> DeployStore:
    """The deployment store at the state store's URL."""
    scheme = state_url.split(":", 1)[0].lower()
    if scheme in ("redis", "rediss"):
        from deploy.store.redis import RedisDeployStore

        return RedisDeployStore(state_url)
    if scheme == "sqlite":
        if not state_url.startswith(SQLITE_PREFIX) or len(state_url) == len(SQLITE_PREFIX):
            raise ValueError(f"expected sqlite:///PATH, got {state_url!r}")
        from deploy.store.sqlite import SQLiteDeployStore

        return SQLiteDeployStore(unquote(state_url[len(SQLITE_PREFIX):]))
    raise ValueError(f"unsupported state URL scheme {scheme!r}: expected redis://, rediss:// or sqlite:///")


def deploy_store_for(store_or_url: Any) -> DeployStore:
    """A deployment store from a URL, an open state store (sharing its Redis client or SQLite file), or itself."""
    if isinstance(store_or_url, str):
        return open_deploy_store(store_or_url)
    client = getattr(store_or_url, "client", None)
    if client is not None and hasattr(store_or_url, "claim"):
        from deploy.store.redis import RedisDeployStore

        return RedisDeployStore(client=client)
    path = getattr(store_or_url, "path", None)
    if isinstance(path, str) and hasattr(store_or_url, "claim"):
        from deploy.store.sqlite import SQLiteDeployStore

        return SQLiteDeployStore(path)
    if hasattr(store_or_url, "overdue"):
        return store_or_url
    raise TypeError(f"cannot find the deployment store of {type(store_or_url).__name__}")
