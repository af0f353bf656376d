"""The web UI's pages over a real server (tests/api_server.py: SQLite, no services): sign-in
and redirects, the security headers, what each page shows, the buttons each scope gets,
and untrusted text (job names, log lines) rendered as text. The browser tests are
tests/e2e/test_web_ui.py; the attacks on sessions tests/security/test_ui_session.py."""
from __future__ import annotations

import re
import textwrap
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from coordinator.frontend import load_text
from coordinator.server.ui import pages
from deploy.store import deploy_store_for
from shared.state import JobMeta
from tests.api_server import DEPLOY_RUN, RUN, Server, add_deploy_run, add_run, publish_artifact
from tests.coordinator.server.ui.web_client import WebClient


def signed_in(server: Server, scope: str = "read", name: str | None = None) -> WebClient:
    client = WebClient(server.url)
    client.login(server.tokens.create(name or f"user-{scope}", scope))
    return client


def waiting_gate(server: Server) -> None:
    """The deploy run's `release` waiting at gate go-live, with weights and an analysis."""
    add_deploy_run(server)
    now_ms = int(time.time() * 1000)
    deploy_store_for(server.store).create({
        "run_id": DEPLOY_RUN, "job": "release", "state": "waiting_approval", "next_tick_at": 0,
        "strategy": "canary", "stable_version": "v1", "new_version": "v2",
        "events": [{"at": "2026-12-03T15:00:01.000Z", "type": "analysis", "verdict": "pass", "requests": 42,
                    "error_rate": 0.0, "latency_ms": 12.0}],
        "data": {"gate": {"name": "go-live", "since": now_ms, "deadline": None}},
        "slots": {"web1": {"router": "ready", "weight": 90}, "canary": {"router": "ready", "weight": 10}},
        "config": {"environment": "prod"},
    })


# -- sign-in and redirects ---------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", f"/runs/{RUN}", f"/runs/{RUN}/jobs/build", "/?status=failed"])
def test_pages_send_a_signed_out_browser_to_the_login_form(server: Server, path: str) -> None:
    answer = WebClient(server.url).get(path)
    assert answer.status == 303
    assert answer.header("Location") == "/login?next=" + quote(path, safe="")
    form = WebClient(server.url).get(answer.header("Location"))
    assert form.status == 200 and '<form method="post" action="/login"' in form.body
    assert f'name="next" value="{path.replace("?", "?")}"' in form.body.replace("&amp;", "&")


def test_fragments_and_the_api_answer_401_not_a_redirect(server: Server) -> None:
    client = WebClient(server.url)
    assert client.get("/ui/runs").status == 401
    assert client.get(f"/ui/runs/{RUN}/panels").status == 401
    assert client.get(f"/ui/runs/{RUN}/jobs/build/lines").status == 401
    api = client.get("/api/v1/runs")
    assert api.status == 401 and api.json()["error"]["code"] == "unauthorized"


def test_login_then_logout(server: Server) -> None:
    token = server.tokens.create("alice", "read")
    client = WebClient(server.url)
    answer = client.post("/login", form={"token": token, "next": f"/runs/{RUN}"})
    assert answer.status == 303 and answer.header("Location") == f"/runs/{RUN}"
    page = client.get(f"/runs/{RUN}")
    assert page.status == 200 and "alice" in page.body and ">read<" in page.body
    assert client.get("/login").status == 303  # signed in already: on to the runs
    csrf = client.csrf()
    out = client.post("/logout", form={"csrf_token": csrf})
    assert out.status == 303 and out.header("Location") == "/login"
    assert client.get("/").status == 303


def test_a_wrong_token_is_refused_with_the_form_again(server: Server) -> None:
    answer = WebClient(server.url).post("/login", form={"token": "cvy_nope", "next": "/"})
    assert answer.status == 401 and "not accepted" in answer.body
    assert not answer.set_cookies


@pytest.mark.parametrize("target, expected", [
    (f"/runs/{RUN}", f"/runs/{RUN}"), ("//evil.example/x", "/"), ("https://evil.example/", "/"),
    ("/\\evil.example", "/"), ("javascript:alert(1)", "/"), ("/login", "/"), ("", "/"),
])
def test_after_login_only_a_local_path_is_followed(server: Server, target: str, expected: str) -> None:
    client = WebClient(server.url)
    answer = client.login(server.tokens.create(f"u{abs(hash(target)) % 10**8}", "read"), next_path=target)
    assert answer.header("Location") == expected


# -- headers and assets ------------------------------------------------------------------------


def test_every_answer_carries_the_security_headers(server: Server) -> None:
    client = signed_in(server)
    assert WebClient(server.url).get("/login").header("Content-Security-Policy") == pages.CSP
    for path in ["/", f"/runs/{RUN}", f"/runs/{RUN}/jobs/build", f"/ui/runs/{RUN}/panels",
                 "/api/v1/runs", pages.asset_url("app.js")]:
        answer = client.get(path)
        assert answer.status == 200, path
        csp = answer.header("Content-Security-Policy") or ""
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "style-src 'self'" in csp, path
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp and "frame-ancestors 'none'" in csp
        assert answer.header("X-Content-Type-Options") == "nosniff", path
        assert answer.header("Referrer-Policy") == "same-origin", path
        assert answer.header("X-Frame-Options") == "DENY", path
    assert client.get("/").header("Cache-Control") == "no-store"


_INLINE = [re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*type=\"application/json\")", re.I),
           re.compile(r"\sstyle=", re.I), re.compile(r"\son[a-z]+=", re.I), re.compile(r"<style", re.I),
           re.compile(r"https?://(?!127\.0\.0\.1|www\.w3\.org/2000/svg)", re.I)]


def test_pages_have_no_inline_script_style_or_external_url(server: Server) -> None:
    waiting_gate(server)
    client = signed_in(server, "admin")
    for path in ["/login", "/", f"/runs/{RUN}", f"/runs/{DEPLOY_RUN}", f"/runs/{RUN}/jobs/build",
                 f"/ui/runs/{DEPLOY_RUN}/panels", "/ui/runs"]:
        body = client.get(path).body
        for pattern in _INLINE:
            assert not pattern.search(body), (path, pattern.pattern, pattern.search(body))


def test_assets_are_versioned_by_content_and_cached_for_a_year(server: Server) -> None:
    client = signed_in(server)
    page = client.get("/").body
    for name, media in [("app.js", "text/javascript"), ("app.css", "text/css"), ("icon.svg", "image/svg+xml")]:
        url = f"/ui/static/{pages.ASSET_VERSION}/{name}"
        assert url in page
        answer = WebClient(server.url).get(url)  # no session needed: nothing secret in them
        assert answer.status == 200 and answer.header("Content-Type").startswith(media)
        assert answer.header("Cache-Control") == "public, max-age=31536000, immutable"
    assert WebClient(server.url).get("/ui/static/0ld/app.js").header("Cache-Control") == "no-cache"
    assert WebClient(server.url).get(f"/ui/static/{pages.ASSET_VERSION}/../pages.py").status == 404
    assert WebClient(server.url).get(f"/ui/static/{pages.ASSET_VERSION}/pages.py").status == 404


# -- runs list -----------------------------------------------------------------------------------


def _add_triggered_run(server: Server, run_id: str, branch: str, repository: str = "acme/app") -> None:
    result = load_text(textwrap.dedent("""
        name: other
        jobs:
          only: {steps: [{name: s, script: [x]}]}
    """), "p.yml", parameters={}, run_id=run_id)
    server.store.create_run(run_id, result.plan.pipeline, {n: JobMeta() for n in result.plan.jobs},
                            result.plan.to_dict(),
                            {"trigger": {"event": "push", "repository": repository, "branch": branch,
                                         "sha": "0123456789abcdef0123456789abcdef01234567", "actor": "octocat"}})


def test_runs_list_is_newest_first_with_trigger_and_filters(server: Server) -> None:
    time.sleep(0.01)
    _add_triggered_run(server, "20261203-141000-beef01", "feature/x", "acme/other")
    client = signed_in(server)
    body = client.get("/").body
    assert body.index("20261203-141000-beef01") < body.index(RUN)
    assert ">0123456</span>" in body  # the short sha (the full one in its title)
    assert "octocat" in body and "feature/x" in body and "running" in body
    filtered = client.get("/?repository=acme%2Fother").body
    assert "20261203-141000-beef01" in filtered and RUN not in filtered
    by_branch = client.get("/?branch=main").body
    assert RUN in by_branch and "20261203-141000-beef01" not in by_branch
    none = client.get("/?status=success").body
    assert RUN not in none and "No runs match" in none
    rows = client.get("/ui/runs?branch=main")
    assert rows.status == 200 and RUN in rows.body and "<html" not in rows.body
    assert 'data-rows-url="/ui/runs?branch=main"' in by_branch
    # a status outside the list of run statuses is ignored, not reflected
    assert "<b>" not in client.get("/?status=%3Cb%3E").body


# -- a run ---------------------------------------------------------------------------------------


def test_run_page_shows_the_graph_jobs_trigger_and_artifacts(server: Server, tmp_path: Path) -> None:
    claim = server.store.claim(RUN, "build", "w1", 10_000)
    server.store.finish(RUN, "build", claim.token, "success", exit_code=0)
    publish_artifact(server, RUN, "build", {"dist/app.tar.gz": b"x" * 3000}, tmp_path / "art")
    client = signed_in(server)
    body = client.get(f"/runs/{RUN}").body
    for job, status in (("build", "success"), ("test", "pending")):
        assert re.search(rf'<g class="job status-{status}[^"]*" data-job="{job}"', body), job
        assert re.search(rf'<tr data-job="{job}">.*?<span class="word">{status}</span>', body, re.S), job
        assert f'href="/runs/{RUN}/jobs/{job}"' in body
    assert "✓" in body and "○" in body  # the glyphs with the words
    assert "push" in body and "acme/app" in body and "main" in body
    assert f'href="/api/v1/runs/{RUN}/artifacts/build/dist/app.tar.gz"' in body and "2.9 KiB" in body
    import hashlib

    assert hashlib.sha256(b"x" * 3000).hexdigest() in body
    # the cookie authenticates the download link
    download = client.get(f"/api/v1/runs/{RUN}/artifacts/build/dist/app.tar.gz")
    assert download.status == 200 and download.body == "x" * 3000
    assert f'data-events-url="/api/v1/runs/{RUN}/events"' in body
    panels = client.get(f"/ui/runs/{RUN}/panels")
    assert panels.status == 200 and 'data-part="head"' in panels.body and 'data-part="details"' in panels.body


def _buttons(body: str) -> set[str]:
    return set(re.findall(r"<button[^>]*data-post=\"[^\"]*\"[^>]*>([^<]+)</button>", body))


@pytest.mark.parametrize("scope, expected", [
    ("read", set()),
    ("trigger", {"Cancel run"}),
    ("approve", {"Cancel run", "Approve", "Reject", "Abort", "Rollback"}),
    ("admin", {"Cancel run", "Approve", "Reject", "Abort", "Rollback"}),
])
def test_buttons_follow_the_session_scope(server: Server, scope: str, expected: set[str]) -> None:
    waiting_gate(server)
    client = signed_in(server, scope)
    body = client.get(f"/runs/{DEPLOY_RUN}").body
    assert _buttons(body) == expected
    assert "go-live" in body and "v1 → v2" in body and "42 requests" in body and "0.0% errors" in body
    assert re.search(r'<meter min="0" max="100" value="90">', body)
    if scope == "read":
        assert "Someone with the approve scope can answer it" in body


def test_a_finished_run_offers_no_cancel(server: Server) -> None:
    for job in ("build", "test"):
        claim = server.store.claim(RUN, job, "w1", 10_000)
        server.store.finish(RUN, job, claim.token, "success", exit_code=0)
    body = signed_in(server, "admin").get(f"/runs/{RUN}").body
    assert "Cancel run" not in body and "success" in body


def test_approve_from_the_page_is_recorded_under_the_session_s_token_name(server: Server) -> None:
    waiting_gate(server)
    client = signed_in(server, "approve", name="oncall")
    csrf = client.csrf(f"/runs/{DEPLOY_RUN}")
    answer = client.post(f"/api/v1/runs/{DEPLOY_RUN}/approvals/go-live", body={"decision": "approve", "by": "x"},
                         headers={"X-CSRF-Token": csrf, "Origin": server.url, "Sec-Fetch-Site": "same-origin"})
    assert answer.status == 200, answer.body
    assert answer.json()["by"] == "oncall"
    assert deploy_store_for(server.store).gate_answers(DEPLOY_RUN)["go-live"]["by"] == "oncall"


HOSTILE = """
name: hostile
jobs:
  build:
    matrix: {V: ["<img src=x onerror=alert(1)>", "a\\"b'c&d"]}
    steps: [{name: s, script: [x]}]
  test: {depends_on: [build], steps: [{name: s, script: [x]}]}
"""


def test_hostile_job_names_are_rendered_as_text(server: Server) -> None:
    run_id = add_run(server, "20261203-160000-aaaaaa", HOSTILE)
    name = "build[V=<img src=x onerror=alert(1)>]"
    client = signed_in(server, "admin")
    for path in (f"/runs/{run_id}", f"/ui/runs/{run_id}/panels", f"/runs/{run_id}/jobs/{quote(name, safe='')}"):
        answer = client.get(path)
        assert answer.status == 200, path
        assert "<img src=x" not in answer.body
        assert "<script" not in answer.body.replace('<script src="/ui/', "").replace('<script type="application/json"', "")
        assert "&lt;img src=x onerror=alert(1)&gt;" in answer.body, path
        if "/jobs/" not in path:  # the other matrix job, with quotes and an ampersand
            assert 'a"b' not in answer.body and ("a&#34;b" in answer.body or "a&quot;b" in answer.body)
            assert "c&amp;d" in answer.body
    body = client.get(f"/runs/{run_id}").body
    assert f'href="/runs/{run_id}/jobs/{quote(name, safe="")}"' in body


def test_unknown_runs_and_jobs_are_404_pages(server: Server) -> None:
    client = signed_in(server)
    for path in ("/runs/20990101-000000-000000", "/runs/a..b", f"/runs/{RUN}/jobs/nope",
                 "/runs/20990101-000000-000000/jobs/build"):
        answer = client.get(path)
        assert answer.status == 404 and "<h1>Not found</h1>" in answer.body, path
    assert client.get("/ui/runs/20990101-000000-000000/panels").status == 404
    assert client.get(f"/ui/runs/{RUN}/jobs/nope/lines").status == 404


# -- the log view --------------------------------------------------------------------------------


def test_log_page_links_the_download_and_the_live_stream(server: Server) -> None:
    body = signed_in(server).get(f"/runs/{RUN}/jobs/build").body
    assert f'data-lines-url="/ui/runs/{RUN}/jobs/build/lines"' in body
    assert f'data-follow-url="/api/v1/runs/{RUN}/jobs/build/log?follow=1"' in body
    assert f'href="/api/v1/runs/{RUN}/jobs/build/log" download="build.log"' in body
    assert 'data-terminal="false"' in body and "Jump to first error" in body


def test_log_lines_are_escaped_html_with_streams_and_the_first_error(server: Server) -> None:
    server.store.append_logs(RUN, "build", [
        ("system", "attempt 1 on w1 (local executor)"),
        ("system", "step 1/2: compile"),
        ("stdout", "compiling \x1b[32mok\x1b[0m"),
        ("system", "step 2/2: test"),
        ("stdout", "<script>alert(1)</script>"),
        ("stderr", "\x1b[38;5;208mtruecolor\x1b[0m and <b>bold</b>"),
        ("system", "step test failed: script_failure (exit code 1)"),
    ])
    client = signed_in(server)
    data = client.get(f"/ui/runs/{RUN}/jobs/build/lines").json()
    assert data["count"] == 7 and data["streams"] == "ssosoes" and data["more"] is False
    assert data["first_error"] == 4  # the first line of the failed step `test`
    assert data["html"][2] == 'compiling <span class="ansi-fg-2">ok</span>'
    assert data["html"][4] == "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert data["html"][5] == '<span data-c="color:#ff8700">truecolor</span> and &lt;b&gt;bold&lt;/b&gt;'
    assert not any(" style=" in line for line in data["html"])
    assert data["status"] == "pending" and data["terminal"] is False
    first = client.get(f"/ui/runs/{RUN}/jobs/build/lines?limit=3").json()
    assert first["count"] == 3 and first["more"] is True and first["html"] == data["html"][:3]


@pytest.mark.parametrize("lines, expected", [
    ([("stdout", "all good"), ("stdout", "0 problems")], None),
    ([("stdout", "fine"), ("stderr", "Error: boom"), ("stdout", "error again")], 1),
    ([("stdout", "a"), ("stdout", "E   assert 1 == 2"), ("stdout", "FAILED x")], 1),
    ([("stdout", "\x1b[31mfatal\x1b[0m: not a repo")], 0),
    ([("stdout", "error-free build"), ("stdout", "no_errors_here"), ("stdout", "Traceback (most recent call last):")], 2),
    # a failed step wins over an earlier error word, and points at that step's first line
    ([("stdout", "warning: error-prone"), ("stdout", "error: in step one but it passed"),
      ("system", "step 1/2: one"), ("stdout", "x"), ("system", "step 2/2: two"), ("stdout", "y"),
      ("system", "step two failed: script_failure (exit code 2)")], 5),
    # ... or at its first error line, if it has one (echoed commands are not output)
    ([("system", "step 1/2: one"), ("stdout", "Error in one, which passed"), ("system", "step 2/2: two"),
      ("stdout", "$ make -W error"), ("stdout", "building"), ("stderr", "make: *** [all] Error 2"),
      ("stderr", "fatal: later"), ("system", "step two failed: script_failure (exit code 2)")], 5),
    # a step that failed without output: its failure line
    ([("system", "step 1/1: quiet"), ("system", "step quiet failed: timeout (exit code None)")], 1),
    # failed outside the steps: the worker's own message
    ([("system", "attempt 1 on w1 (local executor)"), ("system", "infrastructure error: disk full")], 1),
])
def test_first_error_rule(lines: list[tuple[str, str]], expected: int | None) -> None:
    assert pages.first_error(lines) == expected


def test_a_100000_line_log_is_one_json_document(server: Server) -> None:
    server.store.append_logs(RUN, "build", [("stdout", f"line {i}") for i in range(100_000)])
    started = time.monotonic()
    data = signed_in(server).get(f"/ui/runs/{RUN}/jobs/build/lines").json()
    took = time.monotonic() - started
    assert data["count"] == 100_000 and data["html"][99_999] == "line 99999"
    assert took < 15, took  # a generous bound for a busy CI machine (about 1 s here)
