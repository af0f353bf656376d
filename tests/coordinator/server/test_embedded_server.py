"""`conveyor server` on a fresh machine (no broker, no Redis): a signed push to a local
repository runs the pipeline in the server's own process, as `conveyor run` would."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from tests.cluster import ROOT
from tests.coordinator.server.ci_fixture import SECRET, ForgeRepo, github_push, sign
from tests.services import free_port, wait_for_port

pytestmark = [pytest.mark.slow]


def test_an_embedded_server_runs_a_pushed_commit_itself(tmp_path: Path) -> None:
    repo = ForgeRepo.create(tmp_path / "forge")
    sha = repo.commit({".conveyor.yml": "name: app\njobs:\n  hello: {steps: [{name: s, script: ['echo hi from $CONVEYOR_BRANCH']}]}\n"})
    config = tmp_path / "conveyor.toml"
    config.write_text(textwrap.dedent(f"""
        [[repositories]]
        name = "acme/app"
        forge = "github"
        url = "{repo.bare}"
        webhook_secret_env = "HOOK_SECRET"
    """))
    port = free_port()
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "CONVEYOR_CONFIG": str(config),
           "CONVEYOR_DATA_DIR": str(tmp_path / "data"), "HOOK_SECRET": SECRET, "CONVEYOR_EXECUTOR": "local"}
    server = subprocess.Popen([sys.executable, "-m", "coordinator", "server", "--port", str(port)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_for_port(port, timeout=30), server.stdout.read() if server.poll() is not None else "no port"
        body = json.dumps(github_push(sha)).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/hooks/github", data=body, method="POST", headers={
            "X-GitHub-Event": "push", "X-GitHub-Delivery": "d1", "X-Hub-Signature-256": sign(body),
            "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 202
            run_id = json.loads(response.read())["runs"][0]
        deadline = time.monotonic() + 60
        while True:
            status = subprocess.run([sys.executable, "-m", "coordinator", "status", run_id, "--format", "json"],
                                    cwd=ROOT, env=env, capture_output=True, text=True)
            view = json.loads(status.stdout) if status.returncode == 0 else {"status": "running"}
            if view["status"] != "running" or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert view["status"] == "success", (view, _stop(server))
        logs = subprocess.run([sys.executable, "-m", "coordinator", "logs", run_id], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        assert "hi from main" in logs.stdout
    finally:
        _stop(server)


def _stop(server: subprocess.Popen) -> str:
    """Stop the server; its output (for a failing assertion's message)."""
    if server.poll() is None:
        server.terminate()
    try:
        out, _ = server.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        out, _ = server.communicate()
    return out or ""
