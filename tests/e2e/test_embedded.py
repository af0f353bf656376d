"""Embedded mode: `conveyor run` with no broker and no services at all."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def conveyor(tmp_path: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env["CONVEYOR_DATA_DIR"] = str(tmp_path / "data")
    return subprocess.run([sys.executable, "-m", "coordinator", *args], env=env, cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=180)


@pytest.mark.slow
def test_run_example_embedded_then_inspect_afterwards(tmp_path: Path) -> None:
    result = conveyor(tmp_path, "run", "examples/fan-out-fan-in.yml", "--executor", "local")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "report     | all 4 shards finished" in result.stdout
    runs = json.loads(conveyor(tmp_path, "runs", "--format", "json").stdout)
    assert runs[0]["pipeline"] == "fan-out-fan-in" and runs[0]["status"] == "success"
    run_id = runs[0]["run_id"]
    status = json.loads(conveyor(tmp_path, "status", run_id, "--format", "json").stdout)
    assert {job["status"] for job in status["jobs"].values()} == {"success"}
    assert len(status["jobs"]) == 6
    logs = conveyor(tmp_path, "logs", run_id, "shard[N=3]")
    assert "shard 3 of 4" in logs.stdout
    assert conveyor(tmp_path, "status", "no-such-run").returncode == 3


def test_run_failure_exit_1_and_invalid_exit_2(tmp_path: Path) -> None:
    failing = tmp_path / "fail.yml"
    failing.write_text("name: f\njobs:\n  a:\n    steps: [{name: s, script: ['echo before', 'exit 4']}]\n"
                       "  b:\n    depends_on: [a]\n    steps: [{name: s, script: ['echo never']}]\n")
    result = conveyor(tmp_path, "run", str(failing), "--executor", "local", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "never" not in result.stdout.replace("$ echo never", "")
    invalid = tmp_path / "bad.yml"
    invalid.write_text("name: f\njobs:\n  a:\n    depends_on: [zz]\n    steps: [{name: s, script: [x]}]\n")
    result = conveyor(tmp_path, "run", str(invalid))
    assert result.returncode == 2
    assert "bad.yml:4:18: error: job 'a' depends on unknown job 'zz'" in result.stderr


def test_run_embedded_on_docker(tmp_path: Path, busybox_image: str) -> None:
    pipeline = tmp_path / "docker.yml"
    pipeline.write_text(f"name: d\njobs:\n  a:\n    image: {busybox_image}\n"
                        "    steps: [{name: s, script: ['cat /proc/self/status | grep NoNewPrivs', 'pwd']}]\n")
    result = conveyor(tmp_path, "run", str(pipeline), "--executor", "docker", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "NoNewPrivs:\t1" in result.stdout or "NoNewPrivs: 1" in result.stdout.replace("\t", " ")
    assert "/workspace" in result.stdout
