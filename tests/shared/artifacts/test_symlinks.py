"""Symlinks in artifacts: stored as links (their target text), never followed, recreated
exactly and last, never written through.

A job-like round trip on the filesystem store and a SQLite index: collect a workspace the
way a worker does (`build_manifest` + `publish_manifest`), fetch it into a fresh directory
(`fetch_record`), and compare both sides link by link and the whole disk around them.
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Iterator

import pytest

from shared.artifacts import Manifest, build_manifest
from shared.artifacts.index import ArtifactRecord
from shared.artifacts.index.sqlite import SQLiteArtifactIndex
from shared.artifacts.manifest import MAX_LINK_TARGET, ManifestError, check_link_target, links_leaving
from shared.artifacts.base import PathError
from shared.artifacts.publish import fetch_record, publish_manifest

LINKS = {
    "venv/bin/python": "/usr/bin/python3",     # what `python3 -m venv` makes: absolute
    "venv/bin/python3": "python",              # relative, inside
    "venv/lib64": "lib",                       # a link to a directory, inside
    "venv/escape": "../../etc/passwd",         # relative, leaving the workspace
    "venv/dangling": "nowhere/at/all",         # points at nothing
}


def disk(root: Path) -> dict[str, tuple]:
    """Everything under `root`: per path its kind and content (mode, mtime) or link text."""
    seen: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            if path.is_symlink():
                seen[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                seen[rel] = ("dir", st.st_mode & 0o777)
            else:
                seen[rel] = ("file", path.read_bytes(), st.st_mode & 0o777, st.st_mtime_ns)
    return seen


def outside_of_the_destination(tmp_path: Path) -> dict[str, object]:
    """The bait (etc/, host/), the workspace and what lies at the top (the store and the
    index change on their own: a fetch records an access)."""
    return {"top": sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("state.db")
                          and p.name != "fresh"),
            **{name: disk(tmp_path / name) for name in ("etc", "host", "ws")}}


@pytest.fixture
def index(tmp_path: Path) -> Iterator[SQLiteArtifactIndex]:
    index = SQLiteArtifactIndex(str(tmp_path / "state.db"))
    yield index
    index.close()


def venv_workspace(tmp_path: Path) -> Path:
    """A job's workspace holding a virtualenv-like tree, plus bait outside it."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0\n")  # where `../../etc/passwd` leads
    host = tmp_path / "host"
    host.mkdir()
    (host / "secret").write_text("host secret")
    ws = tmp_path / "ws"
    (ws / "venv" / "bin").mkdir(parents=True)
    (ws / "venv" / "lib").mkdir()
    (ws / "venv" / "lib" / "site.py").write_text("import os\n")
    (ws / "venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    for path, target in LINKS.items():
        os.symlink(target, ws / path)
    os.symlink(host, ws / "venv" / "hostdir")  # an absolute link to a directory outside
    return ws


def record_for(manifest: Manifest) -> ArtifactRecord:
    now = time.time()
    return ArtifactRecord(run_id="20261203-120000-0ab1e5", job="build", kind="artifact", name="venv",
                          manifest="", size=0, files=0, pipeline="p", created_at=now, expire_at=None,
                          last_access=now, holders=frozenset({"test"}))


def test_every_link_is_stored_as_a_link_and_recreated_exactly(fs_store, index, tmp_path: Path) -> None:
    ws = venv_workspace(tmp_path)
    manifest = build_manifest(ws, ["venv"])
    by_path = {e.path: e for e in manifest.entries}
    expected_links = {**LINKS, "venv/hostdir": str(tmp_path / "host")}
    assert {p: e.link_target for p, e in by_path.items() if e.is_symlink} == expected_links
    assert {p for p, e in by_path.items() if not e.is_symlink} == {"venv/lib/site.py", "venv/pyvenv.cfg"}
    for path in expected_links:
        assert (by_path[path].sha256, by_path[path].size) == (None, 0)
    # Nothing behind a link was collected: not the host's secret, not lib/ again as lib64/.
    assert not any(p.startswith(("venv/hostdir/", "venv/lib64/")) for p in by_path)
    # python3 -> python leads outside too, through python -> /usr/bin/python3.
    assert sorted(e.path for e in links_leaving(ws, manifest)) == ["venv/bin/python", "venv/bin/python3",
                                                                   "venv/escape", "venv/hostdir"]

    record = publish_manifest(fs_store, index, ws, manifest, record_for(manifest))
    assert record.files == len(manifest.entries)
    stored = Manifest.from_bytes(fs_store.get_bytes(record.manifest))
    assert stored == manifest
    # What was stored is exactly the two files' contents and the manifest: no link was read through.
    digests = {info.digest for info in fs_store.iter_objects()}
    assert hashlib.sha256(b"host secret").hexdigest() not in digests
    assert hashlib.sha256(b"root:x:0:0\n").hexdigest() not in digests

    (tmp_path / "fresh").mkdir()
    before = outside_of_the_destination(tmp_path)
    out = tmp_path / "fresh" / "out"
    assert fetch_record(fs_store, index, record, out) == manifest
    for path, target in expected_links.items():
        assert os.readlink(out / path) == target, path
    assert (out / "venv" / "lib" / "site.py").read_text() == "import os\n"
    assert set(disk(out)) == {"venv", "venv/bin", "venv/lib", "venv/lib/site.py", "venv/pyvenv.cfg",
                              *expected_links}  # no staging directory or temp link left behind
    # Nothing outside the destination was created or changed: `../../etc/passwd` from
    # out/venv would be fresh/etc/passwd, the host directory is as it was.
    assert outside_of_the_destination(tmp_path) == before
    assert sorted(p.name for p in (tmp_path / "fresh").iterdir()) == ["out"]


def test_a_second_download_into_the_same_directory_replaces_links_and_files(fs_store, index,
                                                                            tmp_path: Path) -> None:
    ws = venv_workspace(tmp_path)
    manifest = build_manifest(ws, ["venv"])
    record = publish_manifest(fs_store, index, ws, manifest, record_for(manifest))
    out = tmp_path / "out"
    fetch_record(fs_store, index, record, out)
    first = disk(out)
    fetch_record(fs_store, index, record, out)
    assert {k: v[:2] for k, v in disk(out).items()} == {k: v[:2] for k, v in first.items()}


def test_a_link_to_a_directory_is_a_link_whatever_the_glob(tmp_path: Path) -> None:
    ws = venv_workspace(tmp_path)
    for pattern in ("venv/lib64", "venv/*", "venv/**", "**/lib64", "venv/hostdir"):
        manifest = build_manifest(ws, [pattern])
        paths = [e.path for e in manifest.entries]
        assert not any(p.startswith(("venv/lib64/", "venv/hostdir/")) for p in paths), (pattern, paths)


def test_sources_stay_strict_about_links_leaving_the_tree(tmp_path: Path) -> None:
    from shared.artifacts.manifest import build_manifest_of_paths

    ws = venv_workspace(tmp_path)
    with pytest.raises(PathError, match="venv/bin/python"):
        build_manifest_of_paths(ws, ["venv/bin/python"])
    assert build_manifest_of_paths(ws, ["venv/lib64"]).entries[0].link_target == "lib"
    with pytest.raises(PathError, match="absolute"):
        check_link_target("a", "/usr/bin/python3")


@pytest.mark.parametrize("target", ["", "a\0b", "x" * (MAX_LINK_TARGET + 1)])
def test_a_link_target_that_no_symlink_can_have_is_refused_in_a_manifest(target: str) -> None:
    doc = ('{"version": 1, "entries": [{"path": "l", "sha256": null, "size": 0, "mode": 511, '
           f'"link_target": "{target}"}}]}}').replace("\0", "\\u0000").encode()
    with pytest.raises((PathError, ManifestError)):
        Manifest.from_bytes(doc)


def test_a_member_swapped_for_a_link_after_it_was_looked_at_is_not_read_through(tmp_path: Path) -> None:
    from shared.artifacts.manifest import _hash_member

    (tmp_path / "secret").write_text("host secret")
    (tmp_path / "report").symlink_to(tmp_path / "secret")  # was a regular file when listed
    with pytest.raises(PathError, match="'report' was replaced by a symlink"):
        _hash_member("report", tmp_path / "report")


@pytest.mark.parametrize("links, leaving", [
    ({"a": "b", "b": "a"}, []),                                   # a loop leads nowhere
    ({"a": "sub/..", "sub": "deep/x"}, []),                       # `..` after a link: from its target
    ({"a": "sub/../..", "sub": "deep/x"}, []),                    # deep/x/../.. is the root itself
    ({"a": "sub/../../..", "sub": "deep/x"}, ["a"]),
    ({"a": "up/../x", "up": ".."}, ["a", "up"]),                  # ws/.. itself is outside
    ({"a": "gone/../../x"}, ["a"]),                               # lexical past a missing component
    ({"a": "gone/../x"}, []),
    ({"a": "abs", "abs": "/etc"}, ["a", "abs"]),
])
def test_which_links_lead_outside(tmp_path: Path, links: dict[str, str], leaving: list[str]) -> None:
    ws = tmp_path / "ws"
    (ws / "deep" / "x").mkdir(parents=True)
    for path, target in links.items():
        os.symlink(target, ws / path)
    manifest = build_manifest(ws, list(links))
    assert [e.path for e in links_leaving(ws, manifest)] == leaving
