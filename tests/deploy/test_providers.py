"""Providers: the command provider (argv, variables, exit codes, detaching) and the docker provider."""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest

from deploy.providers.base import Instance, ProviderError, TransientProviderError
from deploy.providers.command import CommandProvider, render
from tests.services import free_port

PY = sys.executable


def test_variables_are_substituted_inside_arguments_after_splitting() -> None:
    values = {"INSTANCE": "web 1", "VERSION": "v2; rm -rf /", "PORT": "8081", "ADDRESS": "127.0.0.1:8081"}
    argv = render("./start.sh '${INSTANCE}' ${VERSION} --port=${PORT} ${ADDRESS} ${OTHER}", values)
    assert argv == ["./start.sh", "web 1", "v2; rm -rf /", "--port=8081", "127.0.0.1:8081", "${OTHER}"]


def test_start_runs_in_the_workdir_with_argv_and_environment(tmp_path: Path) -> None:
    script = tmp_path / "record.py"
    script.write_text("import json, os, sys\n"
                      "json.dump({'argv': sys.argv[1:], 'cwd': os.getcwd(),"
                      " 'env': {k: v for k, v in os.environ.items() if k.startswith('CONVEYOR_DEPLOY_')}},"
                      " open('out.json', 'w'))\nprint('started')\n")
    provider = CommandProvider(f"{PY} record.py ${{INSTANCE}} ${{VERSION}} ${{PORT}}", None, tmp_path)
    output = provider.start(Instance("web1", "127.0.0.1:8081"), "v2")
    assert output == "started"
    seen = json.loads((tmp_path / "out.json").read_text())
    assert seen["argv"] == ["web1", "v2", "8081"]
    assert Path(seen["cwd"]) == tmp_path
    assert seen["env"] == {"CONVEYOR_DEPLOY_INSTANCE": "web1", "CONVEYOR_DEPLOY_VERSION": "v2",
                           "CONVEYOR_DEPLOY_PORT": "8081", "CONVEYOR_DEPLOY_ADDRESS": "127.0.0.1:8081"}


def test_exit_75_is_transient_other_codes_are_not(tmp_path: Path) -> None:
    instance = Instance("web1", "127.0.0.1:8081")
    with pytest.raises(TransientProviderError, match="75"):
        CommandProvider(f"{PY} -c 'import sys; print(\"busy\"); sys.exit(75)'", None).start(instance, "v1")
    with pytest.raises(ProviderError, match="exited 3: broken") as info:
        CommandProvider(f"{PY} -c 'import sys; print(\"broken\"); sys.exit(3)'", None).start(instance, "v1")
    assert not isinstance(info.value, TransientProviderError)
    with pytest.raises(ProviderError, match="not found"):
        CommandProvider("/nonexistent/start.sh", None).start(instance, "v1")


def test_stop_without_a_command_does_nothing() -> None:
    assert CommandProvider("true", None).stop(Instance("web1", "127.0.0.1:1")) == ""


def test_an_instance_left_running_does_not_block_start(tmp_path: Path) -> None:
    """The started server keeps the output open; start must still return, and the server live on."""
    port = free_port()
    provider = CommandProvider(
        f"{PY} -c \"import subprocess, sys; p = subprocess.Popen([sys.executable, '-m', 'http.server', '${{PORT}}',"
        f" '--bind', '127.0.0.1']); print(p.pid)\"", None, tmp_path)
    started = time.monotonic()
    pid = int(provider.start(Instance("web1", f"127.0.0.1:{port}"), "v1"))
    assert time.monotonic() - started < 5
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            assert time.monotonic() < deadline, "the detached server never listened"
            time.sleep(0.05)
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()
        assert os.getsid(pid) != os.getsid(0)  # its own session: a worker's process group kill spares it
    finally:
        os.kill(pid, signal.SIGTERM)


def test_demo_scripts_start_replace_and_stop(app_state: Path, monkeypatch) -> None:
    from tests.deploy.services import CTL, get

    port = free_port()
    monkeypatch.setenv("DEMO_STATE_DIR", str(app_state))
    provider = CommandProvider(f"{PY} {CTL} start ${{INSTANCE}} ${{VERSION}} ${{PORT}}", f"{PY} {CTL} stop ${{INSTANCE}}")
    instance = Instance("web1", f"127.0.0.1:{port}")
    provider.start(instance, "v1")
    assert get(f"http://127.0.0.1:{port}/") == (200, "v1\n")
    provider.start(instance, "v2")  # replaces
    assert get(f"http://127.0.0.1:{port}/") == (200, "v2\n")
    provider.stop(instance)
    provider.stop(instance)  # idempotent
    assert get(f"http://127.0.0.1:{port}/")[0] == 0


# -- docker -----------------------------------------------------------------------------------

TEST_IMAGE = "conveyor-test/deploy-app"


def _build(client, busybox: str, tag: str, body: str, cmd: list[str]) -> str:
    dockerfile = (f"FROM {busybox}\nRUN mkdir -p /www && echo {body} > /www/index.html\n"
                  f"CMD {json.dumps(cmd)}\n")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        data = dockerfile.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    client.images.build(fileobj=buffer, custom_context=True, tag=f"{TEST_IMAGE}:{tag}", rm=True, pull=False,
                        network_mode="none")
    return f"{TEST_IMAGE}:{tag}"


@pytest.fixture(scope="module")
def app_images(docker_client, busybox_image):
    for version in ("v1", "v2"):
        _build(docker_client, busybox_image, version, version, ["sh", "-c", "exec httpd -f -p $PORT -h /www"])
    _build(docker_client, busybox_image, "crash", "crash", ["false"])
    return TEST_IMAGE


def test_docker_provider_runs_replaces_hardens_and_removes(docker_client, app_images) -> None:
    from deploy.providers.docker import LABEL_INSTANCE, LABEL_VERSION, DockerProvider

    port = free_port()
    # this sandbox's engine has no usable bridge; the host network exercises the same lifecycle
    provider = DockerProvider(f"{app_images}:${{VERSION}}", 8080, "test-env", client=docker_client, ready_timeout=20,
                              network="host")
    instance = Instance("web1", f"127.0.0.1:{port}")
    try:
        provider.start(instance, "v1")
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read() == b"v1\n"
        provider.start(instance, "v2")
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read() == b"v2\n"
        containers = docker_client.containers.list(filters={"label": f"{LABEL_INSTANCE}=web1"})
        assert len(containers) == 1
        container = containers[0]
        assert container.labels[LABEL_VERSION] == "v2"
        host = container.attrs["HostConfig"]
        assert "no-new-privileges" in host["SecurityOpt"] and "NET_RAW" in host["CapDrop"]
        assert host["Privileged"] is False and host["Init"] is True
        assert provider.stop(instance) == "removed"
        assert provider.stop(instance) == ""
        assert not docker_client.containers.list(all=True, filters={"label": f"{LABEL_INSTANCE}=web1"})
    finally:
        provider.stop(instance)


def test_docker_provider_reports_a_crashing_or_missing_image(docker_client, app_images) -> None:
    from deploy.providers.docker import DockerProvider

    instance = Instance("web9", f"127.0.0.1:{free_port()}")
    provider = DockerProvider(f"{app_images}:${{VERSION}}", 8080, "test-env", client=docker_client, ready_timeout=10,
                              network="host")
    try:
        with pytest.raises(ProviderError, match="exited at start") as info:
            provider.start(instance, "crash")
        assert not isinstance(info.value, TransientProviderError)
        with pytest.raises(ProviderError) as info:
            provider.start(instance, "no-such-version")
        assert not isinstance(info.value, TransientProviderError)
    finally:
        provider.stop(instance)


def test_docker_engine_unreachable_is_transient() -> None:
    from deploy.providers.docker import DockerProvider

    provider = DockerProvider("img:${VERSION}", 8080, "env", docker_host="tcp://127.0.0.1:1", ready_timeout=1)
    with pytest.raises(TransientProviderError):
        provider.start(Instance("web1", "127.0.0.1:9"), "v1")


# -- what provider and health commands see --------------------------------------------------


def test_provider_commands_get_no_worker_variables(monkeypatch, tmp_path) -> None:
    from deploy.providers.command import CommandProvider

    monkeypatch.setenv("CONVEYOR_SECRET_API_TOKEN", "worker-secret-123")
    monkeypatch.setenv("CONVEYOR_BROKER_URL", "redis://:broker-pw-123@redis:6379/0")
    monkeypatch.setenv("REGION", "eu-1")
    out = tmp_path / "env.txt"
    provider = CommandProvider(f"sh -c 'env > {out}'", None, env=(("MODE", "blue"),), pass_env=("REGION",))
    provider.start(Instance("web1", "127.0.0.1:8081"), "v2")
    seen = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    assert seen["CONVEYOR_DEPLOY_INSTANCE"] == "web1" and seen["CONVEYOR_DEPLOY_VERSION"] == "v2"
    assert (seen["MODE"], seen["REGION"]) == ("blue", "eu-1")
    assert "CONVEYOR_SECRET_API_TOKEN" not in seen and "CONVEYOR_BROKER_URL" not in seen


def test_provider_output_is_stored_without_the_workers_credentials(monkeypatch) -> None:
    from deploy.providers.command import CommandProvider

    monkeypatch.setenv("CONVEYOR_SECRET_API_TOKEN", "worker-secret-123")
    provider = CommandProvider("sh -c 'echo leaked worker-secret-123; exit 2'", None)
    with pytest.raises(ProviderError) as failure:
        provider.start(Instance("web1", "127.0.0.1:8081"), "v2")
    assert "worker-secret-123" not in str(failure.value) and "leaked ***" in str(failure.value)


def test_health_commands_get_no_worker_variables(monkeypatch) -> None:
    from deploy.config import HealthConfig
    from deploy.health import probe

    monkeypatch.setenv("CONVEYOR_SECRET_API_TOKEN", "worker-secret-123")
    check = HealthConfig(type="command", command="sh -c 'test -z \"$CONVEYOR_SECRET_API_TOKEN\"'")
    assert probe(check, Instance("web1", "127.0.0.1:8081")).ok
