"""`conveyor approve|reject|abort|rollback` against the embedded (SQLite) store: answers, commands, exit codes."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from coordinator.cli.deployments import abort, approve, reject, rollback
from coordinator.frontend import load_file
from deploy.store import open_deploy_store
from shared.state import JobMeta, open_state

PIPELINE = """\
name: cli
environments:
  prod:
    router: {type: haproxy, admin: "unix:///nonexistent.sock", backend: web}
    provider: {type: command, start: "true"}
    instances: [{name: web1, address: "127.0.0.1:1"}]
    spare: ["127.0.0.1:2"]
jobs:
  build: {steps: [{name: s, script: ["true"]}]}
  release:
    deploy:
      environment: prod
      version: v2
      strategy: canary
      canary: {steps: [{set_weight: 10}, {approval: {name: go-live}}, {pause: {}}]}
"""


@pytest.fixture
def run(tmp_path: Path, monkeypatch) -> tuple[str, str]:
    monkeypatch.setenv("CONVEYOR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("CONVEYOR_BROKER_URL", raising=False)
    monkeypatch.delenv("CONVEYOR_STATE_URL", raising=False)
    monkeypatch.setenv("USER", "dana")
    (tmp_path / "data").mkdir()
    path = tmp_path / "p.yml"
    path.write_text(textwrap.dedent(PIPELINE))
    plan = load_file(path, {}, run_id="run-1").plan
    url = f"sqlite:///{tmp_path / 'data' / 'state.db'}"
    state = open_state(url)
    state.create_run("run-1", plan.pipeline, {n: JobMeta() for n in plan.jobs}, plan.to_dict(), {})
    return "run-1", url


def invoke(command, *args: str):
    return CliRunner().invoke(command, list(args))


def test_approve_records_who_and_when_and_the_first_answer_wins(run) -> None:
    run_id, url = run
    result = invoke(approve, run_id, "go-live")
    assert result.exit_code == 0, result.stderr
    assert "approved by dana" in result.stdout
    answer = open_deploy_store(url).gate_answers(run_id)["go-live"]
    assert answer["decision"] == "approve" and answer["by"] == "dana" and answer["at"].endswith("Z")
    again = invoke(reject, run_id, "go-live", "--by", "eve")
    assert again.exit_code == 1 and "already approved by dana" in again.stderr
    assert invoke(reject, run_id, "pause-3", "--by", "eve").exit_code == 0  # `pause: {}` gates are named by position


def test_unknown_run_gate_or_job(run) -> None:
    run_id, _ = run
    assert invoke(approve, "nope", "go-live").exit_code == 3
    unknown = invoke(approve, run_id, "go-lvie")
    assert unknown.exit_code == 1 and "no approval gate 'go-lvie'" in unknown.stderr and "go-live" in unknown.stderr
    assert invoke(abort, "nope", "release").exit_code == 3
    missing = invoke(abort, run_id, "relaese")
    assert missing.exit_code == 1 and "no job 'relaese'" in missing.stderr
    steps = invoke(abort, run_id, "build")
    assert steps.exit_code == 1 and "not a deployment" in steps.stderr


def test_abort_and_rollback_are_queued_for_the_deployment(run) -> None:
    run_id, url = run
    result = invoke(abort, run_id, "release", "--by", "ops")
    assert result.exit_code == 0 and "queued" in result.stdout
    result = invoke(rollback, run_id, "release")
    assert result.exit_code == 0
    commands = open_deploy_store(url).commands(run_id, "release", 0)
    assert [(c["type"], c["by"]) for c in commands] == [("abort", "ops"), ("rollback", "dana")]


def test_a_finished_deployment_cannot_be_aborted(run) -> None:
    run_id, url = run
    deploys = open_deploy_store(url)
    deploys.create({"run_id": run_id, "job": "release", "state": "succeeded", "next_tick_at": 0})
    result = invoke(rollback, run_id, "release")
    assert result.exit_code == 1 and "already ended (succeeded)" in result.stderr and "keep_old_for" in result.stderr
