"""Health probes against real local servers, and the threshold counting kept in the record."""
from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest
from hypothesis import given, settings, strategies as st

from deploy import health
from deploy.config import HealthConfig
from deploy.health import Probe, observe, probe
from deploy.providers.base import Instance
from tests.services import free_port


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        status = int(self.path.strip("/").split("/")[-1] or 200)
        if status == 999:
            import time

            time.sleep(0.6)
            status = 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[Instance]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield Instance("web1", f"127.0.0.1:{httpd.server_address[1]}")
    httpd.shutdown()


@pytest.mark.parametrize("path, ok", [("/200", True), ("/204", True), ("/302", True), ("/404", False),
                                      ("/500", False), ("/503", False)])
def test_http_passes_on_2xx_and_3xx_only(server: Instance, path: str, ok: bool) -> None:
    result = probe(HealthConfig(type="http", path=path, timeout=1), server)
    assert result.ok is ok
    assert result.detail == f"HTTP {path.strip('/')}"


def test_http_timeout_and_refused_connections_fail(server: Instance) -> None:
    slow = probe(HealthConfig(type="http", path="/999", timeout=0.3), server)
    assert not slow.ok and "timed out" in slow.detail.lower()
    closed = probe(HealthConfig(type="http", path="/"), Instance("x", f"127.0.0.1:{free_port()}"))
    assert not closed.ok and "refused" in closed.detail.lower()


def test_tcp(server: Instance) -> None:
    assert probe(HealthConfig(type="tcp"), server).ok
    assert not probe(HealthConfig(type="tcp"), Instance("x", f"127.0.0.1:{free_port()}")).ok


def test_command_gets_the_instance_and_judges_by_exit_code(server: Instance) -> None:
    check = (f"{sys.executable} -c \"import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])),"
             f" timeout=1); sys.exit(0 if sys.argv[2] == 'web1' else 4)\" ${{PORT}} ${{INSTANCE}}")
    assert probe(HealthConfig(type="command", command=check, timeout=5), server).ok
    other = probe(HealthConfig(type="command", command=check, timeout=5), Instance("web2", server.address))
    assert not other.ok and other.detail == "exit 4"
    hung = probe(HealthConfig(type="command", command=f"{sys.executable} -c 'import time; time.sleep(5)'",
                              timeout=0.3), server)
    assert not hung.ok and "timed out" in hung.detail


def test_thresholds_need_consecutive_results() -> None:
    config = HealthConfig(success_threshold=2, failure_threshold=3, interval=1)
    state = health.fresh()
    verdicts = []
    for ok in [True, False, True, True, False, False, True, False, False, False]:
        state = observe(state, Probe(ok), config, 1000)
        verdicts.append(state["healthy"])
    assert verdicts == [None, None, None, True, True, True, True, True, True, False]
    assert state["next_at"] == 2000


@settings(max_examples=100, deadline=None)
@given(st.lists(st.booleans(), max_size=40), st.integers(1, 5), st.integers(1, 5))
def test_verdict_follows_the_last_run_of_results(results: list[bool], success: int, failure: int) -> None:
    config = HealthConfig(success_threshold=success, failure_threshold=failure)
    state = health.fresh()
    for ok in results:
        state = observe(state, Probe(ok), config, 0)
    # the verdict is that of the last run of equal results long enough to count, or unknown
    expected = None
    run = 0
    for i, ok in enumerate(results):
        run = run + 1 if i and results[i - 1] == ok else 1
        if run >= (success if ok else failure):
            expected = ok
    assert state["healthy"] is expected
