"""The compose cluster definition: valid for Compose, never without auth, and what users rely on.

Each test renders the file with `docker-compose config` (the installed Compose v1; images
are never pulled or started here) from an empty env file, so a developer's own `.env`
cannot make a missing variable look set.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.services  # every test runs `docker-compose`

ROOT = Path(__file__).resolve().parents[1]

SECRETS = {
    "CONVEYOR_REDIS_PASSWORD": "redis-pw",
    "CONVEYOR_FLOWER_AUTH": "admin:flower-pw",
    "MINIO_ROOT_USER": "minio-root",
    "MINIO_ROOT_PASSWORD": "minio-root-pw",
    "CONVEYOR_S3_ACCESS_KEY": "conveyor-ak",
    "CONVEYOR_S3_SECRET_KEY": "conveyor-sk-123",
}
OPTIONAL = ("CONVEYOR_HOST_DATA_DIR", "CONVEYOR_WORKER_CONCURRENCY", "CONVEYOR_LOG_FORMAT", "CONVEYOR_FLOWER_BIND",
            "CONVEYOR_FLOWER_PORT", "CONVEYOR_WORKERS", "CONVEYOR_METRICS_BIND", "CONVEYOR_DEMO_BIND",
            "CONVEYOR_DEMO_PORT", "CONVEYOR_MINIO_CONSOLE_PORT", "CONVEYOR_LEASE_SECONDS", "CONVEYOR_SERVER_BIND",
            "CONVEYOR_SERVER_PORT", "CONVEYOR_DEPLOYER_CONFIG")


def compose_config(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    base = {k: v for k, v in os.environ.items() if k not in SECRETS and k not in OPTIONAL}
    return subprocess.run(["docker-compose", "--env-file", str(empty), "config"], cwd=ROOT, env={**base, **env},
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    result = compose_config(tmp_path_factory.mktemp("compose"), **SECRETS)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def volume_pairs(service: dict) -> list[tuple[str, str]]:
    pairs = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            pairs.append((str(volume.get("source")), str(volume["target"])))
        else:
            source, target = volume.split(":")[:2]
            pairs.append((source, target))
    return pairs


def test_every_service_is_defined_with_its_profile(config: dict) -> None:
    services = config["services"]
    assert {"redis", "minio", "minio-init", "worker", "deployer", "server", "flower", "cli", "haproxy",
            "prometheus"} <= set(services)
    assert services["cli"]["profiles"] == ["cli"]
    assert services["haproxy"]["profiles"] == ["demo"]
    assert services["prometheus"]["profiles"] == ["metrics"]
    assert services["haproxy"]["image"].startswith("haproxy:2.8")
    assert any(target == "/usr/local/etc/haproxy/haproxy.cfg" and source.endswith("examples/demo-app/haproxy.cfg")
               for source, target in volume_pairs(services["haproxy"]))
    assert any(source.endswith("deploy/compose/prometheus.yml") for source, _ in volume_pairs(services["prometheus"]))


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_refuses_to_render_without_each_secret(tmp_path: Path, missing: str) -> None:
    result = compose_config(tmp_path, **{k: v for k, v in SECRETS.items() if k != missing})
    assert result.returncode != 0
    assert missing in result.stderr  # the error names what to set


def test_redis_requires_the_password_and_persists(config: dict) -> None:
    redis = config["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--requirepass") + 1] == "redis-pw"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert ("redis-data", "/data") in volume_pairs(redis)
    assert "redis-data" in config["volumes"]
    for name in ("worker", "deployer", "flower", "cli"):
        assert config["services"][name]["environment"]["CONVEYOR_BROKER_URL"] == "redis://:redis-pw@redis:6379/0"
    assert "redis-pw" not in " ".join(redis["healthcheck"]["test"])  # not on a command line `ps` shows


def test_minio_bucket_is_created_before_workers_start(config: dict) -> None:
    services = config["services"]
    init = services["minio-init"]
    assert init["image"].startswith("minio/mc")
    script = " ".join(init["command"]) if isinstance(init["command"], list) else init["command"]
    assert "mc mb --ignore-existing" in script and init["environment"]["BUCKET"] == "conveyor"
    assert "mc admin user add" in script  # workers get their own account, not MinIO's root
    assert services["worker"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert services["minio"]["environment"]["MINIO_ROOT_PASSWORD"] == "minio-root-pw"
    assert ("minio-data", "/data") in volume_pairs(services["minio"])


def test_workers_and_cli_keep_artifacts_on_minio(config: dict) -> None:
    for name in ("worker", "deployer", "cli"):
        env = config["services"][name]["environment"]
        assert env["CONVEYOR_ARTIFACTS_URL"] == "s3://conveyor/artifacts"
        assert env["CONVEYOR_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == ("conveyor-ak", "conveyor-sk-123")
    # Flower needs the broker only: no S3 credentials there
    assert "AWS_SECRET_ACCESS_KEY" not in config["services"]["flower"]["environment"]


def test_flower_demands_auth(config: dict) -> None:
    flower = config["services"]["flower"]
    assert flower["environment"]["CONVEYOR_FLOWER_AUTH"] == "admin:flower-pw"
    assert "--no-auth" not in flower["command"]
    [port] = flower["ports"]
    assert _published(port).startswith("127.0.0.1:5555:5555")


def _published(port: Any) -> str:
    """A port mapping as `host_ip:published:target`, however Compose rendered it."""
    if isinstance(port, str):
        return port.removesuffix("/tcp")
    return f"{port.get('host_ip', '')}:{port.get('published', '')}:{port['target']}"


def test_workers_scale_with_docker_socket_metrics_and_same_path_workspaces(tmp_path: Path, config: dict) -> None:
    worker = config["services"]["worker"]
    assert "container_name" not in worker  # `--scale worker=4` would collide
    assert worker["scale"] == 2  # CONVEYOR_WORKERS, so `--profile metrics up -d` keeps the count
    # metrics on an ephemeral loopback port per replica: no fixed host port to collide on
    assert [_published(p) for p in worker["ports"]] == ["127.0.0.1::9100"]
    assert worker["environment"]["CONVEYOR_METRICS_PORT"] == "9100"
    assert worker["command"][:3] == ["worker", "--queues", "jobs"]  # ticks go to the deployer
    pairs = volume_pairs(worker)
    assert ("/var/run/docker.sock", "/var/run/docker.sock") in pairs
    data_dir = worker["environment"]["CONVEYOR_DATA_DIR"]
    assert (data_dir, data_dir) in pairs
    # moving the data directory moves both sides of the mount together
    moved = compose_config(tmp_path, **SECRETS, CONVEYOR_HOST_DATA_DIR="/srv/conveyor", CONVEYOR_WORKERS="5")
    assert moved.returncode == 0, moved.stderr
    moved_services = yaml.safe_load(moved.stdout)["services"]
    for name in ("worker", "deployer"):
        assert moved_services[name]["environment"]["CONVEYOR_DATA_DIR"] == "/srv/conveyor"
        assert ("/srv/conveyor", "/srv/conveyor") in volume_pairs(moved_services[name])
    assert moved_services["worker"]["scale"] == 5


def test_the_server_is_published_on_loopback_with_the_stores_and_no_executor(config: dict) -> None:
    server = config["services"]["server"]
    assert server["command"][0] == "server"
    assert [_published(p) for p in server["ports"]] == ["127.0.0.1:8000:8080"]
    assert server["environment"]["CONVEYOR_BROKER_URL"] == "redis://:redis-pw@redis:6379/0"
    assert server["environment"]["CONVEYOR_ARTIFACTS_URL"] == "s3://conveyor/artifacts"
    assert "/var/run/docker.sock" not in [source for source, _ in volume_pairs(server)]


def test_the_server_reads_its_repositories_from_a_file_and_secrets_from_the_environment(config: dict) -> None:
    from coordinator.server.repositories import parse_repositories
    from shared.config import load_settings

    server = config["services"]["server"]
    env = server["environment"]
    assert env["CONVEYOR_CONFIG"] == "/etc/conveyor/server.toml"
    mounts = dict((target, source) for source, target in volume_pairs(server))
    source = Path(mounts["/etc/conveyor/server.toml"])
    assert source == ROOT / "deploy" / "compose" / "server.toml"
    # the file as shipped loads (no repositories until the operator adds some)
    settings = load_settings({}, config_file=source)
    assert parse_repositories(settings.repositories, where=str(source)) == ()
    # mirrors persist in a volume; secrets come from .env, never from the file
    assert mounts["/var/lib/conveyor-server"] == "server-data"
    assert {"CONVEYOR_WEBHOOK_SECRET", "CONVEYOR_FORGE_TOKEN", "CONVEYOR_PUBLIC_URL"} <= set(env)


def test_one_deployer_runs_every_tick_and_the_demo_haproxy_shares_its_network(config: dict) -> None:
    services = config["services"]
    deployer, haproxy = services["deployer"], services["haproxy"]
    assert deployer["command"][:3] == ["worker", "--queues", "deploy"]
    assert deployer.get("scale", 1) == 1
    assert haproxy["network_mode"] == "service:deployer"
    assert ("demo-run", "/tmp/conveyor-demo") in volume_pairs(deployer)
    assert ("demo-run", "/tmp/conveyor-demo") in volume_pairs(haproxy)
    assert "127.0.0.1:8080:8080" in [_published(p) for p in deployer["ports"]]


def test_env_example_names_every_required_variable() -> None:
    example = (ROOT / ".env.example").read_text()
    defined = {line.split("=", 1)[0] for line in example.splitlines() if line and not line.startswith("#")}
    assert set(SECRETS) <= defined
    prometheus = yaml.safe_load((ROOT / "deploy" / "compose" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert jobs["conveyor-workers"]["dns_sd_configs"][0] == {"names": ["worker", "deployer"], "type": "A", "port": 9100,
                                                             "refresh_interval": "15s"}
    assert jobs["flower"]["static_configs"][0]["targets"] == ["flower:5555"]
