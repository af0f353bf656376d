"""Where deployment records live: beside the run state, in the same Redis or SQLite file.

`open_deploy_store(url)` takes the state store's URL (redis://, rediss://, sqlite:///path);
`deploy_store_for(store_or_url)` also accepts an open state store and shares its connection.
"""
from __future__ import annotations

from typing import cast

from deploy.store.base import DeployStore
from shared.state import state_backend
from shared.state.base import StateStore

__all__ = ["DeployStore", "deploy_store_for", "open_deploy_store"]

def open_deploy_store(state_url: str) -> DeployStore:
    """The deployment store at the state store's URL."""
    backend, where = state_backend(state_url)
    if backend == "redis":
        from deploy.store.redis import RedisDeployStore

        return RedisDeployStore(where)
    from deploy.store.sqlite import SQLiteDeployStore

    return SQLiteDeployStore(where)


def deploy_store_for(store_or_url: str | StateStore | DeployStore) -> DeployStore:
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
        return cast(DeployStore, store_or_url)
    raise TypeError(f"cannot find the deployment store of {type(store_or_url).__name__}")
