"""Manifests and tree transfer: round trips, dedup, integrity and path safety."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.artifacts import (
    IntegrityError,
    Manifest,
    ManifestEntry,
    PathError,
    build_manifest,
    download_tree,
    upload_tree,
)
from shared.artifacts.manifest import ManifestError, check_member_path, links_leaving
from tests.shared.artifacts.store_faults import corrupt


def make_tree(root: Path) -> Path:
    """A workspace with subdirectories, modes, an empty file, duplicates and symlinks."""
    (root / "dist" / "lib").mkdir(parents=True)
    (root / "dist" / "app.whl").write_bytes(b"wheel bytes")
    (root / "dist" / "app.whl").chmod(0o644)
    (root / "dist" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "dist" / "run.sh").chmod(0o755)
    (root / "dist" / "secret.key").write_text("k")
    (root / "dist" / "secret.key").chmod(0o600)
    (root / "dist" / "empty").write_bytes(b"")
    (root / "dist" / "lib" / "copy.whl").write_bytes(b"wheel bytes")  # same content as app.whl
    (root / "dist" / "latest.whl").symlink_to("app.whl")
    (root / "dist" / "libs").symlink_to("lib")
    (root / "dist" / "lib" / "up.whl").symlink_to("../app.whl")
    (root / "src.c").write_text("int main;")  # not matched by the globs below
    return root


def snapshot(root: Path) -> dict[str, tuple]:
    """What a user sees in a directory: per path, file content and mode, or symlink target."""
    seen = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                seen[rel] = ("link", os.readlink(path))
            elif path.is_file():
                seen[rel] = ("file", path.read_bytes(), path.stat().st_mode & 0o777)
    return seen


def test_tree_round_trip(store, tmp_path):
    src = make_tree(tmp_path / "ws")
    digest, manifest = upload_tree(store, src, ["dist"])
    out = tmp_path / "out"
    assert download_tree(store, digest, out) == manifest
    expected = {k: v for k, v in snapshot(src).items() if k.startswith("dist")}
    assert snapshot(out) == expected
    assert expected["dist/run.sh"][2] == 0o755 and expected["dist/secret.key"][2] == 0o600
    assert (out / "dist" / "libs" / "copy.whl").read_bytes() == b"wheel bytes"


def test_manifest_records_members(tmp_path):
    src = make_tree(tmp_path / "ws")
    manifest = build_manifest(src, ["dist/**/*"])
    by_path = {e.path: e for e in manifest.entries}
    assert sorted(by_path) == ["dist/app.whl", "dist/empty", "dist/latest.whl", "dist/lib/copy.whl",
                               "dist/lib/up.whl", "dist/libs", "dist/run.sh", "dist/secret.key"]
    assert by_path["dist/app.whl"] == ManifestEntry("dist/app.whl", hashlib.sha256(b"wheel bytes").hexdigest(),
                                                    11, 0o644)
    assert by_path["dist/empty"].size == 0
    assert by_path["dist/libs"].link_target == "lib" and by_path["dist/libs"].sha256 is None
    assert manifest.total_size == 11 + 18 + 1 + 11


def test_globs_select_members(tmp_path):
    src = make_tree(tmp_path / "ws")
    assert [e.path for e in build_manifest(src, ["dist/*.whl"]).entries] == ["dist/app.whl", "dist/latest.whl"]
    assert [e.path for e in build_manifest(src, ["**/*.c", "src.c"]).entries] == ["src.c"]
    assert build_manifest(src, ["nothing/*"]).entries == ()


def test_reupload_of_the_same_tree_uploads_nothing(store, tmp_path):
    src = make_tree(tmp_path / "ws")
    first, _ = upload_tree(store, src, ["dist"])
    uploaded = store.counters.snapshot()
    # 4 distinct contents (app.whl and lib/copy.whl share one) plus the manifest
    assert uploaded["objects_uploaded"] == 5
    store.counters.reset()
    second, _ = upload_tree(store, src, ["dist"])
    assert second == first
    assert store.counters.bytes_uploaded == 0 and store.counters.objects_uploaded == 0
    assert store.counters.dedup_hits == 5

    (src / "dist" / "run.sh").write_text("#!/bin/sh\necho changed\n")
    store.counters.reset()
    third, _ = upload_tree(store, src, ["dist"])
    assert third != first
    assert store.counters.objects_uploaded == 2  # the changed file and the new manifest


def test_corrupt_member_fails_download_naming_file_and_hashes(store, tmp_path):
    src = make_tree(tmp_path / "ws")
    digest, manifest = upload_tree(store, src, ["dist/run.sh", "dist/secret.key"])
    run_sh = next(e for e in manifest.entries if e.path == "dist/run.sh")
    corrupt(store, run_sh.sha256)
    out = tmp_path / "out"
    with pytest.raises(IntegrityError) as excinfo:
        download_tree(store, digest, out)
    message = str(excinfo.value)
    assert "dist/run.sh" in message and run_sh.sha256 in message and excinfo.value.actual in message
    assert not (out / "dist" / "run.sh").exists()


@pytest.mark.parametrize("pattern", ["../x", "dist/../../x", "/etc/*", ""])
def test_escaping_globs_are_rejected(tmp_path, pattern):
    src = make_tree(tmp_path / "ws")
    with pytest.raises(PathError):
        build_manifest(src, [pattern])


@pytest.mark.parametrize("target", ["/etc/passwd", "../../outside", "lib/../../../x"])
def test_escaping_symlinks_are_kept_as_links_at_build_time(tmp_path, target):
    src = make_tree(tmp_path / "ws")
    (src / "dist" / "evil").symlink_to(target)
    manifest = build_manifest(src, ["dist"])
    evil = next(e for e in manifest.entries if e.path == "dist/evil")
    assert (evil.link_target, evil.sha256, evil.size) == (target, None, 0)
    assert [e.path for e in links_leaving(src, manifest)] == ["dist/evil"]


def test_symlink_chain_escaping_through_another_link_is_kept_and_counted(tmp_path):
    src = tmp_path / "ws"
    (src / "d").mkdir(parents=True)
    (src / "d" / "up").symlink_to("..")  # fine on its own: points at the workspace root
    (src / "a").symlink_to("d/up/../outside")  # lexically d/outside; really ../outside
    manifest = build_manifest(src, ["d", "a"])
    assert {e.path: e.link_target for e in manifest.entries} == {"a": "d/up/../outside", "d/up": ".."}
    assert [e.path for e in links_leaving(src, manifest)] == ["a"]


def test_files_reached_through_an_escaping_directory_link_are_rejected(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwords").write_text("hunter2")
    src = tmp_path / "ws"
    src.mkdir()
    (src / "link").symlink_to(outside)
    with pytest.raises(PathError):
        build_manifest(src, ["link/*"])


def _store_manifest(store, entries: list[dict]) -> str:
    data = json.dumps({"version": 1, "entries": entries}).encode()
    return store.put_bytes(data).digest


def _file(store, path: str, data: bytes = b"payload") -> dict:
    return {"path": path, "sha256": store.put_bytes(data).digest, "size": len(data), "mode": 0o644,
            "link_target": None}


@pytest.mark.parametrize("bad", ["../evil", "a/../../evil", "/tmp/evil", "a//b", "./a", ""])
def test_malicious_member_paths_are_rejected_at_download(fs_store, tmp_path, bad):
    digest = _store_manifest(fs_store, [_file(fs_store, bad)])
    out = tmp_path / "work" / "out"
    with pytest.raises(PathError):
        download_tree(fs_store, digest, out)
    assert not (tmp_path / "work" / "evil").exists() and not Path("/tmp/evil").exists()
    assert not out.exists() or list(out.iterdir()) == []


def test_writing_through_a_manifest_symlink_is_rejected(fs_store, tmp_path):
    link = {"path": "d", "sha256": None, "size": 0, "mode": 0o777, "link_target": "."}
    digest = _store_manifest(fs_store, [link, _file(fs_store, "d/evil")])
    with pytest.raises(PathError):
        download_tree(fs_store, digest, tmp_path / "out")


@pytest.mark.parametrize("target", ["../../etc", "/etc/passwd"])
def test_escaping_symlink_members_are_recreated_as_links_at_download(fs_store, tmp_path, target):
    link = {"path": "a/link", "sha256": None, "size": 0, "mode": 0o777, "link_target": target}
    digest = _store_manifest(fs_store, [link])
    download_tree(fs_store, digest, tmp_path / "out")
    assert os.readlink(tmp_path / "out" / "a" / "link") == target


def test_symlink_chain_escaping_at_download_is_recreated_and_nothing_outside_is_made(fs_store, tmp_path):
    entries = [
        {"path": "d/up", "sha256": None, "size": 0, "mode": 0o777, "link_target": ".."},
        {"path": "a", "sha256": None, "size": 0, "mode": 0o777, "link_target": "d/up/../outside"},
    ]
    digest = _store_manifest(fs_store, entries)
    out = tmp_path / "out"
    download_tree(fs_store, digest, out)
    assert (os.readlink(out / "a"), os.readlink(out / "d" / "up")) == ("d/up/../outside", "..")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "store"]


def test_existing_symlink_in_destination_is_not_written_through(fs_store, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").symlink_to(outside)
    digest = _store_manifest(fs_store, [_file(fs_store, "sub/file")])
    with pytest.raises(PathError):
        download_tree(fs_store, digest, out)
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("doc", [b"not json", b'{"version": 2, "entries": []}', b'{"version": 1}',
                                 b'{"version": 1, "entries": [{"path": "a", "sha256": "xyz", "size": 1, "mode": 420}]}',
                                 b'{"version": 1, "entries": [{"path": "a", "sha256": null, "size": 0, "mode": 4095,'
                                 b' "link_target": "b"}]}'])
def test_malformed_manifests_are_rejected(doc):
    with pytest.raises(ManifestError):
        Manifest.from_bytes(doc)


def test_manifest_bytes_are_canonical(tmp_path):
    a = ManifestEntry("a", "0" * 64, 1, 0o644)
    b = ManifestEntry("b/c", None, 0, 0o777, "../a")
    assert Manifest((a, b)).to_bytes() == Manifest((b, a)).to_bytes()
    assert Manifest.from_bytes(Manifest((a, b)).to_bytes()) == Manifest((a, b))


def test_duplicate_and_nested_members_are_rejected():
    a = ManifestEntry("a", "0" * 64, 1, 0o644)
    with pytest.raises(ManifestError):
        Manifest((a, a))
    with pytest.raises(PathError):
        Manifest((a, ManifestEntry("a/b", "0" * 64, 1, 0o644)))


segment = st.sampled_from(["a", "b", "..", ".", "", "c.txt", "/", "x y"])


@settings(max_examples=100, deadline=None)
@given(st.lists(segment, min_size=1, max_size=6).map("/".join))
def test_accepted_member_paths_stay_inside_the_root(path):
    root = "/ws/root"
    try:
        check_member_path(path)
    except PathError:
        return
    joined = os.path.normpath(os.path.join(root, path))
    assert joined.startswith(root + "/")
    assert joined == f"{root}/{path}"  # already normalized: what is checked is what is written


# -- glob matching stays in the workspace, within bounds ----------------------------------

from shared.artifacts.manifest import GlobLimitError  # noqa: E402


def paths_of(manifest: Manifest) -> list[str]:
    return [e.path for e in manifest.entries]


def test_wildcards_do_not_descend_directory_links(tmp_path):
    src = make_tree(tmp_path / "ws")  # dist/libs -> lib
    # pathlib's glob would also give dist/libs/copy.whl and dist/libs/up.whl
    assert paths_of(build_manifest(src, ["dist/*/*"])) == ["dist/lib/copy.whl", "dist/lib/up.whl"]
    assert paths_of(build_manifest(src, ["dist/l*/*"])) == ["dist/lib/copy.whl", "dist/lib/up.whl"]


def test_a_literal_link_inside_the_workspace_is_still_followed(tmp_path):
    src = make_tree(tmp_path / "ws")
    assert paths_of(build_manifest(src, ["dist/libs/copy.whl"])) == ["dist/libs/copy.whl"]
    assert paths_of(build_manifest(src, ["dist/libs/*.whl"])) == ["dist/libs/copy.whl", "dist/libs/up.whl"]


def test_a_literal_link_leaving_the_workspace_names_the_glob_and_the_link(tmp_path):
    outside = tmp_path / "host"
    (outside / "etc").mkdir(parents=True)
    (outside / "etc" / "shadow").write_text("root:x")
    src = tmp_path / "ws"
    (src / "out").mkdir(parents=True)
    (src / "out" / "root").symlink_to(outside)
    with pytest.raises(PathError) as caught:
        build_manifest(src, ["out/root/etc"])
    message = str(caught.value)
    assert "'out/root/etc'" in message and "'out/root'" in message and "shadow" not in message


@pytest.mark.parametrize("pattern", ["**", "**/*", "dist/**", "dist/**/*.whl", "*/*", "d?st/[a-l]*", ".", "dist/",
                                     "*", "**/lib", "dist/**/**"])
def test_matches_agree_with_pathlib_where_there_are_no_links(tmp_path, pattern):
    src = tmp_path / "ws"
    for rel in ["dist/app.whl", "dist/lib/copy.whl", "dist/lib/deep/x.whl", "dist/.hidden", "src.c", "docs/a.md"]:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(rel)
    expected = set()
    for match in (src.glob(pattern) if pattern not in (".",) else [src]):
        if match.is_dir():
            expected |= {p.relative_to(src).as_posix() for p in match.rglob("*") if p.is_file()}
        else:
            expected.add(match.relative_to(src).as_posix())
    assert set(paths_of(build_manifest(src, [pattern]))) == expected


def test_double_star_must_be_a_whole_component(tmp_path):
    src = make_tree(tmp_path / "ws")
    with pytest.raises(PathError, match=r"\*\*"):
        build_manifest(src, ["dist/a**"])


def test_too_many_entries_stop_the_walk_naming_the_glob_and_the_bound(tmp_path):
    src = tmp_path / "ws"
    (src / "many").mkdir(parents=True)
    for i in range(300):
        (src / "many" / f"f{i}").write_text("")
    assert len(build_manifest(src, ["many/*"], max_entries=400).entries) == 300
    with pytest.raises(GlobLimitError) as caught:
        build_manifest(src, ["src.c", "many/**"], max_entries=250)
    assert "'many/**'" in str(caught.value) and "250" in str(caught.value)
    assert isinstance(caught.value, PathError)  # script_failure, not retried


def test_listing_a_matched_directory_counts_against_the_bound(tmp_path):
    src = tmp_path / "ws"
    (src / "many").mkdir(parents=True)
    for i in range(300):
        (src / "many" / f"f{i}").write_text("")
    with pytest.raises(GlobLimitError, match="'many'"):
        build_manifest(src, ["many"], max_entries=100)


def test_a_walk_past_its_time_stops_naming_the_glob_and_the_seconds(tmp_path):
    src = tmp_path / "ws"
    (src / "many").mkdir(parents=True)
    for i in range(600):
        (src / "many" / f"f{i}").write_text("")
    with pytest.raises(GlobLimitError) as caught:
        build_manifest(src, ["many/*"], max_seconds=0.0)
    assert "'many/*'" in str(caught.value) and "0s" in str(caught.value)
