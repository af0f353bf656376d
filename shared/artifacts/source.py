"""Source snapshots: the tree a run builds, stored once so every worker builds the same files.

In a git checkout the snapshot holds the files git tracks (with their working-tree
content: uncommitted edits to tracked files are included, untracked files are not). Elsewhere it holds the whole tree minus `.git`. The worker's
data directory is always left out when it lies inside the tree.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path, PurePosixPath

from shared.artifacts.manifest import Manifest, build_manifest_of_paths

GIT_TIMEOUT_S = 60


def git_tracked_paths(root: Path) -> list[str] | None:
    """The paths git tracks under `root` (relative to it), or None when it is not a checkout."""
    git = shutil.which("git")
    if git is None:
        return None
    try:
        inside = subprocess.run([git, "-C", str(root), "rev-parse", "--is-inside-work-tree"],
                                capture_output=True, text=True, timeout=GIT_TIMEOUT_S)
        if inside.returncode != 0 or inside.stdout.strip() != "true":
            return None
        listed = subprocess.run([git, "-C", str(root), "ls-files", "-z", "--cached"],
                                capture_output=True, timeout=GIT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if listed.returncode != 0:
        return None
    paths = [p for p in listed.stdout.decode("utf-8", "surrogateescape").split("\0") if p]
    return sorted(set(paths))


def walked_paths(root: Path, exclude: Path | None = None) -> list[str]:
    """Every file and symlink under `root`, minus `.git` and `exclude` (symlinks not followed)."""
    skip = os.path.realpath(exclude) if exclude is not None else None
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        kept = []
        for name in dirnames:
            full = os.path.join(dirpath, name)
            if name == ".git" or (skip is not None and os.path.realpath(full) == skip):
                continue
            if os.path.islink(full):
                filenames.append(name)  # a link to a directory is stored as a link
            else:
                kept.append(name)
        dirnames[:] = kept
        rel_dir = PurePosixPath(os.path.relpath(dirpath, root))
        for name in filenames:
            found.append((rel_dir / name).as_posix() if str(rel_dir) != "." else name)
    return sorted(found)


def source_manifest(root: Path, exclude: Path | None = None) -> Manifest:
    """The manifest of a source tree (see the module docstring for what it contains)."""
    root = Path(root)
    paths = git_tracked_paths(root)
    if paths is None:
        paths = walked_paths(root, exclude)
    elif exclude is not None:
        skip = os.path.realpath(exclude)
        paths = [p for p in paths if not _under(os.path.realpath(root / p), skip)]
    return build_manifest_of_paths(root, paths)


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")
