"""The provider contract: how an instance of a version is started and stopped at an address.

`start` must leave the instance running and accepting connections at its address, and
must replace whatever ran there before under that name (a tick that died after starting
an instance re-runs `start`: it has to be idempotent). `stop` must succeed when nothing
runs. Transient failures raise TransientProviderError and are retried with backoff;
anything else raises ProviderError and aborts the deployment.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class ProviderError(Exception):
    """Starting or stopping an instance failed for good."""


class TransientProviderError(ProviderError):
    """A failure worth retrying (command exit 75, Docker engine errors)."""


@dataclass(frozen=True)
class Instance:
    """One instance slot: the router server name and the address it listens on."""

    name: str
    address: str

    @property
    def host(self) -> str:
        return self.address.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])


class Provider(Protocol):
    def start(self, instance: Instance, version: str) -> str:
        """Run `version` at the instance's address, replacing what ran there; returns output for the log."""
        ...

    def stop(self, instance: Instance) -> str:
        """Stop whatever runs as this instance (no error when nothing does); returns output for the log."""
        ...
