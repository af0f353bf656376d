"""The local executor is opt-in: a worker never falls back to it.

Attack (by accident or by a slow engine): CONVEYOR_EXECUTOR unset and the Docker engine
down or slow to answer → the worker used to run every job unisolated on its host after one
warning. Now it refuses to start, in one line that names CONVEYOR_EXECUTOR=local;
`conveyor run` on one's own machine (embedded) keeps its documented fallback.
"""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from worker.executors import select_executor
from worker.executors.contract import InfrastructureError
from worker.executors.local import LocalExecutor

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def silent_engine(tmp_path: Path, monkeypatch):
    """A Docker socket that accepts connections and never answers (a hung engine)."""
    path = tmp_path / "silent.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
    yield path
    stop.set()
    thread.join(timeout=5)
    for conn in accepted:
        conn.close()
    server.close()


def test_a_slow_engine_never_turns_a_worker_into_a_local_one(silent_engine, monkeypatch) -> None:
    import worker.executors.docker as docker_executor

    monkeypatch.setattr(docker_executor, "DEFAULT_ENGINE_TIMEOUT", 1.0)
    with pytest.raises(InfrastructureError, match="CONVEYOR_EXECUTOR=local"):
        select_executor(None)


def test_embedded_auto_still_falls_back_with_a_warning(silent_engine, caplog) -> None:
    caplog.set_level(logging.WARNING)
    assert isinstance(select_executor("auto"), LocalExecutor)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_only_embedded_mode_gets_the_auto_choice(monkeypatch, tmp_path) -> None:
    from coordinator.cli.options import cli_settings

    monkeypatch.chdir(tmp_path)  # no conveyor.toml around
    for name in ("CONVEYOR_EXECUTOR", "CONVEYOR_BROKER_URL", "CONVEYOR_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    assert cli_settings().executor == "auto"
    assert cli_settings("local").executor == "local"
    monkeypatch.setenv("CONVEYOR_BROKER_URL", "redis://127.0.0.1:1/0")
    assert cli_settings().executor is None  # a worker: Docker or nothing
    monkeypatch.setenv("CONVEYOR_EXECUTOR", "auto")
    with pytest.raises(Exception, match="CONVEYOR_EXECUTOR"):
        cli_settings()  # configuration never yields the fallback


def _worker(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "coordinator", "worker", "--name", f"fc-{os.getpid()}", *args],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def test_a_worker_without_docker_and_without_an_executor_setting_refuses_to_start(redis_url, tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update(CONVEYOR_BROKER_URL=redis_url, CONVEYOR_DATA_DIR=str(tmp_path / "data"),
               DOCKER_HOST=f"unix://{tmp_path}/no-engine.sock", PYTHONUNBUFFERED="1")
    proc = _worker(env)
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    assert proc.returncode != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "CONVEYOR_EXECUTOR=local" in lines[0] and "ready" not in out + err
    # Control: saying so (here with the flag) starts it: the refusal was about the choice.
    proc = _worker(env, "--executor", "local")
    try:
        ready = False
        assert proc.stderr is not None
        for line in proc.stderr:
            if " ready." in line:
                ready = True
                break
        assert ready
    finally:
        os.killpg(proc.pid, 9)
        proc.wait(timeout=30)
