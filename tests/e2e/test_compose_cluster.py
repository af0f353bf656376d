"""The compose cluster for real: `docker-compose up`, jobs in Docker containers on two
workers passing artifacts through the S3 stand-in, Flower and metrics, a worker killed
mid-run, a deployment behind the demo HAProxy, and `down -v` leaving nothing behind.

The public images the compose file names are replaced by local stand-ins
(tests/standins); the conveyor image is built from the Dockerfile as a user would. The
tests run in file order on one cluster (a module fixture); the last one tears it down.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.services import free_port
from tests.standins import ensure_standins

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = shutil.which("docker-compose") or "docker-compose"
FLOWER_AUTH = "admin:flower-e2e-pw"
WORKERS = 2


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


@dataclass
class ComposeCluster:
    project: str
    env_file: Path
    data_dir: Path
    flower_port: int
    demo_port: int
    server_port: int
    tls_dir: Path
    redis_tls_port: int
    s3_tls_port: int
    down: bool = False
    runs: list[str] = field(default_factory=list)

    def compose(self, *args: str, timeout: float = 600, check: bool = True,
                files: tuple[str, ...] = ("docker-compose.yml",)) -> subprocess.CompletedProcess[str]:
        argv = [COMPOSE, "-p", self.project, "--env-file", str(self.env_file),
                *(arg for name in files for arg in ("-f", str(ROOT / name))), *args]
        result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                                env={**os.environ, "DOCKER_BUILDKIT": "0", "COMPOSE_DOCKER_CLI_BUILD": "0"})
        if check and result.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{_tail(result.stdout + result.stderr)}\n{self.logs()}")
        return result

    def logs(self) -> str:
        argv = [COMPOSE, "-p", self.project, "--env-file", str(self.env_file), "-f", str(ROOT / "docker-compose.yml"),
                "logs", "--no-color", "--tail", "30"]
        result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
        return "--- service logs ---\n" + _tail(result.stdout + result.stderr, 120)

    def containers(self, service: str) -> list[str]:
        out = subprocess.run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={self.project}",
                              "--filter", f"label=com.docker.compose.service={service}"],
                             capture_output=True, text=True, check=True).stdout.split()
        return sorted(out)

    def conveyor(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """`conveyor ARGS` in the `cli` service, as the README tells operators to run it."""
        return self.compose("--profile", "cli", "run", "--rm", "-T", "cli", *args, timeout=timeout, check=False)

    def exec_conveyor(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`conveyor ARGS` inside a running worker (quicker than a new `cli` container)."""
        container = self.containers("worker")[0]
        return subprocess.run(["docker", "exec", container, "conveyor", *args], capture_output=True, text=True,
                              timeout=120)

    def status(self, run_id: str) -> dict[str, Any]:
        result = self.exec_conveyor("status", run_id, "--format", "json")
        assert result.returncode in (0, 1), result.stderr
        return json.loads(result.stdout)


def _http(url: str, auth: str | None = None, timeout: float = 10) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


RUN_ID = re.compile(r"\b\d{8}-\d{6}-[0-9a-f]{6}\b")


def _run_id(result: subprocess.CompletedProcess[str]) -> str:
    found = RUN_ID.search(result.stdout) or RUN_ID.search(result.stderr)
    assert found, f"no run id in:\n{result.stdout}\n{result.stderr}"
    return found.group(0)


def _wait(predicate, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (OSError, AssertionError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def _make_certificates(directory: Path) -> Path:
    """A CA and a server certificate for 127.0.0.1/localhost, as docs/cluster.md makes them."""
    directory.mkdir()

    def openssl(*args: str) -> None:
        result = subprocess.run(["openssl", *args], cwd=directory, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=conveyor-e2e-ca",
            "-keyout", "ca.key", "-out", "ca.crt")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key",
            "-out", "server.csr")
    (directory / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.ext", "-out", "server.crt")
    (directory / "server.key").chmod(0o644)  # read by the containers' own users
    return directory


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, docker_client) -> Iterator[ComposeCluster]:
    ensure_standins(docker_client)
    tmp = tmp_path_factory.mktemp("compose")
    data_dir = tmp / "data"
    data_dir.mkdir()
    env_file = tmp / "cluster.env"
    cluster = ComposeCluster(project=f"conveyor-e2e-{uuid.uuid4().hex[:8]}", env_file=env_file, data_dir=data_dir,
                             flower_port=free_port(), demo_port=free_port(), server_port=free_port(), tls_dir=_make_certificates(tmp / "tls"),
                             redis_tls_port=free_port(), s3_tls_port=free_port())
    env_file.write_text("\n".join([
        "CONVEYOR_REDIS_PASSWORD=redis-e2e-pw",
        f"CONVEYOR_FLOWER_AUTH={FLOWER_AUTH}",
        "MINIO_ROOT_USER=minio-root",
        "MINIO_ROOT_PASSWORD=minio-root-pw",
        "CONVEYOR_S3_ACCESS_KEY=conveyor",
        "CONVEYOR_S3_SECRET_KEY=conveyor-s3-pw",
        f"CONVEYOR_HOST_DATA_DIR={data_dir}",
        f"CONVEYOR_WORKERS={WORKERS}",
        "CONVEYOR_WORKER_CONCURRENCY=2",
        "CONVEYOR_LOG_FORMAT=text",
        f"CONVEYOR_FLOWER_PORT={cluster.flower_port}",
        f"CONVEYOR_DEMO_PORT={cluster.demo_port}",
        f"CONVEYOR_SERVER_PORT={cluster.server_port}",
        f"CONVEYOR_MINIO_CONSOLE_PORT={free_port()}",
        # a short lease: a killed worker's job runs again within seconds, not half a minute
        "CONVEYOR_LEASE_SECONDS=6",
        # for deploy/compose/remote-workers.yml
        f"CONVEYOR_TLS_DIR={cluster.tls_dir}",
        "CONVEYOR_PUBLISH_BIND=127.0.0.1",
        f"CONVEYOR_REDIS_TLS_PORT={cluster.redis_tls_port}",
        f"CONVEYOR_S3_TLS_PORT={cluster.s3_tls_port}",
    ]) + "\n")
    try:
        # The conveyor image, built from the Dockerfile on the python stand-in.
        cluster.compose("build", "worker", timeout=1200)
        cluster.compose("--profile", "demo", "up", "-d", timeout=600)
        yield cluster
    finally:
        if not cluster.down:
            cluster.compose("--profile", "demo", "--profile", "cli", "down", "-v", "--remove-orphans",
                            check=False)
        subprocess.run(["rm", "-rf", str(data_dir)], check=False)


def test_workers_start_and_flower_demands_auth(cluster: ComposeCluster) -> None:
    assert len(cluster.containers("worker")) == WORKERS
    assert len(cluster.containers("deployer")) == 1
    flower = f"http://127.0.0.1:{cluster.flower_port}"
    _wait(lambda: _http(f"{flower}/api/workers", FLOWER_AUTH)[0] == 200, 90, "Flower to answer")
    assert _http(f"{flower}/api/workers")[0] == 401
    assert _http(f"{flower}/api/workers", "admin:wrong")[0] == 401

    def all_workers_seen() -> bool:
        status, body = _http(f"{flower}/api/workers?refresh=1", FLOWER_AUTH, timeout=30)
        return status == 200 and len(json.loads(body)) == WORKERS + 1  # job workers and the deployer

    _wait(all_workers_seen, 120, "Flower to list every worker", interval=3)


def test_docker_jobs_pass_artifacts_across_both_workers(cluster: ComposeCluster) -> None:
    result = cluster.conveyor("submit", "/work/examples/docker-artifacts.yml", "--var", "WORK_SECONDS=4", "--wait")
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{cluster.logs()}"
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
    run_id = _run_id(result)
    cluster.runs.append(run_id)
    jobs = cluster.status(run_id)["jobs"]
    assert {job["status"] for job in jobs.values()} == {"success"}
    assert len({job["worker"] for job in jobs.values()}) == WORKERS  # the shards spread over both
    # the artifact the package job made is in the store and comes back whole
    got = cluster.exec_conveyor("artifacts", "get", run_id, "package", "-o", "/tmp/got")
    assert got.returncode == 0, got.stderr
    # metrics of both workers, from the host, through their published ports
    counted = 0
    for index in range(1, WORKERS + 1):
        port = cluster.compose("port", "--index", str(index), "worker", "9100").stdout.strip()
        status_code, body = _http(f"http://{port}/metrics")
        assert status_code == 200
        counted += sum(float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines()
                       if line.startswith('conveyor_jobs_total{') and 'status="success"' in line)
    assert counted >= len(jobs)


def test_the_server_answers_with_a_token_only(cluster: ComposeCluster) -> None:
    [run_id] = cluster.runs[:1]
    [server] = cluster.containers("server")
    created = subprocess.run(["docker", "exec", server, "conveyor", "token", "create", "e2e-reader", "--scope", "read"],
                             capture_output=True, text=True, timeout=60)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    api = f"http://127.0.0.1:{cluster.server_port}"
    _wait(lambda: _http(f"{api}/readyz")[0] == 200, 60, "the server to be ready")
    assert _http(f"{api}/api/v1/runs/{run_id}")[0] == 401

    request = urllib.request.Request(f"{api}/api/v1/runs/{run_id}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        run = json.loads(response.read())
    assert run["status"] == "success" and "package" in run["jobs"]
    assert any(a["path"] == "app.tar.gz" for a in run["jobs"]["package"]["artifacts"])


def test_a_killed_worker_loses_no_job(cluster: ComposeCluster) -> None:
    result = cluster.conveyor("submit", "/work/examples/docker-artifacts.yml", "--var", "WORK_SECONDS=20")
    assert result.returncode == 0, result.stderr
    run_id = _run_id(result)

    def running_shard() -> tuple[str, dict] | None:
        jobs = cluster.status(run_id)["jobs"]
        return next(((name, job) for name, job in jobs.items()
                     if name.startswith("test[") and job["status"] == "running" and job["worker"]), None)

    victim_name, victim_job = _wait(running_shard, 180, "a test shard to run")
    victim_worker = victim_job["worker"]
    hostname = victim_worker.split("@", 1)[1]
    [container] = [c for c in cluster.containers("worker")
                   if subprocess.run(["docker", "inspect", "-f", "{{.Config.Hostname}}", c], capture_output=True,
                                     text=True).stdout.strip() == hostname]
    pid = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", container], capture_output=True, text=True,
                         check=True).stdout.strip()
    # A crash, not `docker kill` (which Docker counts as a deliberate stop and never restarts).
    subprocess.run(["kill", "-9", pid], check=True)

    def finished() -> dict | None:
        status = cluster.status(run_id)
        return status if status["status"] not in ("pending", "running") else None

    status = _wait(finished, 300, "the run to finish after the kill", interval=3)
    assert status["status"] == "success", json.dumps(status, indent=1)
    assert status["jobs"][victim_name]["attempts"] >= 2
    # the crashed worker came back (restart: unless-stopped)
    _wait(lambda: subprocess.run(["docker", "inspect", "-f", "{{.State.Running}} {{.RestartCount}}", container],
                                 capture_output=True, text=True).stdout.split() == ["true", "1"],
          120, "the killed worker to restart")


def test_a_rolling_deployment_behind_the_demo_haproxy(cluster: ComposeCluster) -> None:
    result = cluster.conveyor("submit", "/work/examples/deploy-rolling.yml", "--var", "APP_VERSION=v7", "--wait",
                              timeout=400)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{cluster.logs()}"
    answers = set()
    for _ in range(20):
        code, body = _http(f"http://127.0.0.1:{cluster.demo_port}/")
        assert code == 200
        answers.add(body.decode().split()[0] if body else "")
    assert any("v7" in answer for answer in answers), answers


def test_remote_workers_reach_redis_and_s3_over_tls_only(cluster: ComposeCluster, tmp_path: Path) -> None:
    cluster.compose("up", "-d", "redis", "s3-tls", files=("docker-compose.yml", "deploy/compose/remote-workers.yml"))
    ca = cluster.tls_dir / "ca.crt"
    remote = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "AWS_"))},
        "CONVEYOR_BROKER_URL": f"rediss://:redis-e2e-pw@127.0.0.1:{cluster.redis_tls_port}/0?ssl_ca_certs={ca}",
        "CONVEYOR_ARTIFACTS_URL": "s3://conveyor/artifacts",
        "CONVEYOR_S3_ENDPOINT_URL": f"https://127.0.0.1:{cluster.s3_tls_port}",
        "AWS_CA_BUNDLE": str(ca),
        "AWS_ACCESS_KEY_ID": "conveyor", "AWS_SECRET_ACCESS_KEY": "conveyor-s3-pw", "AWS_DEFAULT_REGION": "us-east-1",
        "CONVEYOR_DATA_DIR": str(tmp_path / "remote-data"),
    }
    [run_id] = cluster.runs[:1]

    def conveyor(*args: str, env: dict[str, str] = remote) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "coordinator", *args], env=env, capture_output=True,
                              text=True, timeout=120, cwd=ROOT)

    # Redis came back with the TLS port: what a remote worker sees is the cluster's state
    status = _wait(lambda: conveyor("status", run_id, "--format", "json").returncode == 0, 60,
                   "Redis over TLS from the host")
    assert status
    assert json.loads(conveyor("status", run_id, "--format", "json").stdout)["status"] == "success"
    got = conveyor("artifacts", "get", run_id, "package", "-o", str(tmp_path / "got"))
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "got" / "app.tar.gz").stat().st_size > 0
    # without the password, or without TLS, nothing
    wrong = {**remote, "CONVEYOR_BROKER_URL": remote["CONVEYOR_BROKER_URL"].replace("redis-e2e-pw", "guess")}
    refused = conveyor("status", run_id, env=wrong)
    assert refused.returncode != 0 and "redis-e2e-pw" not in refused.stderr + refused.stdout
    plain = {**remote, "CONVEYOR_BROKER_URL": f"redis://:redis-e2e-pw@127.0.0.1:{cluster.redis_tls_port}/0"}
    assert conveyor("status", run_id, env=plain).returncode != 0


def test_down_leaves_nothing_behind(cluster: ComposeCluster, docker_client) -> None:
    cluster.compose("--profile", "demo", "--profile", "cli", "down", "-v", "--remove-orphans")
    cluster.down = True
    label = f"label=com.docker.compose.project={cluster.project}"
    assert subprocess.run(["docker", "ps", "-aq", "--filter", label], capture_output=True, text=True).stdout == ""
    assert subprocess.run(["docker", "volume", "ls", "-q", "--filter", label], capture_output=True,
                          text=True).stdout == ""
    assert subprocess.run(["docker", "network", "ls", "-q", "--filter", label], capture_output=True,
                          text=True).stdout == ""
    # no step container of this cluster's runs survived its worker
    leftovers = [c.name for c in docker_client.containers.list(all=True, filters={"label": "conveyor.run"})
                 if str(cluster.data_dir) in json.dumps(c.attrs.get("Mounts", []))]
    assert leftovers == []
