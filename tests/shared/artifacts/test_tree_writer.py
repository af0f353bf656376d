"""TreeWriter: members written by directory descriptor, never through a symlink."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared.artifacts.base import PathError
from shared.artifacts.tree_writer import STAGING_PREFIX, TreeWriter


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside"
    path.mkdir()
    (path / "victim").write_text("original")
    return path


def staged_with(tree: TreeWriter, data: bytes) -> Path:
    staged = tree.staged_path()
    staged.write_bytes(data)
    return staged


def test_files_and_links_land_where_named_and_staging_goes_away(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    with TreeWriter(dest) as tree:
        tree.prepare("a/b/file")
        tree.place_file(staged_with(tree, b"x"), "a/b/file", 0o640)
        tree.prepare("a/link")
        tree.place_link("/usr/bin/python3", "a/link")
        long_name = "n" * 255  # a temp name next to it would be too long; staging has none
        tree.prepare(long_name)
        tree.place_link("b/file", long_name)
    assert (dest / "a" / "b" / "file").read_bytes() == b"x"
    assert (dest / "a" / "b" / "file").stat().st_mode & 0o777 == 0o640
    assert os.readlink(dest / "a" / "link") == "/usr/bin/python3"
    assert os.readlink(dest / long_name) == "b/file"
    assert not [p for p in dest.iterdir() if p.name.startswith(STAGING_PREFIX)]


def test_a_symlinked_component_is_refused(tmp_path: Path, outside: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "d").symlink_to(outside)
    with TreeWriter(dest) as tree:
        with pytest.raises(PathError, match="is a symlink; refusing to write through it"):
            tree.prepare("d/evil")
        with pytest.raises(PathError, match="symlink"):
            tree.place_link("x", "d/evil")
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]


def test_a_file_component_is_refused(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "f").write_text("file")
    with TreeWriter(dest) as tree, pytest.raises(PathError, match="not a directory"):
        tree.prepare("f/x")


def test_an_existing_link_at_the_member_path_is_replaced_not_written_through(tmp_path: Path,
                                                                             outside: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "report").symlink_to(outside / "victim")
    with TreeWriter(dest) as tree:
        tree.prepare("report")
        tree.place_file(staged_with(tree, b"new"), "report", 0o644)
    assert not (dest / "report").is_symlink() and (dest / "report").read_bytes() == b"new"
    assert (outside / "victim").read_text() == "original"


def test_a_link_replaces_an_existing_file_and_refuses_a_directory(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    (dest / "dir").mkdir(parents=True)
    (dest / "dir" / "keep").write_text("k")
    (dest / "file").write_text("f")
    with TreeWriter(dest) as tree:
        tree.place_link("/etc/hostname", "file")
        with pytest.raises(PathError, match="is a directory"):
            tree.prepare("dir")
        with pytest.raises(PathError, match="is a directory"):
            tree.place_link("/etc", "dir")
    assert os.readlink(dest / "file") == "/etc/hostname"
    assert (dest / "dir" / "keep").read_text() == "k"


def test_a_directory_swapped_for_a_link_after_prepare_is_not_written_through(tmp_path: Path,
                                                                             outside: Path) -> None:
    """The check and the write are one: the write goes to the directory opened without
    following links, so a link put in the way meanwhile refuses the member."""
    dest = tmp_path / "dest"
    with TreeWriter(dest) as tree:
        tree.prepare("sub/file")
        (dest / "sub").rmdir()
        (dest / "sub").symlink_to(outside)
        with pytest.raises(PathError, match="symlink"):
            tree.place_file(staged_with(tree, b"evil"), "sub/file", 0o644)
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert not [p for p in dest.iterdir() if p.name.startswith(STAGING_PREFIX)]
