"""Attacks on the API's actions and on the CLI going through it.

- scope: a read token cannot approve, cancel, abort or roll back; a trigger token cannot
  approve. Nothing is recorded by a refused request.
- identity: who approved is the token's name, whatever the body says.
- paths: an artifact path that is not a member path (`..`, encoded `..`, absolute, NUL,
  backslash) is refused; a file beside the store is never served.
- run ids: events and logs of a hostile run id are refused before the store is asked.
- size: an oversize comment is refused and nothing stored.
- the token: never in the CLI's output or errors, never sent to where a redirect points.
"""
from __future__ import annotations

import http.client
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from coordinator.api_client import ApiClient, ApiClientError
from coordinator.cli import cli
from deploy.store import deploy_store_for
from tests.api_server import DEPLOY_RUN, RUN, Server, add_deploy_run, publish_artifact

CLEARED = ("CONVEYOR_BROKER_URL", "CONVEYOR_STATE_URL", "CONVEYOR_ARTIFACTS_URL", "CONVEYOR_SERVER_URL",
           "CONVEYOR_TOKEN", "CONVEYOR_CONFIG")


def _raw_get(server: Server, target: str, token: str) -> tuple[int, bytes]:
    """GET with the request target sent exactly as written (no client-side normalising)."""
    parts = urllib.parse.urlsplit(server.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.putrequest("GET", target, skip_accept_encoding=True)
        conn.putheader("Authorization", f"Bearer {token}")
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("method, path", [
    ("POST", f"/api/v1/runs/{DEPLOY_RUN}/approvals/go-live"),
    ("POST", f"/api/v1/runs/{DEPLOY_RUN}/deployments/release/abort"),
    ("POST", f"/api/v1/runs/{DEPLOY_RUN}/deployments/release/rollback"),
    ("POST", f"/api/v1/runs/{DEPLOY_RUN}/cancel"),
])
def test_a_read_token_cannot_act(server: Server, method: str, path: str) -> None:
    add_deploy_run(server)
    read = server.tokens.create("reader", "read")
    status, body, _ = server.request(method, path, read, {"decision": "approve"})
    assert (status, body["error"]["code"]) == (403, "forbidden")
    assert "this needs" in body["error"]["message"]
    deploys = deploy_store_for(server.store)
    assert deploys.gate_answers(DEPLOY_RUN) == {} and deploys.commands(DEPLOY_RUN, "release", 0) == []
    assert server.store.get_run(DEPLOY_RUN).cancel_requested is False


def test_a_trigger_token_cannot_approve_and_no_token_is_401(server: Server) -> None:
    add_deploy_run(server)
    trigger = server.tokens.create("ci-bot", "trigger")
    path = f"/api/v1/runs/{DEPLOY_RUN}/approvals/go-live"
    assert server.request("POST", path, trigger, {"decision": "approve"})[0] == 403
    assert server.request("POST", path, None, {"decision": "approve"})[0] == 401
    assert deploy_store_for(server.store).gate_answers(DEPLOY_RUN) == {}


def test_the_token_name_is_who_approved_whatever_the_body_says(server: Server) -> None:
    add_deploy_run(server)
    token = server.tokens.create("alice", "approve")
    status, answer, _ = server.request("POST", f"/api/v1/runs/{DEPLOY_RUN}/approvals/go-live", token,
                                       {"decision": "approve", "by": "the-cto", "at": "1970-01-01T00:00:00.000Z"})
    assert status == 200 and answer["by"] == "alice" and answer["at"] != "1970-01-01T00:00:00.000Z"
    assert deploy_store_for(server.store).gate_answers(DEPLOY_RUN)["go-live"]["by"] == "alice"
    status, queued, _ = server.request("POST", f"/api/v1/runs/{DEPLOY_RUN}/deployments/release/abort", token,
                                       {"by": "the-cto"})
    assert status == 202 and queued["by"] == "alice"
    assert [c["by"] for c in deploy_store_for(server.store).commands(DEPLOY_RUN, "release", 0)] == ["alice"]


def test_an_oversize_comment_is_refused_and_nothing_stored(server: Server) -> None:
    add_deploy_run(server)
    token = server.tokens.create("alice", "approve")
    path = f"/api/v1/runs/{DEPLOY_RUN}/approvals/go-live"
    status, body, _ = server.request("POST", path, token, {"decision": "approve", "comment": "x" * 1001})
    assert (status, body["error"]["code"]) == (400, "bad_request")
    assert deploy_store_for(server.store).gate_answers(DEPLOY_RUN) == {}
    assert server.request("POST", path, token, {"decision": "approve", "comment": "x" * 1000})[0] == 200


@pytest.mark.parametrize("target", [
    "build/../../secret.txt", "build/%2e%2e/%2e%2e/secret.txt", "build/..%2F..%2Fsecret.txt",
    "build/dist/../../../secret.txt", "build//etc/passwd", "build/%2Fetc%2Fpasswd", "build/README.md%00.txt",
    "build/%00", "build/..%5c..%5csecret.txt", "build/dist%5capp.bin", "build/./README.md", "build/dist//app.bin",
    "..%2F..%2F..%2Fsecret.txt/x", "%2e%2e/README.md",
])
def test_artifact_paths_that_are_no_member_are_refused(server: Server, tmp_path: Path, target: str) -> None:
    publish_artifact(server, RUN, "build", {"README.md": b"fine\n", "dist/app.bin": b"bin"}, tmp_path / "ws")
    secret = b"TOP-SECRET-NOT-AN-ARTIFACT"
    (tmp_path / "secret.txt").write_bytes(secret)
    (server.settings.data_dir / "secret.txt").write_bytes(secret)
    token = server.tokens.create("reader", "read")
    status, body = _raw_get(server, f"/api/v1/runs/{RUN}/artifacts/{target}", token)
    assert status in (400, 404), (target, status, body[:200])
    assert secret not in body and b"Traceback" not in body


@pytest.mark.parametrize("run_id", ["..", "..%2F..%2Fetc", "a%2F..%2Fb", "%2e%2e", "x%00y", ".hidden", "a%5cb", "x%20y"])
def test_events_and_logs_of_hostile_run_ids_never_reach_the_store(server: Server, run_id: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    token = server.tokens.create("reader", "read")
    asked: list[tuple] = []
    for name in ("get_run", "events", "read_logs", "get_jobs"):
        real = getattr(server.store, name)
        monkeypatch.setattr(server.store, name, lambda *a, _real=real, _name=name, **k: (asked.append((_name, a)),
                                                                                          _real(*a, **k))[1])
    for suffix in ("/events", "/jobs/build/log", "/jobs/build/log?follow=1", "/artifacts", "/artifacts/build/x"):
        status, body = _raw_get(server, f"/api/v1/runs/{run_id}{suffix}", token)
        assert status in (400, 404), (run_id, suffix, status)
    assert asked == []


# -- the token and the CLI ---------------------------------------------------------------------


def _cli(url: str, token: str, *args: str, data_dir: Path):
    env: dict[str, str | None] = {name: None for name in CLEARED}
    env.update(CONVEYOR_SERVER_URL=url, CONVEYOR_TOKEN=token, CONVEYOR_DATA_DIR=str(data_dir))
    return CliRunner().invoke(cli, list(args), env=env)


def test_the_token_is_never_in_output_or_errors(server: Server, tmp_path: Path) -> None:
    add_deploy_run(server)
    read = server.tokens.create("reader", "read")
    forged = "cvy_" + "Z" * 43
    runs = [
        _cli(server.url, read, "runs", data_dir=tmp_path),
        _cli(server.url, read, "status", RUN, data_dir=tmp_path),
        _cli(server.url, read, "approve", DEPLOY_RUN, "go-live", data_dir=tmp_path),  # 403
        _cli(server.url, read, "abort", DEPLOY_RUN, "release", data_dir=tmp_path),  # 403
        _cli(server.url, forged, "runs", data_dir=tmp_path),  # 401
        _cli("http://127.0.0.1:9", read, "status", RUN, data_dir=tmp_path),  # unreachable
        _cli(server.url + "/?token=x", read, "runs", data_dir=tmp_path),  # bad URL
        _cli(server.url, read + "\nX-Evil: 1", "runs", data_dir=tmp_path),  # malformed token
    ]
    for result in runs:
        text = result.stdout + result.stderr + (repr(result.exception) if result.exception else "")
        assert read not in text and forged not in text and "X-Evil" not in text, text
        assert "Traceback" not in text
    assert [r.exit_code for r in runs[2:]] == [1, 1, 1, 1, 2, 2]
    client = ApiClient(server.url, read)
    assert read not in repr(client) and read not in str(vars(client).get("url"))
    with pytest.raises(ApiClientError) as refused:
        ApiClient(server.url, read + "\r\n")
    assert read not in str(refused.value) and read not in repr(refused.value)


class _Recorder(BaseHTTPRequestHandler):
    seen: list[str | None] = []
    location = ""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        _Recorder.seen.append(self.headers.get("Authorization"))
        if _Recorder.location:
            self.send_response(302)
            self.send_header("Location", _Recorder.location)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"[]")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    _Recorder.seen, _Recorder.location = [], ""
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_a_redirect_is_not_followed_with_the_token(recorder: str, tmp_path: Path) -> None:
    token = "cvy_" + "R" * 43
    _Recorder.location = recorder.replace("127.0.0.1", "localhost") + "/elsewhere"
    result = _cli(recorder, token, "runs", data_dir=tmp_path)
    assert result.exit_code == 1 and "answered 302" in result.stderr and token not in result.stderr
    assert _Recorder.seen == [f"Bearer {token}"]  # one request: the redirect's target got nothing
