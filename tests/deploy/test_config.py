"""Loading a deployment's configuration from a compiled pipeline, and the combinations refused."""
from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.frontend import load_file
from deploy.config import DeployConfigError, config_from_dict, deploy_gates, load_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def compiled(name: str):
    result = load_file(EXAMPLES / name, {}, run_id="r1")
    assert result.ok, [str(d) for d in result.diagnostics]
    return result.plan


@pytest.mark.parametrize("name", ["deploy-rolling.yml", "deploy-blue-green.yml", "deploy-canary.yml"])
def test_examples_compile_and_load(name: str) -> None:
    plan = compiled(name)
    [job] = [j for j in plan.jobs.values() if j.deploy is not None]
    config = load_config(job.deploy, plan.environments)
    assert config.router.backend == "web" and config.provider.type == "command"
    assert [s.name for s in config.instances] == ["web1", "web2"]
    assert [s.name for s in config.spare] == ["spare1", "spare2"]
    assert config_from_dict(config.to_dict()) == config  # a record carries it as JSON


def test_canary_steps_and_gates() -> None:
    plan = compiled("deploy-canary.yml")
    job = plan.jobs["release"]
    config = load_config(job.deploy, plan.environments)
    kinds = [(s.kind, s.weight, s.seconds, s.gate.name if s.gate else None) for s in config.canary.steps]
    assert kinds[0] == ("set_weight", 10, 0.0, None)
    assert ("gate", 0, 0.0, "go-live") in kinds
    assert config.gates() == ["go-live"]
    assert config.analysis.failure_limit >= 1


def base(strategy: str, **deploy) -> tuple[dict, dict]:
    env = {"router": {"type": "haproxy", "admin": "unix:///x", "backend": "web"},
           "provider": {"type": "command", "start": "start ${INSTANCE}"},
           "instances": [{"name": "web1", "address": "127.0.0.1:1"}], "spare": []}
    return {"environment": "prod", "version": "v2", "strategy": strategy, **deploy}, {"prod": env}


@pytest.mark.parametrize("strategy, extra, message", [
    ("rolling", {"rolling": {"max_surge": 0, "max_unavailable": 0}}, "max_surge >= 1 or max_unavailable >= 1"),
    ("blue_green", {}, "spare addresses"),
    ("canary", {"canary": {"steps": [{"set_weight": 10}]}}, "spare address"),
])
def test_impossible_combinations_are_refused(strategy: str, extra: dict, message: str) -> None:
    deploy, envs = base(strategy, **extra)
    with pytest.raises(DeployConfigError, match=message):
        load_config(deploy, envs)


def test_pause_without_duration_becomes_a_named_gate() -> None:
    deploy, envs = base("canary", canary={"steps": [{"set_weight": 10}, {"pause": {}}, {"set_weight": 50}]})
    envs["prod"]["spare"] = ["127.0.0.1:2"]
    config = load_config(deploy, envs)
    assert config.gates() == ["pause-2"]


def test_blue_green_analysis_and_provider_network_are_part_of_the_format(tmp_path: Path) -> None:
    path = tmp_path / "bg.yml"
    path.write_text("""
name: bg
environments:
  prod:
    router: {type: haproxy, admin: "unix:///run/haproxy.sock", backend: web}
    provider: {type: docker, image: "app:${VERSION}", port: 8080, network: host}
    instances: [{name: web1, address: "127.0.0.1:8081"}]
    spare: ["127.0.0.1:8091"]
jobs:
  release:
    deploy:
      environment: prod
      version: v2
      strategy: blue_green
      blue_green:
        pre_promotion_analysis: true
        analysis: {min_requests: 7, max_error_rate: 0.02, failure_limit: 3}
""")
    result = load_file(path, {}, run_id="r1")
    assert result.ok, [str(d) for d in result.diagnostics]
    # provider.network is the operator's to set: as the deploy workers' own environment
    config = load_config(result.plan.jobs["release"].deploy, {}, operator=result.plan.environments,
                         pipeline_allowed=False)
    assert (config.analysis.min_requests, config.analysis.max_error_rate, config.analysis.failure_limit) == (7, 0.02, 3)
    assert config.provider.network == "host"
    assert config_from_dict(config.to_dict()) == config


# -- who defines an environment ------------------------------------------------------------

PIPELINE_ENV = {"router": {"type": "haproxy", "admin": "unix:///run/h.sock", "backend": "web"},
                "provider": {"type": "command", "start": "start-it"},
                "instances": [{"name": "web1", "address": "127.0.0.1:8081"}]}
DEPLOY = {"environment": "production", "version": "v2", "strategy": "rolling"}


def test_the_operators_definition_wins_over_the_pipelines() -> None:
    operator = {"production": {**PIPELINE_ENV, "provider": {"type": "command", "start": "operator-start"}}}
    config = load_config(DEPLOY, {"production": PIPELINE_ENV}, operator=operator, pipeline_allowed=False)
    assert config.provider.start == "operator-start"


def test_a_pipeline_definition_is_refused_where_the_operator_does_not_allow_it() -> None:
    with pytest.raises(DeployConfigError, match=r"defined by the pipeline.*\[environments\.production\]"):
        load_config(DEPLOY, {"production": PIPELINE_ENV}, operator={}, pipeline_allowed=False)


@pytest.mark.parametrize("key, value", [("docker_host", "tcp://10.0.0.1:2375"), ("network", "host"),
                                        ("pass_env", ["CONVEYOR_BROKER_URL"])])
def test_operator_only_provider_keys_are_refused_from_a_pipeline(key: str, value: object) -> None:
    env = {**PIPELINE_ENV, "provider": {"type": "docker", "image": "app", "port": 80, key: value}}
    with pytest.raises(DeployConfigError, match=f"provider.{key} can only be set by the operator"):
        load_config(DEPLOY, {"production": env}, pipeline_allowed=True)
    # the operator may
    config = load_config(DEPLOY, {}, operator={"production": env}, pipeline_allowed=False)
    assert config.provider.type == "docker"


def test_an_unknown_environment_names_the_known_ones() -> None:
    with pytest.raises(DeployConfigError, match=r"unknown environment 'prod' \(known: production\)"):
        load_config({**DEPLOY, "environment": "prod"}, {}, operator={"production": PIPELINE_ENV})


def test_provider_env_and_pass_env_survive_the_stored_record() -> None:
    env = {**PIPELINE_ENV, "provider": {"type": "command", "start": "s", "env": {"MODE": "blue"},
                                        "pass_env": ["REGION"]}}
    config = load_config(DEPLOY, {}, operator={"production": env}, pipeline_allowed=False)
    assert (config.provider.env, config.provider.pass_env) == ((("MODE", "blue"),), ("REGION",))
    assert config_from_dict(config.to_dict()) == config


def test_gates_are_read_from_the_deploy_section_alone() -> None:
    canary = {**DEPLOY, "strategy": "canary",
              "canary": {"steps": [{"set_weight": 10}, {"approval": {"name": "go-live"}}]}}
    assert deploy_gates(canary) == ["go-live"]
    assert deploy_gates({**DEPLOY, "strategy": "blue_green", "blue_green": {"auto_promote": False}}) == ["promote"]
    assert deploy_gates(DEPLOY) == []
