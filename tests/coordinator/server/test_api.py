"""The server's API over HTTP: a real uvicorn on a free port, a real (SQLite) state store,
tokens made by the token store, requests with urllib as any client would send them.
Attacks on authentication and run ids: tests/security/test_api_auth.py."""
from __future__ import annotations

import json
import threading
import time
import urllib.request

from tests.api_server import RUN, Server

def test_health_needs_no_token(server: Server) -> None:
    assert server.request("GET", "/healthz")[0] == 200
    assert server.request("GET", "/readyz")[:2] == (200, {"status": "ready"})


def test_runs_list_and_run_status(server: Server) -> None:
    token = server.tokens.create("reader", "read")
    status, runs, _ = server.request("GET", "/api/v1/runs?branch=main&repository=acme/app", token)
    assert status == 200 and [r["run_id"] for r in runs] == [RUN]
    assert runs[0]["trigger"]["repository"] == "acme/app"
    assert server.request("GET", "/api/v1/runs?branch=dev", token)[1] == []
    status, run, _ = server.request("GET", f"/api/v1/runs/{RUN}", token)
    assert status == 200 and run["pipeline"] == "api-demo" and list(run["jobs"]) == ["build", "test"]
    assert run["trigger"]["event"] == "push"


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
