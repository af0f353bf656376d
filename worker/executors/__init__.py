"""Executors run the steps of a job: in Docker containers, or as local processes.

``select_executor`` turns the ``CONVEYOR_EXECUTOR`` setting into one; the contract every
executor follows is in ``worker.executors.contract``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from worker.executors.contract import (

    Executor,

    InfrastructureError,

    JobSpec,

    LogLine,

    ResourceLimits,

    StepHandle,

    StepOutcome,

    StepSpec,

)

log = logging.getLogger(__name__)

# Long enough for a healthy local engine, short enough that a worker without Docker
# starts at once.
PING_TIMEOUT = 1.0
# Under the data directory: per-job scripts and homes, beside workspaces/ and logs/.
JOBS_DIR = "jobs"

__all__ = [
    "Executor",
    "InfrastructureError",
    "JobSpec",
    "ResourceLimits",
    "LogLine",
    "StepHandle",
    "StepOutcome",
    "StepSpec",
    "select_executor",
]


def select_executor(name: str | None, data_dir: Path | None = None) -> Executor:
    """The executor named by ``CONVEYOR_EXECUTOR``: ``"docker"``, ``"local"`` or None.

    Job directories (scripts, homes) go under ``data_dir/jobs``: the worker's data
    directory is the one path a containerised worker shares with the engine's host
    (the system temp directory is not); ``None`` keeps them in the temp directory.

    None (or empty) picks Docker when an engine answers a ping within a second, else the
    local executor with one warning saying so. Naming ``"docker"`` when no engine answers
    raises InfrastructureError rather than silently running jobs unisolated; an unknown
    name raises ValueError.
    """
    # Imported here so that choosing "local" never needs the docker SDK to import cleanly.
    from worker.executors.local import LocalExecutor

    jobs_root = data_dir / JOBS_DIR if data_dir is not None else None
    choice = (name or "").strip().lower()
    if choice == "local":
        return LocalExecutor(scripts_root=jobs_root)
    if choice == "docker":
        from worker.executors.docker import DockerExecutor, connect

        return DockerExecutor(connect(), scripts_root=jobs_root)
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
        return LocalExecutor(scripts_root=jobs_root)
    return DockerExecutor(connect(), scripts_root=jobs_root)
