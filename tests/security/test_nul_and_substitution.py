"""What a pipeline says is what validation checked: NUL escapes, and `${VAR}` in deployments.

Attacks / failures that used to pass `conveyor validate` and only blow up on a worker:
- a NUL character from a YAML escape (`"\\0"`, `"\\x00"`, `"\\u0000"`) in a value: no
  process argument, environment value or file name can hold one. Now `validate` rejects
  it at file:line:col;
- `router.admin: "unix://${SOCK}"` in `environments:` was never substituted: the deploy
  worker dialled the literal `unix://${SOCK}` and retried for 68 s. Now every string
  field of `environments:` and of a job's `deploy:` is substituted (the provider's own
  `${INSTANCE}`, `${VERSION}`, `${PORT}`, `${ADDRESS}` left for it), an unknown variable
  is a validation error at its field, and enum-like fields (`strategy`) are checked after
  substitution.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from coordinator.cli import cli
from coordinator.frontend import load_text
from deploy.config import load_config
from deploy.providers.command import render


def validate(tmp_path: Path, text: str, *args: str) -> tuple[int, list[str]]:
    path = tmp_path / "p.yml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    result = CliRunner().invoke(cli, ["validate", str(path), *args])
    return result.exit_code, [line.replace(str(path), "p.yml") for line in result.output.splitlines()]


@pytest.mark.parametrize("escape", ["\\0", "\\x00", "\\u0000"])
def test_validate_rejects_a_nul_escape_at_its_position(tmp_path: Path, escape: str) -> None:
    code, output = validate(tmp_path, f"""
        name: demo
        jobs:
          build:
            environment: {{TOKEN: "abc{escape}def"}}
            steps: [{{name: s, script: [make]}}]
    """)
    assert code == 1
    assert output == ["p.yml:4:26: error: jobs.build.environment.TOKEN: text must not contain a NUL character "
                      "(remove the \\0 (or \\x00, \\u0000) escape)"]


PIPELINE = """
    name: release
    global_env: {SOCK: /run/haproxy/admin.sock}
    environments:
      production:
        router: {type: haproxy, admin: "unix://${SOCK}", backend: web}
        provider: {type: command, start: "./start.sh ${INSTANCE} ${VERSION} ${PORT} ${ADDRESS}"}
        instances: [{name: web1, address: "127.0.0.1:8081"}]
        spare: ["127.0.0.1:8091"]
    jobs:
      release:
        deploy: {environment: production, version: v2, strategy: "${STRATEGY:-rolling}"}
"""


def test_the_deploy_worker_gets_the_substituted_admin_socket_and_strategy() -> None:
    result = load_text(textwrap.dedent(PIPELINE).lstrip("\n"), "p.yml", parameters={"STRATEGY": "blue_green"})
    assert result.ok, [str(d) for d in result.diagnostics]
    plan = result.plan
    config = load_config(plan.jobs["release"].deploy, plan.environments)
    assert config.router.admin == "unix:///run/haproxy/admin.sock"  # not unix://${SOCK}
    assert config.strategy == "blue_green"
    # The provider still fills in its own variables per instance.
    assert render(config.provider.start, {"INSTANCE": "web1", "VERSION": "v2", "PORT": "8081",
                                          "ADDRESS": "127.0.0.1:8081"}) == [
        "./start.sh", "web1", "v2", "8081", "127.0.0.1:8081"]


def test_an_unknown_variable_in_router_admin_fails_validation(tmp_path: Path) -> None:
    code, output = validate(tmp_path, PIPELINE.replace("${SOCK}", "${SOKC}"))
    assert code == 1
    assert output == ["p.yml:5:36: error: environments.production.router.admin: undefined variable 'SOKC' "
                      "(did you mean 'SOCK'?)"]


def test_a_strategy_is_checked_after_substitution(tmp_path: Path) -> None:
    code, output = validate(tmp_path, PIPELINE, "--var", "STRATEGY=bluegreen")
    assert code == 1
    assert output == ["p.yml:11:62: error: jobs.release.deploy.strategy (after substitution): 'bluegreen' is not "
                      "one of: rolling, blue_green, canary (did you mean 'blue_green'?)"]
    code, output = validate(tmp_path, PIPELINE)
    assert code == 0, output
