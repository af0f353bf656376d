"""Symlinks in artifacts are recreated as links and never written through.

Artifacts may now hold links pointing anywhere (`venv/bin/python -> /usr/bin/python3`),
so the download side carries the whole guarantee. Attacks (a job controls its artifacts;
a manifest read back from the store is untrusted):
- a manifest ordered link-first, `d -> /tmp/x` then the file `d/evil`: writing `d/evil`
  after making `d` would create `/tmp/x/evil`. Refused before anything is written;
- the same split over two artifacts (or an artifact and a link already in the
  destination): dependency `a` stores `d -> /outside`, dependency `b` stores `d/evil`; the
  downstream job fails (`script_failure`) and nothing appears outside its workspace;
- a link stored under the name of an existing file, a file stored under the name of an
  existing link: the entry at that path is replaced, never written through;
- a directory swapped for a link while a download is under way: refused, as the writes go
  through directory descriptors opened without following links;
- globs still never walk a symlinked directory to collect what is behind it.
A property test throws random manifests (links to `..`, absolute links, files beneath
them) at a destination already holding hostile links: nothing outside it ever changes.
"""
from __future__ import annotations

import json
import os
import tempfile
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.artifacts import open_store
from shared.artifacts.base import ArtifactError, PathError
from shared.artifacts.manifest import Manifest, ManifestEntry, build_manifest, download_tree
from tests.worker.local_run import run_until_done, start_local_run

RUN = "20261203-120000-11e5ec"


def tree(root: Path) -> dict[str, tuple]:
    """Everything under `root`: per path its kind and content or link text."""
    seen: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                seen[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                seen[rel] = ("dir",)
            else:
                seen[rel] = ("file", path.read_bytes(), path.lstat().st_mtime_ns)
    return seen


def store_manifest(store, entries: list[dict]) -> str:
    """Store a manifest with entries in exactly this order (as a hostile writer would)."""
    return store.put_bytes(json.dumps({"version": 1, "entries": entries}).encode()).digest


def link(path: str, target: str) -> dict:
    return {"path": path, "sha256": None, "size": 0, "mode": 0o777, "link_target": target}


def file(store, path: str, data: bytes = b"evil") -> dict:
    return {"path": path, "sha256": store.put_bytes(data).digest, "size": len(data), "mode": 0o644,
            "link_target": None}


@pytest.fixture
def fs_store(tmp_path: Path):
    return open_store((tmp_path / "store").as_uri())


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """Stands in for /tmp/x: a directory outside every destination."""
    path = tmp_path / "x"
    path.mkdir()
    (path / "existing").write_text("untouched")
    return path


def test_a_link_first_manifest_cannot_write_behind_its_link(fs_store, tmp_path: Path, outside: Path) -> None:
    digest = store_manifest(fs_store, [link("d", str(outside)), file(fs_store, "d/evil")])
    dest = tmp_path / "out"
    with pytest.raises(PathError, match="'d/evil' lies under member 'd'"):
        download_tree(fs_store, digest, dest)
    assert not (outside / "evil").exists()
    assert not dest.exists() or list(dest.iterdir()) == []


@pytest.mark.parametrize("target", ["{outside}", "..", "../x", "."])
def test_a_link_made_by_an_earlier_artifact_is_not_written_through(fs_store, tmp_path: Path, outside: Path,
                                                                   target: str) -> None:
    target = target.format(outside=outside)
    dest = tmp_path / "out"
    download_tree(fs_store, store_manifest(fs_store, [link("d", target)]), dest)
    assert os.readlink(dest / "d") == target
    before = tree(tmp_path / "x")
    with pytest.raises(PathError, match="is a symlink; refusing to write through it"):
        download_tree(fs_store, store_manifest(fs_store, [file(fs_store, "d/evil")]), dest)
    assert tree(tmp_path / "x") == before and not (tmp_path / "evil").exists()
    assert not (dest / "evil").exists()


def test_a_link_stored_under_an_existing_files_name_replaces_it(fs_store, tmp_path: Path, outside: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "config").write_text("mine")
    download_tree(fs_store, store_manifest(fs_store, [link("config", str(outside / "existing"))]), dest)
    assert os.readlink(dest / "config") == str(outside / "existing")
    assert (outside / "existing").read_text() == "untouched"


def test_a_file_stored_under_an_existing_links_name_replaces_the_link(fs_store, tmp_path: Path,
                                                                     outside: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "report").symlink_to(outside / "existing")
    (dest / "new").symlink_to(outside / "created")  # dangling: writing through would create it
    download_tree(fs_store, store_manifest(fs_store, [file(fs_store, "report", b"r"),
                                                       file(fs_store, "new", b"n")]), dest)
    assert not (dest / "report").is_symlink() and (dest / "report").read_bytes() == b"r"
    assert not (dest / "new").is_symlink() and (dest / "new").read_bytes() == b"n"
    assert (outside / "existing").read_text() == "untouched" and not (outside / "created").exists()


def test_a_link_over_an_existing_directory_is_refused(fs_store, tmp_path: Path, outside: Path) -> None:
    dest = tmp_path / "out"
    (dest / "lib").mkdir(parents=True)
    (dest / "lib" / "keep").write_text("k")
    with pytest.raises(PathError, match="is a directory"):
        download_tree(fs_store, store_manifest(fs_store, [link("lib", str(outside))]), dest)
    assert (dest / "lib" / "keep").read_text() == "k"


def test_a_directory_swapped_for_a_link_mid_download_is_not_written_through(fs_store, tmp_path: Path,
                                                                            outside: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "out"
    digest = store_manifest(fs_store, [file(fs_store, "sub/evil")])
    real_get = fs_store.get_file

    def swapping(digest_: str, path: Path, size: int | None = None) -> None:
        real_get(digest_, path, size)
        (dest / "sub").rmdir()  # made by the download a moment ago
        (dest / "sub").symlink_to(outside)

    monkeypatch.setattr(fs_store, "get_file", swapping)
    with pytest.raises(PathError, match="symlink"):
        download_tree(fs_store, digest, dest)
    assert sorted(p.name for p in outside.iterdir()) == ["existing"]


# -- globs still never walk a symlinked directory -------------------------------------------


@pytest.mark.parametrize("pattern", ["out/*/*", "out/**", "out/**/*", "out/*", "out", "out/root"])
def test_globs_store_a_directory_link_as_a_link_and_never_walk_it(tmp_path: Path, outside: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 pattern: str) -> None:
    ws = tmp_path / "ws"
    (ws / "out" / "real").mkdir(parents=True)
    (ws / "out" / "real" / "a.txt").write_text("a")
    (ws / "out" / "root").symlink_to(outside)
    listed: list[str] = []
    real_scandir = os.scandir

    def recording(path=".", *args, **kwargs):
        listed.append(os.path.realpath(path))
        return real_scandir(path, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", recording)
    entries = {e.path: e for e in build_manifest(ws, [pattern]).entries}
    assert not any(p.startswith("out/root/") for p in entries)
    if "out/root" in entries:
        assert entries["out/root"].link_target == str(outside)
    real_ws = os.path.realpath(ws)
    assert all(p == real_ws or p.startswith(real_ws + os.sep) for p in listed), listed


def test_a_literal_glob_through_a_link_leaving_the_workspace_is_still_refused(tmp_path: Path,
                                                                              outside: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "root").symlink_to(outside)
    with pytest.raises(PathError, match="goes through the symlink 'root'"):
        build_manifest(ws, ["root/existing"])


# -- through the job runner -------------------------------------------------------------------


def test_two_dependencies_cannot_combine_into_a_write_outside_the_workspace(tmp_path: Path, outside: Path) -> None:
    pipeline = textwrap.dedent(f"""
        name: split
        jobs:
          a:
            steps: [{{name: link, script: ["ln -s {outside} d"]}}]
            artifacts: {{paths: [d]}}
          b:
            steps: [{{name: file, script: ["mkdir d && echo pwned > d/evil"]}}]
            artifacts: {{paths: [d]}}
          use:
            depends_on: [a, b]
            steps: [{{name: never, script: ["echo ran"]}}]
    """)
    store, ctx = start_local_run(tmp_path, pipeline, RUN)

    def run(job: str) -> dict:
        return run_until_done(ctx, RUN, job)

    assert run("a")["status"] == "success"
    assert run("b")["status"] == "success"
    outcome = run("use")
    record = store.get_jobs(RUN, ["use"])["use"]
    entries, _ = store.read_logs(RUN, "use", after=None, count=10_000)
    log = "\n".join(entry.text for entry in entries)
    assert (outcome["status"], record.reason) == ("failed", "script_failure"), log
    assert "refusing to write through it" in log and "ran" not in log.replace("echo ran", "")
    assert sorted(p.name for p in outside.iterdir()) == ["existing"]


# -- property: nothing outside the destination ever changes ------------------------------------

NAMES = st.sampled_from(["d", "e", "d/f", "d/g", "e/f", "h"])
TARGETS = st.sampled_from(["..", "../..", "../outside", "/OUTSIDE", "/OUTSIDE/deeper", ".", "d", "e/f",
                           "nowhere"])


@st.composite
def members(draw) -> list[tuple[str, str | None]]:
    chosen = draw(st.lists(NAMES, min_size=1, max_size=5, unique=True))
    return [(name, draw(st.one_of(st.none(), TARGETS))) for name in chosen]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(members(), st.lists(st.tuples(NAMES, TARGETS), max_size=3))
def test_no_manifest_writes_outside_a_destination_with_hostile_links(chosen, existing) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sandbox = Path(tmp)
        out = sandbox / "outside"
        out.mkdir()
        (out / "f").write_text("keep")
        store = open_store((sandbox / "store").as_uri())
        dest = sandbox / "work" / "dest"
        dest.mkdir(parents=True)
        for name, target in existing:  # links already in the destination (an earlier artifact)
            path = dest / name
            if not os.path.lexists(path) and path.parent.is_dir() and not path.parent.is_symlink():
                os.symlink(target.replace("/OUTSIDE", str(out)), path)
        entries = []
        for name, target in chosen:
            if target is None:
                data = name.encode()
                entries.append(ManifestEntry(name, store.put_bytes(data).digest, len(data), 0o644))
            else:
                entries.append(ManifestEntry(name, None, 0, 0o777, target.replace("/OUTSIDE", str(out))))
        try:
            manifest = Manifest(tuple(entries))
        except (PathError, ArtifactError):
            return  # a member beneath another: refused before anything is stored
        before = tree(sandbox / "outside")
        top = sorted(p.name for p in sandbox.iterdir())
        digest = store.put_bytes(manifest.to_bytes()).digest
        try:
            download_tree(store, digest, dest)
        except PathError:
            pass
        else:
            for entry in manifest.entries:
                if entry.is_symlink:
                    assert os.readlink(dest / entry.path) == entry.link_target
                else:
                    assert not (dest / entry.path).is_symlink()
                    assert (dest / entry.path).read_bytes() == entry.path.encode()
        assert tree(sandbox / "outside") == before
        assert sorted(p.name for p in sandbox.iterdir()) == top
        assert sorted(p.name for p in (sandbox / "work").iterdir()) == ["dest"]


# -- `conveyor artifacts get` through the server's listing --------------------------------------


class FakeApi:
    """The two calls `_get_via_api` makes, answered as the server does (api_artifacts.member_json)."""

    def __init__(self, store, records: list[dict], objects: dict[str, str]) -> None:
        self.store, self.records, self.objects = store, records, objects  # objects: path -> digest

    def artifacts(self, run_id: str, all_kinds: bool) -> list[dict]:
        return self.records

    def artifact_chunks(self, run_id: str, job: str, path: str, kind: str = "artifact"):
        return (chunk for chunk in list(self.store._read_chunks(self.objects[path])))  # has close()


def listing(store, manifest: Manifest) -> FakeApi:
    from coordinator.server.api_artifacts import member_json

    digest = store.put_bytes(manifest.to_bytes()).digest
    record = {"job": "build", "kind": "artifact", "name": "venv", "manifest": digest, "files": len(manifest.entries),
              "size": manifest.total_size, "members": [member_json(e) for e in manifest.entries]}
    return FakeApi(store, [record], {e.path: e.sha256 for e in manifest.files})


def test_the_api_download_recreates_absolute_links_as_links(fs_store, tmp_path: Path, outside: Path) -> None:
    from coordinator.cli.artifacts import _get_via_api

    data = b"print(1)\n"
    manifest = Manifest((ManifestEntry("venv/lib/site.py", fs_store.put_bytes(data).digest, len(data), 0o644),
                         ManifestEntry("venv/bin/python", None, 0, 0o777, "/usr/bin/python3"),
                         ManifestEntry("venv/hostdir", None, 0, 0o777, str(outside)),
                         ManifestEntry("venv/escape", None, 0, 0o777, "../../etc/passwd")))
    dest = tmp_path / "got" / "out"
    _get_via_api(listing(fs_store, manifest), RUN, "build", str(dest), False)
    assert os.readlink(dest / "venv" / "bin" / "python") == "/usr/bin/python3"
    assert os.readlink(dest / "venv" / "hostdir") == str(outside)
    assert os.readlink(dest / "venv" / "escape") == "../../etc/passwd"
    assert (dest / "venv" / "lib" / "site.py").read_bytes() == data
    assert sorted(p.name for p in (tmp_path / "got").iterdir()) == ["out"]
    assert sorted(p.name for p in outside.iterdir()) == ["existing"]


def test_the_api_download_refuses_a_listing_with_a_file_beneath_a_link(fs_store, tmp_path: Path,
                                                                      outside: Path, capsys) -> None:
    from coordinator.cli.artifacts import _get_via_api

    evil = file(fs_store, "d/evil")
    members = [{"path": "d", "digest": None, "size": 0, "mode": 0o777, "link_target": str(outside)},
               {"path": "d/evil", "digest": evil["sha256"], "size": evil["size"], "mode": 0o644}]
    record = {"job": "build", "kind": "artifact", "name": "x", "manifest": "0" * 64, "files": 2, "size": 4,
              "members": members}
    dest = tmp_path / "got"
    with pytest.raises(SystemExit) as caught:
        _get_via_api(FakeApi(fs_store, [record], {"d/evil": evil["sha256"]}), RUN, "build", str(dest), False)
    assert caught.value.code == 1
    assert "lies under member 'd'" in capsys.readouterr().err
    assert sorted(p.name for p in outside.iterdir()) == ["existing"]
    assert not dest.exists() or list(dest.iterdir()) == []
