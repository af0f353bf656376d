"""Job decisions from recorded statuses, retry accounting and backoff."""
from __future__ import annotations

import textwrap

from coordinator.frontend import load_text
from shared.state.base import JobRecord
from worker.job_runner import decide

PIPELINE = """
name: d
jobs:
  build: {steps: [{name: s, script: [x]}]}
  lint: {allow_failure: true, steps: [{name: s, script: [x]}]}
  test: {depends_on: [build, lint], steps: [{name: s, script: [x]}]}
  cleanup: {depends_on: [test], conditional: "failure()", steps: [{name: s, script: [x]}]}
  notify: {depends_on: [test], conditional: "always()", steps: [{name: s, script: [x]}]}
  release: {depends_on: [test], conditional: "success() && vars.GO == 'yes'", steps: [{name: s, script: [x]}]}
"""


def record(name: str, status: str, allow_failure: bool = False, attempts=()) -> JobRecord:
    return JobRecord(name, status, len(attempts), None, None, None, None, None, allow_failure, list(attempts))


def plan(**params):
    result = load_text(textwrap.dedent(PIPELINE), "p.yml", parameters=params)
    assert result.ok, result.diagnostics
    return result.plan


def records(**statuses) -> dict[str, JobRecord]:
    base = {"build": "success", "lint": "success", "test": "success", "cleanup": "pending",
            "notify": "pending", "release": "pending"}
    base.update(statuses)
    return {name: record(name, status, allow_failure=name == "lint") for name, status in base.items()}


def test_allowed_failure_counts_as_success() -> None:
    p = plan()
    assert decide(p, p.jobs["test"], records(lint="failed", test="pending"), False) is None


def test_failed_dependency_skips_with_upstream_failed() -> None:
    p = plan()
    assert decide(p, p.jobs["test"], records(build="failed", test="pending"), False) == "upstream_failed"


def test_failure_sees_every_ancestor_like_github() -> None:
    p = plan()
    # build failed, test was skipped: cleanup's failure() still fires
    recs = records(build="failed", test="skipped")
    assert decide(p, p.jobs["cleanup"], recs, False) is None
    assert decide(p, p.jobs["cleanup"], records(), False) == "condition_false"


def test_always_runs_and_condition_false_reason() -> None:
    p = plan()
    assert decide(p, p.jobs["notify"], records(build="failed", test="skipped"), False) is None
    assert decide(p, p.jobs["release"], records(), False) == "condition_false"
    p = plan(GO="yes")
    assert decide(p, p.jobs["release"], records(), False) is None


def test_cancelled_run_skips_success_jobs() -> None:
    p = plan()
    assert decide(p, p.jobs["test"], records(test="pending"), True) is not None
