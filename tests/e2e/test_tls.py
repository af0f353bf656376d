"""Broker, result backend and state store over TLS with a password (`rediss://:pw@...`)."""
from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import pytest

from tests.cluster import ROOT, Cluster
from tests.services import REDIS_SERVER, free_port


PASSWORD = "s3cret-pw"


def openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"openssl {' '.join(args)}:\n{result.stderr}"


def make_certificates(directory: Path) -> Path:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it; returns the CA file."""
    directory.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=conveyor-test-ca",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=directory)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "server.key", "-out", "server.csr", cwd=directory)
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.ext", "-out", "server.pem", cwd=directory)
    return directory / "ca.pem"


def wait_for_tls(port: int, ca: Path, timeout: float = 10.0) -> bool:
    context = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as raw:
                with context.wrap_socket(raw, server_hostname="127.0.0.1"):
                    return True
        except OSError:
            time.sleep(0.1)
    return False


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """redis-server speaking only TLS (no plain port), requiring a password."""
    certs = tmp_path / "certs"
    ca = make_certificates(certs)
    port = free_port()
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(certs / "server.pem"), "--tls-key-file", str(certs / "server.key"),
         "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no", "--requirepass", PASSWORD,
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        if not wait_for_tls(port, ca):
            proc.kill()
            output = proc.communicate(timeout=10)[0]
            pytest.fail(f"redis-server with TLS did not come up (is it built with TLS?):\n{output}")
        yield port, ca
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def tls_url(port: int, ca: Path, password: str = PASSWORD, cert_reqs: str | None = "required") -> str:
    query = f"ssl_ca_certs={quote(str(ca), safe='')}"
    if cert_reqs:
        query = f"ssl_cert_reqs={cert_reqs}&{query}"
    return f"rediss://:{quote(password, safe='')}@127.0.0.1:{port}/0?{query}"


@pytest.fixture(params=["required", None], ids=["cert_reqs=required", "cert_reqs-default"])
def tls_cluster(request: pytest.FixtureRequest, tmp_path: Path, tls_redis: tuple[int, Path]) -> Iterator[Cluster]:
    port, ca = tls_redis
    cluster = Cluster(tmp_path, port, "local")
    # broker, result backend (db 1) and state store all derive from this one URL; without
    # ssl_cert_reqs, Celery's own result backend would refuse it and kombu would not verify.
    cluster.env["CONVEYOR_BROKER_URL"] = tls_url(port, ca, cert_reqs=request.param)
    try:
        yield cluster
    finally:
        cluster.stop()


def test_pipeline_runs_over_tls_with_password(tls_cluster: Cluster) -> None:
    tls_cluster.worker("tls-w1")
    pipeline = tls_cluster.pipeline("""
        name: over-tls
        jobs:
          first: {steps: [{name: s, script: ["echo first-ran"]}]}
          second: {depends_on: [first], steps: [{name: s, script: ["echo second-ran"]}]}
    """)
    result = tls_cluster.cli("submit", str(pipeline), "--wait", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr + tls_cluster.workers[0].log()[-3000:]
    run_id = result.stdout.strip().splitlines()[0]
    status = tls_cluster.status(run_id)
    assert status["status"] == "success"
    assert {name: job["status"] for name, job in status["jobs"].items()} == {"first": "success", "second": "success"}
    assert "second-ran" in tls_cluster.logs(run_id, "second")
    # Secure by default: no "insecure SSL" fallback anywhere in the worker's log.
    assert "insecure" not in tls_cluster.workers[0].log().lower()


def run_worker(env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "coordinator", "worker", "--name", "tls-bad"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def worker_env(tmp_path: Path) -> dict[str, str]:
    return dict(Cluster(tmp_path, 0, "local").env)


def test_wrong_password_fails_fast_with_a_clear_message(worker_env: dict[str, str],
                                                        tls_redis: tuple[int, Path]) -> None:
    port, ca = tls_redis
    env = {**worker_env, "CONVEYOR_BROKER_URL": tls_url(port, ca, password="wrong-pw")}
    started = time.monotonic()
    result = run_worker(env)
    assert time.monotonic() - started < 20
    assert result.returncode != 0
    assert "refused the credentials" in result.stderr and "check the password" in result.stderr, result.stderr
    assert "wrong-pw" not in result.stderr  # the message names the URL with its password hidden
    assert "Traceback" not in result.stderr


def test_untrusted_certificate_fails_fast_with_a_clear_message(worker_env: dict[str, str],
                                                               tls_redis: tuple[int, Path], tmp_path: Path) -> None:
    port, _ = tls_redis
    other_ca = make_certificates(tmp_path / "other")  # a CA that did not sign the server's certificate
    env = {**worker_env, "CONVEYOR_BROKER_URL": tls_url(port, other_ca)}
    result = run_worker(env)
    assert result.returncode != 0
    assert "cannot reach rediss://:***@127.0.0.1" in result.stderr, result.stderr
    assert "certificate verify failed" in result.stderr.lower(), result.stderr


def test_submit_with_a_wrong_password_fails_fast(worker_env: dict[str, str], tls_redis: tuple[int, Path],
                                                 tmp_path: Path) -> None:
    port, ca = tls_redis
    pipeline = tmp_path / "src" / "pipeline.yml"
    pipeline.parent.mkdir(parents=True)
    pipeline.write_text("name: p\njobs:\n  a: {steps: [{name: s, script: [\"true\"]}]}\n")
    env = {**worker_env, "CONVEYOR_BROKER_URL": tls_url(port, ca, password="wrong-pw")}
    result = subprocess.run([sys.executable, "-m", "coordinator", "submit", str(pipeline)], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "AuthenticationError" in result.stderr or "password" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "wrong-pw" not in result.stderr, result.stderr
