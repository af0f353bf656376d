"""Executors run the steps of a job: in Docker containers, or as local processes.

``select_executor`` turns the ``CONVEYOR_EXECUTOR`` setting into one; the contract every
executor follows is in ``worker.executors.base`` and ``docs/executors.md``.
"""

from __future__ import annotations

import logging

from worker.executors.base import (
    Executor,
    InfrastructureError,
    JobSpec,
    Limits,
    LogLine,
    StepHandle,
    StepOutcome,
    StepSpec,
)

log = logging.getLogger(__name__)

# Long enough for a healthy local engine, short enough that a worker without Docker
# starts at once.
PING_TIMEOUT = 1.0

__all__ = [
    "Executor",
    "InfrastructureError",
    "JobSpec",
    "Limits",
    "LogLine",
    "StepHandle",
    "StepOutcome",
    "StepSpec",
    "select_executor",
]


def select_executor(name: str | None) -> Executor:
    """The executor named by ``CONVEYOR_EXECUTOR``: ``"docker"``, ``"local"`` or None.

    None (or empty) picks Docker when an engine answers a ping within a second, else the
    local executor with one warning saying so. Naming ``"docker"`` when no engine answers
    raises InfrastructureError rather than silently running jobs unisolated; an unknown
    name raises ValueError.
    """
    # Imported here so that choosing "local" never needs the docker SDK to import cleanly.
    from worker.executors.local import LocalExecutor

    choice = (name or "").strip().lower()
    if choice == "local":
        return LocalExecutor()
    if choice == "docker":
        from worker.executors.docker import DockerExecutor, connect

        return DockerExecutor(connect())
    if choice:
        raise ValueError(
            f"unknown executor {name!r} (CONVEYOR_EXECUTOR must be 'docker' or 'local')"
        )
    from worker.executors.docker import DockerExecutor, connect

    try:
        connect(timeout=PING_TIMEOUT).close()
    except InfrastructureError as exc:
        log.warning(
            "%s; running steps with the local executor, directly on this host without "
            "isolation or resource limits. Set CONVEYOR_EXECUTOR=docker or "
            "CONVEYOR_EXECUTOR=local to choose explicitly.",
            exc,
        )
        return LocalExecutor()
    return DockerExecutor(connect())
