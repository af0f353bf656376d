"""Traffic routers: the protocol in `base`, one module per router type."""
from __future__ import annotations

from deploy.config import RouterConfig
from deploy.routers.base import Router, RouterError


def open_router(config: RouterConfig) -> Router:
    """The router an environment names."""
    if config.type == "haproxy":
        from deploy.routers.haproxy import HAProxyRouter

        return HAProxyRouter(config.admin, config.backend)
    raise RouterError(f"unsupported router type {config.type!r}")
