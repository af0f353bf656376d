"""The server's API over HTTP: a real uvicorn on a free port, a real (SQLite) state store,
tokens made by the token store, requests with urllib as any client would send them."""
from __future__ import annotations

import json
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn

from coordinator.frontend import load_text
from coordinator.server.app import create_app
from shared.config import Settings
from shared.state import JobMeta, open_state
from shared.state.base import StateStore
from shared.tokens import TokenStore, open_tokens
from tests.services import free_port

RUN = "20261203-140000-c0ffee"
PIPELINE = """
name: api-demo
jobs:
  build: {steps: [{name: s, script: [x]}]}
  test: {depends_on: [build], steps: [{name: s, script: [x]}]}
"""


@dataclass
class Server:
    url: str
    store: StateStore
    tokens: TokenStore

    def request(self, method: str, path: str, token: str | None = None,
                body: dict | None = None) -> tuple[int, dict | str, dict]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                raw, status, headers = response.read().decode(), response.status, dict(response.headers)
        except urllib.error.HTTPError as exc:
            raw, status, headers = exc.read().decode(), exc.code, dict(exc.headers)
        try:
            return status, json.loads(raw), headers
        except ValueError:
            return status, raw, headers


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    settings = Settings(data_dir=tmp_path / "data")
    (tmp_path / "data").mkdir()
    store = open_state(settings.effective_state_url)
    result = load_text(textwrap.dedent(PIPELINE), "p.yml", parameters={}, run_id=RUN)
    store.create_run(RUN, result.plan.pipeline, {n: JobMeta() for n in result.plan.jobs}, result.plan.to_dict(),
                     {"trigger": {"event": "push", "repository": "acme/app", "branch": "main"}})
    tokens = open_tokens(settings.effective_state_url)
    port = free_port()
    config = uvicorn.Config(create_app(settings, store, tokens), host="127.0.0.1", port=port, log_level="warning")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    yield Server(f"http://127.0.0.1:{port}", store, tokens)
    uv.should_exit = True
    thread.join(timeout=10)


def test_health_needs_no_token(server: Server) -> None:
    assert server.request("GET", "/healthz")[0] == 200
    assert server.request("GET", "/readyz")[:2] == (200, {"status": "ready"})


@pytest.mark.parametrize("token", [None, "cvy_not-a-real-token", "Basic abc"])
def test_no_valid_token_is_401_with_the_error_shape(server: Server, token: str | None) -> None:
    status, body, headers = server.request("GET", "/api/v1/runs", token)
    assert status == 401
    assert body["error"]["code"] == "unauthorized" and body["error"]["message"]
    assert headers.get("www-authenticate", headers.get("WWW-Authenticate")) == "Bearer"


def test_scopes_include_the_lower_ones_and_refuse_the_higher(server: Server) -> None:
    read = server.tokens.create("reader", "read")
    trigger = server.tokens.create("ci-bot", "trigger")
    assert server.request("GET", f"/api/v1/runs/{RUN}", trigger)[0] == 200  # trigger includes read
    status, body, _ = server.request("POST", f"/api/v1/runs/{RUN}/cancel", read)
    assert (status, body["error"]["code"]) == (403, "forbidden")
    assert server.store.get_run(RUN).cancel_requested is False
    assert server.request("POST", f"/api/v1/runs/{RUN}/cancel", trigger)[0] == 202
    assert server.store.get_run(RUN).cancel_requested is True


def test_a_revoked_token_is_refused(server: Server) -> None:
    token = server.tokens.create("temp", "read")
    assert server.request("GET", "/api/v1/runs", token)[0] == 200
    assert server.tokens.revoke("temp")
    assert server.request("GET", "/api/v1/runs", token)[0] == 401


def test_runs_list_and_run_status(server: Server) -> None:
    token = server.tokens.create("reader", "read")
    status, runs, _ = server.request("GET", "/api/v1/runs?branch=main&repository=acme/app", token)
    assert status == 200 and [r["run_id"] for r in runs] == [RUN]
    assert runs[0]["trigger"]["repository"] == "acme/app"
    assert server.request("GET", "/api/v1/runs?branch=dev", token)[1] == []
    status, run, _ = server.request("GET", f"/api/v1/runs/{RUN}", token)
    assert status == 200 and run["pipeline"] == "api-demo" and list(run["jobs"]) == ["build", "test"]
    assert run["trigger"]["event"] == "push"


@pytest.mark.parametrize("run_id", ["20990101-000000-000000", "..%2F..%2Fetc", "a..b"])
def test_unknown_or_hostile_run_ids_are_404(server: Server, run_id: str) -> None:
    token = server.tokens.create("reader", "read")
    status, body, _ = server.request("GET", f"/api/v1/runs/{run_id}", token)
    assert status == 404 and body["error"]["code"] == "not_found"


def test_job_log_as_text_and_followed_until_the_job_ends(server: Server) -> None:
    token = server.tokens.create("reader", "read")
    server.store.append_logs(RUN, "build", [("stdout", "first line"), ("stderr", "second line")])
    status, text, _ = server.request("GET", f"/api/v1/runs/{RUN}/jobs/build/log", token)
    assert (status, text) == (200, "first line\nsecond line\n")
    assert server.request("GET", f"/api/v1/runs/{RUN}/jobs/nope/log", token)[0] == 404

    def finish_later() -> None:
        time.sleep(0.5)
        claim = server.store.claim(RUN, "build", "w1", 10_000)
        server.store.append_logs(RUN, "build", [("stdout", "last line")])
        server.store.finish(RUN, "build", claim.token, "success", exit_code=0)

    threading.Thread(target=finish_later).start()
    request = urllib.request.Request(f"{server.url}/api/v1/runs/{RUN}/jobs/build/log?follow=1")
    request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=20) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        stream = response.read().decode()
    events = [block for block in stream.split("\n\n") if block.strip()]
    lines = [json.loads(e.split("data: ", 1)[1])["text"] for e in events if e.startswith("event: line")]
    assert lines == ["first line", "second line", "last line"]
    assert events[-1].startswith("event: end") and '"status": "success"' in events[-1]


def test_openapi_is_served(server: Server) -> None:
    status, spec, _ = server.request("GET", "/api/openapi.json")
    assert status == 200 and "/api/v1/runs/{run_id}" in spec["paths"]
    assert server.request("GET", "/api/docs")[0] == 200
