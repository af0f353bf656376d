"""`conveyor artifacts verify` against a real filesystem store with a corrupted object."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from shared.artifacts import object_key, open_store

ROOT = Path(__file__).resolve().parents[3]


def verify(url: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CONVEYOR_ARTIFACTS_URL": url}
    return subprocess.run([sys.executable, "-m", "coordinator", "artifacts", "verify"], env=env, cwd=ROOT,
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
