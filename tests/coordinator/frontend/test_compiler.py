"""The compiled Plan: defaults, matrix, variables and precedence, DAG facts."""
from __future__ import annotations

import dataclasses
import json
import textwrap

import pytest

from coordinator.frontend import load_text
from shared.plan import Plan


def compile_ok(text: str, **kwargs) -> Plan:
    result = load_text(textwrap.dedent(text).lstrip("\n"), "p.yml", **kwargs)
    assert result.ok, [str(d) for d in result.diagnostics]
    return result.plan


PIPELINE = """
name: demo
global_env: {LEVEL: global, ONLY_GLOBAL: g, TAG: "3.${MINOR:-11}"}
retry_policy: {max_attempts: 3, backoff_base: 1, backoff_max: 4}
defaults: {image: "alpine:3.20", timeout: 600}
jobs:
  lint:
    steps: [{name: s, script: [ruff .]}]
  test:
    depends_on: [lint]
    image: "python:${PY}"
    environment: {LEVEL: job, PY_TAG: "py${PY}"}
    matrix: {PY: ["3.11", "3.12"], OS: [linux]}
    retry_count: 0
    steps:
      - name: run
        environment: {LEVEL: step}
        script: [pytest]
  build:
    depends_on: [test]
    resources: {memory: 512m, cpus: 1.5}
    artifacts: {paths: ["dist/*"], expire_in: 2h}
    steps:
      - {name: wheel, script: [make], working_directory: "./src/../pkg"}
"""


def test_defaults_and_retry_policy() -> None:
    plan = compile_ok(PIPELINE)
    lint = plan.jobs["lint"]
    assert lint.image == "alpine:3.20" and lint.timeout == 600
    assert lint.retry_count == 2  # max_attempts 3 = 2 retries
    assert plan.jobs["test[PY=3.11,OS=linux]"].retry_count == 0
    assert lint.steps[0].timeout == 1800


def test_matrix_names_env_and_base_dependencies() -> None:
    plan = compile_ok(PIPELINE)
    names = [n for n in plan.jobs if n.startswith("test")]
    assert names == ["test[PY=3.11,OS=linux]", "test[PY=3.12,OS=linux]"]
    job = plan.jobs["test[PY=3.12,OS=linux]"]
    assert job.image == "python:3.12"
    assert job.environment["PY_TAG"] == "py3.12" and job.environment["OS"] == "linux"
    assert plan.jobs["build"].depends_on == tuple(names)


def test_precedence_step_over_job_over_global_and_parameters_over_all() -> None:
    plan = compile_ok(PIPELINE)
    step_env = plan.jobs["test[PY=3.11,OS=linux]"].steps[0].environment
    assert step_env["LEVEL"] == "step"
    assert plan.jobs["test[PY=3.11,OS=linux]"].environment["LEVEL"] == "job"
    assert plan.jobs["lint"].environment["LEVEL"] == "global"
    assert step_env["ONLY_GLOBAL"] == "g"
    assert step_env["CI"] == "true" and step_env["CONVEYOR_JOB"] == "test[PY=3.11,OS=linux]"
    assert step_env["CONVEYOR_STEP"] == "run"
    plan = compile_ok(PIPELINE, parameters={"LEVEL": "param", "MINOR": "13"})
    assert plan.jobs["test[PY=3.11,OS=linux]"].steps[0].environment["LEVEL"] == "param"
    assert plan.jobs["lint"].environment["TAG"] == "3.13"


def test_scripts_are_not_substituted() -> None:
    plan = compile_ok(
        """
        name: demo
        global_env: {A: "1"}
        jobs:
          j:
            steps: [{name: s, script: ['echo ${A} $$HOME ${UNDEFINED}']}]
        """
    )
    assert plan.jobs["j"].steps[0].script == ("echo ${A} $$HOME ${UNDEFINED}",)


def test_resources_artifacts_workdir() -> None:
    build = compile_ok(PIPELINE).jobs["build"]
    assert build.resources.memory_bytes == 512 * 1024 * 1024 and build.resources.cpus == 1.5
    assert build.artifacts.paths == ("dist/*",) and build.artifacts.expire_in_seconds == 7200
    assert build.steps[0].working_directory == "pkg"


def test_dag_facts() -> None:
    plan = compile_ok(PIPELINE)
    assert plan.levels == (("lint",), ("test[PY=3.11,OS=linux]", "test[PY=3.12,OS=linux]"), ("build",))
    assert plan.critical_path[0] == "lint" and plan.critical_path[-1] == "build"
    assert plan.critical_path_seconds == 600 * 3
    assert plan.dependents["lint"] == ("test[PY=3.11,OS=linux]", "test[PY=3.12,OS=linux]")
    assert plan.barriers == ()


def test_plan_is_immutable_and_round_trips_through_json() -> None:
    plan = compile_ok(PIPELINE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.pipeline = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        plan.jobs["lint"].environment["X"] = "1"  # type: ignore[index]
    data = json.loads(json.dumps(plan.to_dict()))
    again = Plan.from_dict(data)
    assert again.to_dict() == plan.to_dict()
    assert again.jobs["build"].resources == plan.jobs["build"].resources


def test_inline_expression_in_string_field() -> None:
    plan = compile_ok(
        """
        name: demo
        jobs:
          j:
            environment: {MSG: "${{ format('{0}-{1}', pipeline.name, vars.N) }}"}
            steps: [{name: s, script: ["true"]}]
        """,
        parameters={"N": "7"},
    )
    assert plan.jobs["j"].environment["MSG"] == "demo-7"


def test_anchor_merge_and_dot_keys() -> None:
    plan = compile_ok(
        """
        name: demo
        .base: &base
          image: "busybox:1"
          timeout: 42
        jobs:
          a:
            <<: *base
            steps: [{name: s, script: ['true']}]
          b:
            <<: *base
            timeout: 7
            steps: [{name: s, script: ['true']}]
        """
    )
    assert plan.jobs["a"].timeout == 42 and plan.jobs["b"].timeout == 7
    assert plan.jobs["a"].image == "busybox:1"
