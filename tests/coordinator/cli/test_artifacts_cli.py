"""`conveyor artifacts verify` against a real filesystem store with a corrupted object."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from shared.artifacts import object_key, open_store

ROOT = Path(__file__).resolve().parents[3]


def verify(url: str, *args: str) -> subprocess.CompletedProcess:
    data_dir = Path(url.removeprefix("file://")).parent / "data"
    data_dir.mkdir(exist_ok=True)
    env = {**os.environ, "CONVEYOR_ARTIFACTS_URL": url, "CONVEYOR_DATA_DIR": str(data_dir)}
    env.pop("CONVEYOR_BROKER_URL", None)
    return subprocess.run([sys.executable, "-m", "coordinator", "artifacts", "verify", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_verify_reports_a_flipped_byte(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'store'}"
    store = open_store(url)
    good = store.put_bytes(b"hello artifacts")
    bad = store.put_bytes(b"x" * 4096)
    result = verify(url)
    assert result.returncode == 0, result.stderr
    assert "verified 2 object(s), 4111 bytes" in result.stdout and "0 corrupt" in result.stdout
    path = next((tmp_path / "store").rglob(object_key(bad.digest).rsplit("/", 1)[-1]))
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    result = verify(url)
    assert result.returncode == 1
    assert f"corrupt: {bad.digest}" in result.stderr and good.digest not in result.stderr
    assert "1 corrupt" in result.stdout


def test_verify_reports_recorded_objects_missing_from_the_store_and_can_forget_them(tmp_path: Path) -> None:
    import time

    from shared.artifacts import build_manifest
    from shared.artifacts.index import ArtifactRecord, open_index
    from shared.artifacts.publish import publish_manifest

    url = f"file://{tmp_path / 'store'}"
    store = open_store(url)
    (tmp_path / "data").mkdir()
    index = open_index(f"sqlite:///{tmp_path / 'data' / 'state.db'}")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "kept.txt").write_text("kept\n")
    (tree / "lost.txt").write_text("lost\n")
    now = time.time()
    publish_manifest(store, index, tree, build_manifest(tree, ["*.txt"]), ArtifactRecord(
        run_id="run-1", job="build", kind="artifact", name="build", manifest="", size=0, files=0,
        pipeline="p", created_at=now, expire_at=None, last_access=now))
    lost = next(e for e in build_manifest(tree, ["lost.txt"]).entries).sha256
    store.delete(lost)  # gone behind the index's back (a bucket restored from an older copy)
    result = verify(url)
    assert result.returncode == 1
    assert f"missing: {lost}, recorded for run-1/build/artifact" in result.stderr
    assert "0 corrupt, 1 missing" in result.stdout
    assert lost in index.present([lost])
    assert verify(url, "--delete-corrupt").returncode == 1
    assert index.present([lost]) == set()  # the next upload of that content stores it again
