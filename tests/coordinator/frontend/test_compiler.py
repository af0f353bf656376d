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


# -- deploy: and environments: are substituted, then checked ----------------------------

DEPLOYING = """
name: deploying
global_env: {SOCK: /run/haproxy/admin.sock, STRATEGY: blue_green, APP: web}
environments:
  production:
    router: {type: haproxy, admin: "unix://${SOCK}", backend: "${APP}"}
    provider:
      type: command
      start: "./start.sh ${INSTANCE} ${VERSION} ${PORT} ${ADDRESS} --app ${APP} $$HOME"
      stop: "./stop.sh ${INSTANCE}"
    instances: [{name: web1, address: "127.0.0.1:8081"}]
    health_check: {type: command, command: "./check.sh ${ADDRESS} ${APP}"}
jobs:
  release:
    environment: {ENV_NAME: production}
    deploy: {environment: "${ENV_NAME}", version: "v-${CONVEYOR_PIPELINE}", strategy: "${STRATEGY}"}
"""


def test_environments_and_deploy_fields_are_substituted() -> None:
    plan = compile_ok(DEPLOYING)
    env = plan.environments["production"]
    assert env["router"]["admin"] == "unix:///run/haproxy/admin.sock"
    assert env["router"]["backend"] == "web"
    # The provider's own variables are left for it; the pipeline's are substituted.
    assert env["provider"]["start"] == "./start.sh ${INSTANCE} ${VERSION} ${PORT} ${ADDRESS} --app web $HOME"
    assert env["provider"]["stop"] == "./stop.sh ${INSTANCE}"
    assert env["health_check"]["command"] == "./check.sh ${ADDRESS} web"
    deploy = plan.jobs["release"].deploy
    assert (deploy["environment"], deploy["version"], deploy["strategy"]) == ("production", "v-deploying", "blue_green")


def test_run_parameters_reach_environments() -> None:
    plan = compile_ok(DEPLOYING, parameters={"SOCK": "/tmp/other.sock"})
    assert plan.environments["production"]["router"]["admin"] == "unix:///tmp/other.sock"


def errors_of(text: str, **kwargs) -> list[str]:
    result = load_text(textwrap.dedent(text).lstrip("\n"), "p.yml", **kwargs)
    assert not result.ok
    return [str(d) for d in result.diagnostics if d.severity == "error"]


def test_an_unknown_variable_in_an_environment_is_an_error_at_its_field() -> None:
    found = errors_of(DEPLOYING.replace("unix://${SOCK}", "unix://${SOKC}"))
    assert found == ["p.yml:5:36: error: environments.production.router.admin: undefined variable 'SOKC' "
                     "(did you mean 'SOCK'?)"]


def test_a_provider_variable_outside_a_template_is_an_ordinary_undefined_variable() -> None:
    found = errors_of(DEPLOYING.replace('backend: "${APP}"', 'backend: "${INSTANCE}"'))
    assert len(found) == 1 and "environments.production.router.backend: undefined variable 'INSTANCE'" in found[0]


def test_substituted_values_are_checked_after_substitution() -> None:
    found = errors_of(DEPLOYING, parameters={"STRATEGY": "bluegreen"})
    assert found == ["p.yml:15:87: error: jobs.release.deploy.strategy (after substitution): 'bluegreen' is not one "
                     "of: rolling, blue_green, canary (did you mean 'blue_green'?)"]
    found = errors_of(DEPLOYING, parameters={"SOCK": ""})
    assert len(found) == 1 and found[0].startswith("p.yml:5:36: error: environments.production.router.admin "
                                                   "(after substitution): 'unix://' does not match")


def test_a_substituted_canary_strategy_still_needs_its_section() -> None:
    found = errors_of(DEPLOYING, parameters={"STRATEGY": "canary"})
    assert found == ["p.yml:15:87: error: job 'release': strategy 'canary' needs a 'canary:' section with steps"]


def test_a_literal_bad_strategy_is_reported_once_by_the_schema() -> None:
    found = errors_of(DEPLOYING.replace('strategy: "${STRATEGY}"', "strategy: bluegreen"))
    assert len(found) == 1 and "after substitution" not in found[0] and "'bluegreen' is not one of" in found[0]


def test_an_environment_name_is_not_substituted_so_it_is_checked_at_once() -> None:
    found = errors_of(DEPLOYING.replace("  production:", '  "prod${APP}":', 1))
    assert "p.yml:4:3: error: environments.prod${APP}: 'prod${APP}' does not match" in found[0]
