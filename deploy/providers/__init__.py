"""Instance providers: the protocol in `base`, one module per provider type."""
from __future__ import annotations

from pathlib import Path

from deploy.config import DeployConfig
from deploy.providers.base import Instance, Provider, ProviderError, TransientProviderError

__all__ = ["Instance", "Provider", "ProviderError", "TransientProviderError", "open_provider"]


def open_provider(config: DeployConfig, workdir: Path | None) -> Provider:
    """The provider an environment names; command paths are relative to `workdir`."""
    provider = config.provider
    if provider.type == "command":
        from deploy.providers.command import CommandProvider

        return CommandProvider(provider.start or "", provider.stop, workdir, env=provider.env,
                               pass_env=provider.pass_env)
    if provider.type == "docker":
        from deploy.providers.docker import DockerProvider

        return DockerProvider(provider.image or "", int(provider.port or 0), config.env_key, provider.docker_host,
                              network=provider.network)
    raise ProviderError(f"unsupported provider type {provider.type!r}")
