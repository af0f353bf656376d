"""`conveyor validate` and `conveyor plan` as a user runs them (real subprocesses)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples").glob("*.yml"))


def conveyor(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "coordinator", *args], capture_output=True, text=True, cwd=cwd or ROOT, timeout=60)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid(example: Path) -> None:
    result = conveyor("validate", str(example))
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def test_validate_takes_every_example_at_once_as_the_shell_expands_it() -> None:
    """`conveyor validate examples/*.yml`: every file there is a pipeline (exit 0)."""
    result = conveyor("validate", *(str(p) for p in EXAMPLES))
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == len(EXAMPLES)
    assert "(1 job)" in result.stdout  # the deploy examples have one job each


def test_validate_invalid_file_exit_1_and_errors_on_stderr(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("name: demo\njobs:\n  a:\n    depends_on: [b]\n    steps: [{name: s, script: [x]}]\n")
    result = conveyor("validate", str(bad))
    assert result.returncode == 1
    assert result.stderr.strip() == f"{bad}:4:18: error: job 'a' depends on unknown job 'b'"


def test_validate_missing_file(tmp_path: Path) -> None:
    result = conveyor("validate", str(tmp_path / "nope.yml"))
    assert result.returncode == 1
    assert "nope.yml:1:1: error: cannot read pipeline file" in result.stderr


def test_plan_json_contract() -> None:
    result = conveyor("plan", "examples/fan-out-fan-in.yml", "--format", "json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    shards = [f"shard[N={n}]" for n in range(1, 5)]
    assert plan["pipeline"] == "fan-out-fan-in"
    assert plan["levels"] == [["setup"], shards, ["report"]]
    assert plan["critical_path"] in ([["setup", s, "report"] for s in shards])
    assert plan["jobs"]["report"]["depends_on"] == shards
    assert plan["jobs"]["setup"]["image"] == "ubuntu:20.04" and plan["jobs"]["setup"]["timeout"] == 3600


@pytest.mark.parametrize("fmt,marker", [("text", "level 1"), ("dot", "digraph"), ("mermaid", "flowchart LR")])
def test_plan_formats(fmt: str, marker: str) -> None:
    result = conveyor("plan", "examples/python-project.yml", "--format", fmt)
    assert result.returncode == 0, result.stderr
    assert marker in result.stdout
    assert "test[PY=3.12]" in result.stdout


def test_plan_var_usage_error_exits_2() -> None:
    result = conveyor("plan", "examples/conditions.yml", "--var", "not a pair")
    assert result.returncode == 2
    assert "expected NAME=VALUE" in result.stderr


def test_help_and_validate_do_not_import_heavy_modules() -> None:
    probe = (
        "import sys\n"
        "from coordinator.cli import cli\n"
        "for args in (['--help'], ['validate', 'examples/python-project.yml'], ['plan', '--help']):\n"
        "    try:\n"
        "        cli(args, prog_name='conveyor')\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = sorted(m for m in ('celery', 'kombu', 'boto3', 'botocore', 'docker', 'redis') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert "HEAVY []" in result.stdout, result.stdout + result.stderr
