"""A fork's pull request: every secret name removed, every deployment skipped, the rest intact."""
from __future__ import annotations

from pathlib import Path

from coordinator.frontend import load_file, load_text
from coordinator.triggers.fork_safety import withhold_for_fork
from shared.plan import Plan

ROOT = Path(__file__).resolve().parents[3]


def test_secrets_are_withheld_from_every_job_and_listed() -> None:
    plan = load_text("name: p\njobs:\n  a: {secrets: [TOKEN, KEY], steps: [{name: s, script: [x]}]}\n"
                     "  b: {depends_on: [a], steps: [{name: s, script: [x]}]}\n", "p.yml").plan
    safe, withheld = withhold_for_fork(plan)
    assert all(job.secrets == () for job in safe.jobs.values())
    assert withheld.secrets == {"a": ("TOKEN", "KEY")} and withheld.deployments == ()
    assert withheld.notes("mallory/app") == ["pull request from mallory/app: secrets withheld (a: TOKEN, KEY)"]
    # nothing else changed, and the result still round-trips as a stored plan does
    assert safe.jobs["b"] == plan.jobs["b"] and safe.levels == plan.levels
    assert Plan.from_dict(safe.to_dict()).jobs["a"].secrets == ()


def test_deployments_never_run_for_a_fork() -> None:
    result = load_file(ROOT / "examples" / "deploy-rolling.yml")
    assert result.ok, result.diagnostics
    deploys = [name for name, job in result.plan.jobs.items() if job.is_deployment]
    assert deploys
    safe, withheld = withhold_for_fork(result.plan)
    assert withheld.deployments == tuple(deploys)
    assert all(safe.jobs[name].conditional == "false" for name in deploys)
    others = [name for name in result.plan.jobs if name not in deploys]
    assert all(safe.jobs[n].conditional == result.plan.jobs[n].conditional for n in others)
    assert "deployment jobs skipped" in withheld.notes("")[-1] and "a deleted fork" in withheld.notes("")[-1]
