"""Real HAProxy and demo-app processes for the deployment tests.

Both FAIL the test when they cannot start (never skip). HAProxy runs in the foreground
with a generated config: an admin socket (unix path in the test's tmp dir), a frontend
on a free port, backend `web` with the given servers, checked like the example config.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.services import free_port, wait_for_port

HAPROXY = "/usr/sbin/haproxy"
ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo-app"
CTL = DEMO / "ctl.py"


@dataclass
class HAProxy:
    proc: subprocess.Popen
    socket: Path
    port: int
    config: Path

    @property
    def admin(self) -> str:
        return f"unix://{self.socket}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def haproxy_config(socket: Path, port: int, servers: dict[str, str], inter_ms: int = 300) -> str:
    lines = "\n".join(f"    server {name} {address}" for name, address in servers.items())
    return textwrap.dedent(f"""\
        global
            stats socket {socket} mode 600 level admin
            stats timeout 30s
        defaults
            mode http
            timeout connect 1s
            timeout client 30s
            timeout server 30s
            timeout queue 5s
            option redispatch
            retries 3
            retry-on conn-failure empty-response
        frontend web
            bind 127.0.0.1:{port}
            default_backend web
        backend web
            balance roundrobin
            option httpchk GET /healthz
            default-server check inter {inter_ms} rise 1 fall 2
        """) + lines + "\n"


def start_haproxy(tmp: Path, servers: dict[str, str], inter_ms: int = 300) -> HAProxy:
    """A foreground haproxy with backend `web` holding `servers` (name -> address)."""
    tmp.mkdir(parents=True, exist_ok=True)
    socket, port = tmp / "haproxy.sock", free_port()
    config = tmp / "haproxy.cfg"
    config.write_text(haproxy_config(socket, port, servers, inter_ms))
    try:
        proc = subprocess.Popen([HAPROXY, "-db", "-f", str(config)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    except OSError as exc:
        pytest.fail(f"cannot start {HAPROXY}: {exc}")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"haproxy exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        if socket.exists() and wait_for_port(port, 0.1):
            return HAProxy(proc, socket, port, config)
        time.sleep(0.05)
    proc.kill()
    pytest.fail("haproxy did not open its admin socket within 10 s")


def app_env(state: Path) -> dict[str, str]:
    return {**os.environ, "DEMO_STATE_DIR": str(state)}


def start_app(state: Path, instance: str, version: str, port: int) -> None:
    """A demo-app instance through the example's own start script; fails the test if it does not listen."""
    result = subprocess.run([sys.executable, str(CTL), "start", instance, version, str(port)], env=app_env(state),
                            capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        pytest.fail(f"demo-app {instance} did not start: {result.stdout}{result.stderr}")


def stop_apps(state: Path) -> None:
    """Stop every demo-app instance with a pid file under `state`."""
    for pidfile in state.glob("*.pid"):
        subprocess.run([sys.executable, str(CTL), "stop", pidfile.stem], env=app_env(state), timeout=30)


def get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    """(status, body) of a GET; a connection failure is status 0."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


@dataclass
class Load:
    """Steady GET requests against a URL from a background thread, counting every outcome."""

    url: str
    interval: float = 0.01
    results: list[tuple[float, int, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            status, body = get(self.url)
            self.results.append((time.monotonic(), status, body.strip()))
            self._stop.wait(self.interval)

    def __enter__(self) -> "Load":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def failures(self, since: float = 0.0) -> list[tuple[float, int, str]]:
        return [r for r in self.results if r[0] >= since and r[1] != 200]

    def bodies(self, since: float = 0.0) -> list[str]:
        return [r[2] for r in self.results if r[0] >= since and r[1] == 200]
