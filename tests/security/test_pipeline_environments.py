"""Deploy targets belong to operators: a pipeline cannot make a deploy worker run its
commands on the worker host, or read the worker's credentials through them.

Attacks, against real Redis and a real deploy worker (the deploy queue):
- a pipeline defines its own `environments:` whose `command` provider runs `touch` on the
  worker host → refused, nothing runs, the job says why;
- with the operator's own environment (conveyor.toml), the provider's command prints its
  environment and the worker's (/proc/$PPID/environ) → the stored deployment event holds
  neither the broker password nor a worker secret; the command saw only what the
  operator passed.
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.deploy.services import start_haproxy
from tests.cluster import running_cluster
from tests.services import free_port


PASSWORD = "redis-pw-4f1c2b"
SECRET = "worker-secret-9d8e7f"


@pytest.fixture
def cluster(tmp_path: Path):
    with running_cluster(tmp_path, "local") as cluster:
        yield cluster


def deploy_job(environment: str = "production") -> str:
    return f"""
        jobs:
          release:
            deploy:
              environment: {environment}
              version: v2
              strategy: rolling
    """


def events(cluster, run_id: str) -> list[dict]:
    status = cluster.status(run_id)
    return (status["jobs"]["release"].get("deployment") or {}).get("events") or []


def test_a_pipeline_defined_environment_is_refused_on_a_worker_with_a_broker(cluster, tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    port = free_port()
    pipeline = cluster.pipeline(textwrap.dedent(f"""
        name: hostile
        environments:
          production:
            router: {{type: haproxy, admin: "tcp://127.0.0.1:{free_port()}", backend: web}}
            provider: {{type: command, start: "touch {pwned}"}}
            instances: [{{name: web1, address: "127.0.0.1:{port}"}}]
    """) + textwrap.dedent(deploy_job()))
    cluster.worker("deployer")
    run_id = cluster.submit(pipeline)
    status = cluster.wait(run_id, timeout=60)
    job = status["jobs"]["release"]
    assert (status["status"], job["status"]) == ("failed", "failed")
    log = cluster.logs(run_id, "release")
    assert "defined by the pipeline" in log and "[environments.production]" in log
    assert not pwned.exists()


@pytest.fixture
def haproxy_with_web1(tmp_path: Path):
    web1 = f"127.0.0.1:{free_port()}"
    haproxy = start_haproxy(tmp_path / "haproxy", {"web1": web1})
    yield haproxy, web1
    haproxy.proc.terminate()
    haproxy.proc.wait(timeout=10)


def test_provider_commands_see_no_worker_credentials_and_store_none(cluster, tmp_path: Path,
                                                                    haproxy_with_web1) -> None:
    haproxy, web1 = haproxy_with_web1
    config = tmp_path / "conveyor.toml"
    dump = "tr '\\\\0' '\\\\n' < /proc/$PPID/environ; env; exit 3"
    config.write_text(textwrap.dedent(f"""
        [environments.production]
        router = {{ type = "haproxy", admin = "{haproxy.admin}", backend = "web" }}
        provider = {{ type = "command", start = "sh -c \\"{dump}\\"", env = {{ APP_MODE = "canary-test" }}, pass_env = ["DEPLOY_REGION"] }}
        instances = [{{ name = "web1", address = "{web1}" }}]
    """))
    # The worker's own credentials, as an operator's worker has them.
    password_url = cluster.env["CONVEYOR_BROKER_URL"].replace("redis://", f"redis://:{PASSWORD}@")
    cluster.worker("deployer", CONVEYOR_CONFIG=str(config), CONVEYOR_SECRET_API_TOKEN=SECRET,
                   DEPLOY_REGION="eu-west-9", CONVEYOR_RESULT_BACKEND_NOTE=password_url,
                   AWS_SECRET_ACCESS_KEY=SECRET + "-aws")
    pipeline = cluster.pipeline("name: operator-env\n" + textwrap.dedent(deploy_job()))
    run_id = cluster.submit(pipeline)
    cluster.wait(run_id, timeout=90)
    stored = json.dumps(events(cluster, run_id)) + cluster.logs(run_id, "release")
    errors = [e for e in events(cluster, run_id) if e.get("type") == "provider_error"]
    assert errors, stored[-2000:]
    text = errors[0]["error"]
    assert "CONVEYOR_DEPLOY_INSTANCE=web1" in text  # the command's own environment ran
    assert "APP_MODE=canary-test" in text and "DEPLOY_REGION=eu-west-9" in text
    assert "CONVEYOR_SECRET_API_TOKEN=" not in text.split("CONVEYOR_DEPLOY_INSTANCE")[-1]  # not in its env
    for credential in (SECRET, SECRET + "-aws", PASSWORD):
        assert credential not in stored  # and masked where it printed the worker's environ
