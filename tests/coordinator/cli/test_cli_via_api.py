"""The CLI through `conveyor server`: with CONVEYOR_SERVER_URL and CONVEYOR_TOKEN set (and no
broker, state or artifact store configured) each command prints what it prints against
the store directly. Both modes run here against the same data: the server's embedded
SQLite store, which direct mode opens through CONVEYOR_DATA_DIR.

Most cases run the CLI in-process (click's CliRunner, with the environment swapped); one
runs the real `python -m coordinator` to show nothing else is needed.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from coordinator.cli import cli
from tests.api_server import DEPLOY_RUN, RUN, Server, add_deploy_run, object_path, publish_artifact

ROOT = Path(__file__).resolve().parents[3]
CLEARED = ("CONVEYOR_BROKER_URL", "CONVEYOR_STATE_URL", "CONVEYOR_ARTIFACTS_URL", "CONVEYOR_RESULT_BACKEND",
           "CONVEYOR_SERVER_URL", "CONVEYOR_TOKEN", "CONVEYOR_CONFIG")


def direct(server: Server, *args: str) -> Result:
    env: dict[str, str | None] = {name: None for name in CLEARED}
    env.update(CONVEYOR_DATA_DIR=str(server.settings.data_dir), USER="dana")
    return CliRunner().invoke(cli, list(args), env=env)


@pytest.fixture
def nowhere(tmp_path: Path) -> Iterator[Path]:
    """The data directory API mode is given: it must never be created (no store is opened)."""
    path = tmp_path / "no-local-state"
    yield path
    assert not path.exists(), "a command through the server opened a local store"


def via_api(server: Server, token: str, nowhere: Path, *args: str) -> Result:
    env: dict[str, str | None] = {name: None for name in CLEARED}
    env.update(CONVEYOR_SERVER_URL=server.url, CONVEYOR_TOKEN=token, CONVEYOR_DATA_DIR=str(nowhere), USER="dana")
    return CliRunner().invoke(cli, list(args), env=env)


def _finish_run(server: Server) -> None:
    server.store.append_logs(RUN, "build", [("stdout", "compiling"), ("stderr", "warning: \x1b[31mred\x1b[0m"),
                                            ("stdout", "done\rDONE")])
    claim = server.store.claim(RUN, "build", "w1", 10_000)
    server.store.finish(RUN, "build", claim.token, "success", exit_code=0)
    claim = server.store.claim(RUN, "test", "w2", 10_000)
    server.store.append_logs(RUN, "test", [("stdout", "1 passed"), ("stderr", "1 failed")])
    server.store.finish(RUN, "test", claim.token, "failed", exit_code=1, reason="script_failure")


@pytest.fixture
def reader(server: Server) -> str:
    return server.tokens.create("reader", "read")


def test_status_json_runs_and_logs_are_the_same_as_direct(server: Server, reader: str, nowhere: Path) -> None:
    _finish_run(server)
    for args in (["status", RUN, "--format", "json"], ["runs"], ["runs", "--format", "json"], ["logs", RUN],
                 ["logs", RUN, "build"], ["logs", RUN, "--format", "json"], ["logs", RUN, "test", "-f"],
                 ["logs", RUN, "-f"]):
        expected, got = direct(server, *args), via_api(server, reader, nowhere, *args)
        assert expected.exit_code == 0, (args, expected.output)
        assert (got.exit_code, got.stdout) == (0, expected.stdout), args
    assert "build | compiling\nbuild ! warning: red\nbuild | DONE\ntest  | 1 passed\ntest  ! 1 failed\n" == \
        via_api(server, reader, nowhere, "logs", RUN).stdout


def test_status_text_is_the_same_through_the_server(server: Server, reader: str, nowhere: Path) -> None:
    _finish_run(server)
    expected, got = direct(server, "status", RUN), via_api(server, reader, nowhere, "status", RUN)
    assert got.exit_code == 0, got.output
    # One renderer from the status JSON: levels, allowed failures and all (durations of a
    # finished run do not move, so the two texts are equal).
    assert got.stdout == expected.stdout
    assert "test   failed   script_failure" in got.stdout


def test_logs_follow_a_running_job_to_its_end(server: Server, reader: str, nowhere: Path) -> None:
    server.store.append_logs(RUN, "build", [("stdout", "before")])
    claim = server.store.claim(RUN, "build", "w1", 10_000)

    def later() -> None:
        time.sleep(0.6)
        server.store.append_logs(RUN, "build", [("stdout", "after"), ("stderr", "last")])
        server.store.finish(RUN, "build", claim.token, "success", exit_code=0)

    threading.Thread(target=later).start()
    started = time.monotonic()
    got = via_api(server, reader, nowhere, "logs", RUN, "build", "-f")
    assert got.exit_code == 0, got.output
    assert got.stdout == "before\nafter\nlast\n" and time.monotonic() - started >= 0.5


def test_logs_follow_every_running_job_until_each_ends(server: Server, reader: str, nowhere: Path) -> None:
    build = server.store.claim(RUN, "build", "w1", 10_000)
    test = server.store.claim(RUN, "test", "w2", 10_000)  # the store does not hold it back for build
    server.store.append_logs(RUN, "test", [("stdout", "t0")])

    def later() -> None:
        time.sleep(0.5)
        server.store.append_logs(RUN, "build", [("stdout", "b1")])
        server.store.finish(RUN, "build", build.token, "success", exit_code=0)
        time.sleep(0.3)
        server.store.append_logs(RUN, "test", [("stderr", "t1")])
        server.store.finish(RUN, "test", test.token, "failed", exit_code=1, reason="script_failure")

    threading.Thread(target=later).start()
    got = via_api(server, reader, nowhere, "logs", RUN, "-f")
    assert got.exit_code == 0, got.output
    assert got.stdout.splitlines()[0] == "test  | t0"
    assert sorted(got.stdout.splitlines()) == ["build | b1", "test  ! t1", "test  | t0"]


def test_logs_without_follow_of_a_running_job_stop_at_what_is_stored(server: Server, reader: str,
                                                                    nowhere: Path) -> None:
    server.store.append_logs(RUN, "build", [("stdout", "one"), ("stderr", "two\nthree")])
    server.store.claim(RUN, "build", "w1", 10_000)
    started = time.monotonic()
    got = via_api(server, reader, nowhere, "logs", RUN)
    assert got.exit_code == 0 and time.monotonic() - started < 5
    assert got.stdout == direct(server, "logs", RUN).stdout == "build | one\nbuild ! two\nbuild ! three\n"


def test_cancel_and_unknown_runs_and_jobs(server: Server, reader: str, nowhere: Path) -> None:
    trigger = server.tokens.create("ci-bot", "trigger")
    server.store.claim(RUN, "build", "w1", 10_000)
    got = via_api(server, trigger, nowhere, "cancel", RUN)
    assert (got.exit_code, got.stdout) == (0, f"run {RUN}: cancel requested; stopping build\n")
    assert server.store.get_run(RUN).cancel_requested
    for args in (["status", "20990101-000000-000000"], ["cancel", "20990101-000000-000000"],
                 ["logs", "20990101-000000-000000"]):
        got, expected = via_api(server, trigger, nowhere, *args), direct(server, *args)
        assert (got.exit_code, got.stderr) == (3, expected.stderr) == (3, "error: unknown run '20990101-000000-000000'\n")
    got = via_api(server, reader, nowhere, "logs", RUN, "nope")
    assert (got.exit_code, got.stderr) == (3, direct(server, "logs", RUN, "nope").stderr)


def test_approve_reject_abort_rollback_as_the_token(server: Server, nowhere: Path) -> None:
    add_deploy_run(server)
    alice = server.tokens.create("alice", "approve")
    got = via_api(server, alice, nowhere, "approve", DEPLOY_RUN, "go-live", "--comment", "ok")
    assert (got.exit_code, got.stdout) == (0, f"gate go-live of run {DEPLOY_RUN}: approved by alice\n")
    expected = direct(server, "reject", DEPLOY_RUN, "pause-3", "--by", "alice")
    assert expected.stdout == f"gate pause-3 of run {DEPLOY_RUN}: rejected by alice\n"
    again, again_direct = (via_api(server, alice, nowhere, "reject", DEPLOY_RUN, "go-live"),
                           direct(server, "reject", DEPLOY_RUN, "go-live"))
    assert (again.exit_code, again.stderr) == (again_direct.exit_code, again_direct.stderr) == \
        (1, again.stderr) and "already approved by alice at" in again.stderr
    unknown = via_api(server, alice, nowhere, "approve", DEPLOY_RUN, "go-lvie")
    assert (unknown.exit_code, unknown.stderr) == (1, direct(server, "approve", DEPLOY_RUN, "go-lvie").stderr)
    assert via_api(server, alice, nowhere, "approve", "20990101-000000-000000", "go-live").exit_code == 3
    got = via_api(server, alice, nowhere, "abort", DEPLOY_RUN, "release")
    assert (got.exit_code, got.stdout) == (0, f"abort of release in run {DEPLOY_RUN} queued: the deployment has "
                                              "not started yet\n")
    for job in ("relaese", "build"):
        got, expected = via_api(server, alice, nowhere, "rollback", DEPLOY_RUN, job), \
            direct(server, "rollback", DEPLOY_RUN, job)
        assert (got.exit_code, got.stderr) == (expected.exit_code, expected.stderr) and got.exit_code == 1
    from deploy.store import deploy_store_for

    assert [c["by"] for c in deploy_store_for(server.store).commands(DEPLOY_RUN, "release", 0)] == ["alice"]
    assert deploy_store_for(server.store).gate_answers(DEPLOY_RUN)["go-live"]["comment"] == "ok"


def test_by_is_a_usage_error_through_the_server(server: Server, nowhere: Path) -> None:
    add_deploy_run(server)
    alice = server.tokens.create("alice", "approve")
    for args in (["approve", DEPLOY_RUN, "go-live", "--by", "mallory"], ["abort", DEPLOY_RUN, "release", "--by", "x"]):
        got = via_api(server, alice, nowhere, *args)
        assert got.exit_code == 2 and "--by cannot be used with CONVEYOR_SERVER_URL" in got.stderr
    from deploy.store import deploy_store_for

    assert deploy_store_for(server.store).gate_answers(DEPLOY_RUN) == {}


def test_401_and_403_say_what_to_do(server: Server, reader: str, nowhere: Path) -> None:
    bad = via_api(server, "cvy_not-a-token", nowhere, "runs")
    assert bad.exit_code == 1 and bad.stderr.startswith("error: the server refused the token") \
        and "check CONVEYOR_TOKEN" in bad.stderr
    weak = via_api(server, reader, nowhere, "cancel", RUN)
    assert weak.exit_code == 1 and "this needs 'trigger'" in weak.stderr and "--scope" in weak.stderr
    missing = CliRunner().invoke(cli, ["runs"], env={**{n: None for n in CLEARED}, "CONVEYOR_SERVER_URL": server.url,
                                                     "CONVEYOR_DATA_DIR": str(nowhere)})
    assert missing.exit_code == 2 and "CONVEYOR_TOKEN is not" in missing.stderr
    down = via_api(Server("http://127.0.0.1:9", server.store, server.tokens), reader, nowhere, "runs")
    assert down.exit_code == 1 and down.stderr.startswith("error: cannot reach the server at http://127.0.0.1:9")


def test_artifacts_ls_and_get_are_the_same_as_direct(server: Server, reader: str, nowhere: Path,
                                                     tmp_path: Path) -> None:
    files = {"dist/app.bin": os.urandom(3 * 1024 * 1024 + 5), "README.md": b"read me\n", "empty": b""}
    publish_artifact(server, RUN, "build", files, tmp_path / "ws")
    for args in (["artifacts", "ls", RUN], ["artifacts", "ls", RUN, "--format", "json"],
                 ["artifacts", "ls", RUN, "--all"]):
        expected, got = direct(server, *args), via_api(server, reader, nowhere, *args)
        assert (got.exit_code, got.stdout) == (0, expected.stdout), args
    got = via_api(server, reader, nowhere, "artifacts", "get", RUN, "build", "-o", str(tmp_path / "out"))
    assert got.exit_code == 0, got.output
    assert "3 file(s)" in got.stdout and "(sha256-verified)" in got.stdout
    for name, data in files.items():
        assert (tmp_path / "out" / name).read_bytes() == data
    missing = via_api(server, reader, nowhere, "artifacts", "get", RUN, "test", "-o", str(tmp_path / "o2"))
    assert (missing.exit_code, missing.stderr) == (1, f"error: job 'test' of run {RUN} has no artifacts\n")


def test_artifacts_get_log_fetches_the_archived_log(server: Server, reader: str, nowhere: Path,
                                                    tmp_path: Path) -> None:
    from shared.artifacts import open_store
    from shared.artifacts.index import ArtifactRecord, open_index
    from shared.artifacts.publish import publish_file

    log = tmp_path / "build.log"
    log.write_text("line 1\nline 2\n")
    now = time.time()
    publish_file(open_store(server.settings.effective_artifacts_url), open_index(server.settings.effective_state_url),
                 log, ArtifactRecord(run_id=RUN, job="build", kind="log", name="build.log", manifest="", size=0,
                                     files=0, pipeline="api-demo", created_at=now, expire_at=None, last_access=now))
    got = via_api(server, reader, nowhere, "artifacts", "get", RUN, "build", "--log", "-o", str(tmp_path / "logs"))
    assert got.exit_code == 0, got.output
    assert (tmp_path / "logs" / "build.log").read_text() == "line 1\nline 2\n"
    expected = direct(server, "artifacts", "ls", RUN, "--all")
    assert via_api(server, reader, nowhere, "artifacts", "ls", RUN, "--all").stdout == expected.stdout
    assert "build.log" in expected.stdout


def test_artifacts_get_of_a_corrupt_object_fails_and_leaves_no_file(server: Server, reader: str, nowhere: Path,
                                                                   tmp_path: Path) -> None:
    big = os.urandom(3 * 1024 * 1024)
    publish_artifact(server, RUN, "build", {"big.bin": big}, tmp_path / "ws")
    target = object_path(server, hashlib.sha256(big).hexdigest())
    os.chmod(target, 0o644)
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    got = via_api(server, reader, nowhere, "artifacts", "get", RUN, "build", "-o", str(tmp_path / "out"))
    assert got.exit_code == 1 and got.stderr.startswith("error: build: the download was cut")
    assert not (tmp_path / "out" / "big.bin").exists()


def test_the_real_cli_needs_only_the_url_and_the_token(server: Server, reader: str, tmp_path: Path) -> None:
    _finish_run(server)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update(CONVEYOR_SERVER_URL=server.url, CONVEYOR_TOKEN=reader, HOME=str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "coordinator", "status", RUN, "--format", "json"], env=env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "failed"
    assert reader not in result.stdout + result.stderr
    assert not (tmp_path / ".local").exists()  # no embedded data directory made


# -- submit ------------------------------------------------------------------------------------


class _Trigger(BaseHTTPRequestHandler):
    """A stand-in for the server's `POST /api/v1/runs` (the real one needs a configured forge)."""

    seen: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Trigger.seen.append({"auth": self.headers["Authorization"], **body})
        if body["repository"] == "acme/broken":
            payload = {"error": {"code": "invalid", "message": "the pipeline is invalid at that commit:\n...",
                                 "diagnostics": [{"file": ".conveyor.yml", "line": 3, "col": 5, "severity": "error",
                                                  "message": "unknown key 'jbos'", "hint": "did you mean 'jobs'?"}]}}
            self._answer(422, payload)
        else:
            self._answer(201, {"run_id": "20261203-160000-abcdef"})

    def _answer(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def trigger_stub() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Trigger)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    _Trigger.seen = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _submit(url: str | None, *args: str, token: str = "cvy_stub-token") -> Result:
    env: dict[str, str | None] = {name: None for name in CLEARED}
    if url:
        env.update(CONVEYOR_SERVER_URL=url, CONVEYOR_TOKEN=token)
    return CliRunner().invoke(cli, ["submit", *args], env=env)


def test_submit_through_the_server_by_repository_and_ref(trigger_stub: str) -> None:
    got = _submit(trigger_stub, "--repository", "acme/app", "--ref", "main", "--var", "TARGET=prod")
    assert (got.exit_code, got.stdout) == (0, "20261203-160000-abcdef\n")
    assert _Trigger.seen == [{"auth": "Bearer cvy_stub-token", "repository": "acme/app", "ref": "main",
                              "vars": {"TARGET": "prod"}}]
    invalid = _submit(trigger_stub, "--repository", "acme/broken")
    assert invalid.exit_code == 2
    assert invalid.stderr == ".conveyor.yml:3:5: error: unknown key 'jbos' (did you mean 'jobs'?)\n"


def test_submit_usage_errors_between_the_two_modes(trigger_stub: str, tmp_path: Path) -> None:
    pipeline = tmp_path / "p.yml"
    pipeline.write_text("name: x\njobs: {a: {steps: [{name: s, script: [x]}]}}\n")
    with_file = _submit(trigger_stub, str(pipeline))
    assert with_file.exit_code == 2 and "use --repository NAME" in with_file.stderr
    assert _submit(trigger_stub).exit_code == 2
    no_server = _submit(None, "--repository", "acme/app")
    assert no_server.exit_code == 2 and "set CONVEYOR_SERVER_URL" in no_server.stderr
    assert _Trigger.seen == []


# -- a followed stream that drops -----------------------------------------------------------


class _Flaky(BaseHTTPRequestHandler):
    """A server whose followed log drops once (its second stream), then serves it whole."""

    streams = 0

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path == f"/api/v1/runs/{RUN}":
            return self._send(json.dumps({"run_id": RUN, "jobs": {"build": {"status": "running"}}}).encode())
        if self.path == f"/api/v1/runs/{RUN}/jobs/build/log":
            return self._send(b"a\n")
        _Flaky.streams += 1
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()  # no length: the stream ends when the connection closes
        line = 'event: line\ndata: {"stream": "stdout", "text": "%s", "at": "t"}\n\n'
        self.wfile.write((line % "a").encode())
        if _Flaky.streams > 2:
            self.wfile.write((line % "b" + 'event: end\ndata: {"status": "success", "reason": null}\n\n').encode())

    def _send(self, data: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def test_a_dropped_log_stream_is_reopened_without_repeating_lines(nowhere: Path) -> None:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    _Flaky.streams = 0
    try:
        env: dict[str, str | None] = {name: None for name in CLEARED}
        env.update(CONVEYOR_SERVER_URL=f"http://127.0.0.1:{httpd.server_address[1]}", CONVEYOR_TOKEN="cvy_x",
                   CONVEYOR_DATA_DIR=str(nowhere))
        got = CliRunner().invoke(cli, ["logs", RUN, "build", "-f"], env=env)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert got.exit_code == 0, got.output
    assert got.stdout == "a\nb\n" and _Flaky.streams == 3  # stored lines, the dropped follow, its reopening
