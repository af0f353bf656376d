"""`conveyor token create|ls|revoke` as a user runs them (real subprocesses, embedded state)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def conveyor(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env["CONVEYOR_DATA_DIR"] = str(tmp_path / "data")
    return subprocess.run([sys.executable, "-m", "coordinator", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=60)


def test_create_prints_the_token_once_then_ls_and_revoke(tmp_path: Path) -> None:
    created = conveyor(tmp_path, "token", "create", "ci-bot", "--scope", "trigger")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("cvy_") and "store it now" in created.stderr
    listed = conveyor(tmp_path, "token", "ls", "--format", "json")
    assert [(t["name"], t["scope"]) for t in json.loads(listed.stdout)] == [("ci-bot", "trigger")]
    assert token not in listed.stdout
    again = conveyor(tmp_path, "token", "create", "ci-bot")
    assert again.returncode == 1 and "exists" in again.stderr and "Traceback" not in again.stderr
    assert conveyor(tmp_path, "token", "revoke", "ci-bot").returncode == 0
    gone = conveyor(tmp_path, "token", "revoke", "ci-bot")
    assert gone.returncode == 1 and "no token named 'ci-bot'" in gone.stderr
