"""A job condition wrapped whole in ${{ }}, as GitHub allows in if:, is the same condition."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from coordinator.frontend import load_text
from shared import expressions

ROOT = Path(__file__).resolve().parents[3]

PIPELINE = """\
name: wrapped
jobs:
  build:
    steps: [{name: s, script: [make]}]
  deploy:
    depends_on: [build]
    conditional: ${{ always() && jobs.build.status == 'failed' }}
    steps: [{name: s, script: [./deploy]}]
  notify:
    depends_on: [deploy]
    conditional: "${{ vars.NOTIFY == 'yes' }}"
    steps: [{name: s, script: [./notify]}]
"""


def test_the_compiler_accepts_wrapped_conditions_and_the_plan_evaluates_them() -> None:
    result = load_text(PIPELINE, "p.yml")
    assert result.ok, [str(d) for d in result.diagnostics]
    deploy = result.plan.jobs["deploy"].conditional
    failed = expressions.Context(jobs={"build": "failed"},
                                 dependency_results={"build": ("failed", False)})
    assert expressions.condition_met(deploy, failed) is True
    notify = result.plan.jobs["notify"].conditional
    done = expressions.Context(vars={"NOTIFY": "yes"},
                               dependency_results={"deploy": ("success", False)})
    assert expressions.condition_met(notify, done) is True
    assert expressions.condition_met(notify, expressions.Context(vars={"NOTIFY": "no"})) is False


def test_wrapped_conditions_are_checked_like_bare_ones() -> None:
    text = textwrap.dedent("""\
        name: wrapped
        jobs:
          a:
            steps: [{name: s, script: [x]}]
          b:
            conditional: ${{ jobs.a.status == 'success' }}
            steps: [{name: s, script: [x]}]
          c:
            depends_on: [a]
            conditional: ${{ env.X == }}
            steps: [{name: s, script: [x]}]
          d:
            depends_on: [a]
            conditional: ${{ success() }} && ${{ env.X }}
            steps: [{name: s, script: [x]}]
        """)
    messages = [str(d) for d in load_text(text, "p.yml").diagnostics]
    assert messages == [
        "p.yml:6:18: error: job 'b': conditional refers to job 'a', which is not upstream "
        "of it (add 'a' to depends_on)",
        "p.yml:10:18: error: jobs.c.conditional: unexpected end of expression at column 14 in "
        "expression '${{ env.X == }}'",
        "p.yml:14:18: error: jobs.d.conditional: unexpected text after the '}}' that closes "
        "'${{' at column 18 (a condition wrapped in '${{ }}' must be wrapped whole: put all "
        "of it inside, or leave '${{ }}' out) in expression '${{ success() }} && ${{ env.X }}'",
    ]


def test_conveyor_validate_accepts_a_wrapped_condition(tmp_path: Path) -> None:
    pipeline = tmp_path / "wrapped.yml"
    pipeline.write_text(PIPELINE)
    result = subprocess.run([sys.executable, "-m", "coordinator", "validate", str(pipeline)],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
