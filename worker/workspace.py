"""Job workspaces: a directory per job attempt, populated from the run's source."""
from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def workspace_path(data_dir: Path, run_id: str, job: str) -> Path:
    """A filesystem-safe, collision-free directory for a job (matrix names carry any text)."""
    digest = hashlib.sha256(job.encode()).hexdigest()[:10]
    readable = _UNSAFE.sub("_", job)[:60].strip("._") or "job"
    return data_dir / "workspaces" / run_id / f"{readable}-{digest}"


def populate(workspace: Path, source: Path | None, exclude: Path | None = None) -> None:
    """A fresh copy of ``source`` (minus `.git`), so jobs never change the user's tree.

    Symlinks are copied as symlinks, never followed: a link to /etc stays a link.
    ``exclude`` (the worker's data directory) is left out when it lies inside the source,
    or the copy would contain the workspaces it is being copied into.
    """
    if workspace.exists():
        shutil.rmtree(workspace, ignore_errors=True)
    skip = exclude.resolve() if exclude is not None else None

    def ignore(directory: str, names: list[str]) -> set[str]:
        left_out = {".git"} & set(names)
        if skip is not None and Path(directory).resolve() == skip.parent:
            left_out |= {skip.name} & set(names)
        return left_out

    if source is not None and source.is_dir():
        shutil.copytree(source, workspace, symlinks=True, ignore=ignore)
    else:
        workspace.mkdir(parents=True)


def remove(workspace: Path) -> None:
    shutil.rmtree(workspace, ignore_errors=True)
