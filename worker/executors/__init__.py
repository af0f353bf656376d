"""Executors run the steps of a job: in Docker containers, or as local processes.

``select_executor`` turns the ``CONVEYOR_EXECUTOR`` setting into one; the contract every
executor follows is in ``worker.executors.contract``. ``hand_over`` gives a workspace to
the user its steps run as.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
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

# `conveyor run` on one's own machine only: how long its "auto" choice waits for an engine
# before it runs the steps locally (with a warning). A worker never guesses.
PING_TIMEOUT = 3.0
AUTO = "auto"
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
    "hand_over",
    "resolve_user",
    "select_executor",
]


def select_executor(name: str | None, data_dir: Path | None = None) -> Executor:
    """The executor named by ``CONVEYOR_EXECUTOR``: ``"docker"``, ``"local"``, None or
    ``"auto"``.

    Job directories (scripts, homes) go under ``data_dir/jobs``: the worker's data
    directory is the one path a containerised worker shares with the engine's host
    (the system temp directory is not); ``None`` keeps them in the temp directory.

    ``"docker"`` and None (or empty) are the Docker executor, and raise
    InfrastructureError when no engine answers: nothing ever runs jobs unisolated because
    an engine was slow or down. ``"local"`` is the local executor, which isolates
    nothing. ``"auto"`` is what ``conveyor run`` (embedded, on one's own machine) uses
    when not told: Docker when an engine answers within ``PING_TIMEOUT``, else the local
    executor with one warning; configuration never yields it. Anything else raises
    ValueError.
    """
    # Imported here so that choosing "local" never needs the docker SDK to import cleanly.
    from worker.executors.local import LocalExecutor

    jobs_root = data_dir / JOBS_DIR if data_dir is not None else None
    choice = (name or "").strip().lower()
    if choice == "local":
        return LocalExecutor(scripts_root=jobs_root)
    if choice not in ("", "docker", AUTO):
        raise ValueError(
            f"unknown executor {name!r} (CONVEYOR_EXECUTOR must be 'docker' or 'local')"
        )
    from worker.executors.docker import DockerExecutor, connect

    if choice == AUTO:
        try:
            connect(timeout=PING_TIMEOUT).close()
        except InfrastructureError as exc:
            log.warning(
                "%s; running steps with the local executor, directly on this machine without "
                "isolation or resource limits. Pass --executor docker or --executor local to "
                "choose explicitly.",
                exc,
            )
            return LocalExecutor(scripts_root=jobs_root)
        return DockerExecutor(connect(), scripts_root=jobs_root)
    try:
        client = connect()
    except InfrastructureError as exc:
        if choice:
            raise
        raise InfrastructureError(
            f"{exc}; jobs run in Docker containers: start the engine (or set DOCKER_HOST), "
            "or set CONVEYOR_EXECUTOR=local to run them unisolated on this host"
        ) from exc
    return DockerExecutor(client, scripts_root=jobs_root)


def resolve_user(spec: str) -> tuple[int, int]:
    """uid and gid of ``user[:group]`` (names or numbers); KeyError for an unknown name.

    Without a group: the user's primary group, or gid = uid for a uid the host does
    not list.
    """
    user, _, group = spec.partition(":")
    if user.isdigit():
        uid = int(user)
        try:
            default_gid = pwd.getpwuid(uid).pw_gid
        except KeyError:
            default_gid = uid
    else:
        entry = pwd.getpwnam(user)
        uid, default_gid = entry.pw_uid, entry.pw_gid
    if not group:
        return uid, default_gid
    return uid, int(group) if group.isdigit() else grp.getgrnam(group).gr_gid


def hand_over(workspace: Path, user: str) -> None:
    """Give ``workspace`` (recursively) to ``user`` and make it private (0700).

    A step running as a non-root user must write its workspace, which the worker
    populated as itself. A worker that may not chown (not root) makes the tree writable
    for everyone instead, with a warning: the steps then work, and the workspace is as
    private as the worker's data directory. Symlinks are changed, never followed.
    """
    uid, gid = resolve_user(user)
    try:
        os.lchown(workspace, uid, gid)
        for root, dirs, files in os.walk(workspace):
            for entry in (*dirs, *files):
                os.lchown(os.path.join(root, entry), uid, gid)
        os.chmod(workspace, 0o700)
    except PermissionError:
        log.warning("cannot give %s to %s (the worker is not root): making it writable for "
                    "everyone instead", workspace, user)
        os.chmod(workspace, 0o777)
        for root, dirs, files in os.walk(workspace):
            for entry in dirs:
                path = os.path.join(root, entry)
                if not os.path.islink(path):
                    os.chmod(path, 0o777)
            for entry in files:
                path = os.path.join(root, entry)
                if not os.path.islink(path):
                    os.chmod(path, os.stat(path).st_mode | 0o666)
