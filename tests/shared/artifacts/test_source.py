"""Source snapshots hold what a user would expect a CI checkout to hold."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from shared.artifacts.base import PathError
from shared.artifacts.source import source_manifest


def _tree(root: Path) -> None:
    (root / "src").mkdir(parents=True)
    (root / "src" / "app.py").write_text("print('hi')\n")
    (root / "README").write_text("readme\n")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[core]\n")
    os.symlink("src/app.py", root / "link")


def _paths(manifest) -> list[str]:
    return [e.path for e in manifest.entries]


def test_plain_directory_is_the_tree_minus_git_and_the_data_dir(tmp_path: Path) -> None:
    _tree(tmp_path)
    data = tmp_path / "data"
    (data / "workspaces").mkdir(parents=True)
    (data / "workspaces" / "big").write_text("x")
    manifest = source_manifest(tmp_path, exclude=data)
    assert _paths(manifest) == ["README", "link", "src/app.py"]
    link = next(e for e in manifest.entries if e.path == "link")
    assert link.link_target == "src/app.py"  # kept as a link, never followed


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@x"})


def test_git_checkout_holds_tracked_files_with_their_working_tree_content(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "app.py").write_text("v1\n")
    (tmp_path / "gone.txt").write_text("tracked, then deleted\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "init")
    (tmp_path / "src" / "app.py").write_text("v2, not committed\n")
    (tmp_path / "untracked.log").write_text("noise\n")
    (tmp_path / "gone.txt").unlink()
    manifest = source_manifest(tmp_path)
    assert _paths(manifest) == ["src/app.py"]
    assert manifest.entries[0].size == len("v2, not committed\n")


def test_git_subdirectory_snapshot_is_relative_to_it(tmp_path: Path) -> None:
    (tmp_path / "svc" / "lib").mkdir(parents=True)
    (tmp_path / "svc" / "lib" / "a.py").write_text("a\n")
    (tmp_path / "other.txt").write_text("o\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    assert _paths(source_manifest(tmp_path / "svc")) == ["lib/a.py"]


def test_a_symlink_leaving_the_tree_is_refused_naming_it(tmp_path: Path) -> None:
    (tmp_path / "ok").write_text("x")
    os.symlink("/etc/passwd", tmp_path / "passwd")
    with pytest.raises(PathError, match="passwd"):
        source_manifest(tmp_path)
