"""The web UI in a real browser: Chromium (Debian's, driven by Playwright) against
`conveyor server` with Redis, a worker, a forge-side git repository, HAProxy and demo-app
instances (docs/web-ui.md).

One pipeline has a matrix, a failing `allow_failure` job, a job printing an HTML/script
payload, a slow job printing a line mid-run, and a canary deployment waiting at an
approval gate. In the page: the graph shows every job's final status (class and glyph)
without a reload, a line printed by the running job appears live, the payload is text (no
dialog ever opens), Approve lets the deployment finish; a read-scope session sees no
buttons and its forged POSTs are refused. Screenshots go to $CONVEYOR_TEST_ARTIFACTS
(default <repo>/test-artifacts/), and the run page's to docs/images/run-page.png.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from coordinator.server.ui import ansi, pages
from coordinator.server.ui.dag_layout import STATUS_GLYPHS
from shared.tokens import open_tokens
from tests.coordinator.server.ci_fixture import ForgeRepo, serving_ci
from tests.deploy.services import CTL, Load
from tests.e2e.test_deployments import Site
from tests.forge_recorder import recording_forge
from tests.services import free_port

pytestmark = [pytest.mark.services, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
PY = sys.executable
MARKER = "halfway-marker"
PAYLOAD = '<script>alert("xss")</script>'


@pytest.fixture
def executor() -> str:
    """Plain shell steps and a deployment: the local executor keeps this test off Docker."""
    return "local"


@pytest.fixture
def site(cluster, tmp_path: Path) -> Iterator[Site]:
    s = Site(cluster, tmp_path)  # HAProxy with web1/web2 and the demo-app state dir
    yield s
    s.close()


def artifacts_dir() -> Path:
    path = Path(os.environ.get("CONVEYOR_TEST_ARTIFACTS") or ROOT / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def pipeline(site: Site) -> str:
    p = site.ports
    return textwrap.dedent(f"""\
        name: web-ui-demo
        environments:
          production:
            router: {{type: haproxy, admin: "{site.haproxy.admin}", backend: web}}
            provider:
              type: command
              start: "{PY} {CTL} start ${{INSTANCE}} ${{VERSION}} ${{PORT}}"
              stop: "{PY} {CTL} stop ${{INSTANCE}}"
              env: {{DEMO_STATE_DIR: "{site.apps}"}}
            instances:
              - {{name: web1, address: "127.0.0.1:{p['web1']}"}}
              - {{name: web2, address: "127.0.0.1:{p['web2']}"}}
            spare: ["127.0.0.1:{p['spare1']}", "127.0.0.1:{p['spare2']}"]
            health_check: {{type: http, path: /healthz, interval: 0.5, timeout: 1,
                            success_threshold: 1, failure_threshold: 2}}
        jobs:
          build:
            matrix:
              PY: ["3.11", "3.12"]
            steps:
              - name: compile
                script:
                  - mkdir -p dist
                  - echo "built for ${{PY}}" > dist/app-${{PY}}.txt
                  - echo "built for ${{PY}}"
            artifacts:
              paths: [dist/]
          payload:
            steps:
              - name: print
                script:
                  - echo '{PAYLOAD}'
                  - echo '<img src=x onerror=alert(2)>'
                  - printf '\\033]8;;javascript:alert(3)\\033\\\\click-me\\033]8;;\\033\\\\\\n'
                  - printf '\\033[32mgreen\\033[0m and \\033[38;5;208morange\\033[0m\\n'
          lint:
            allow_failure: true
            steps:
              - name: style
                script:
                  - echo "checking style"
                  - 'echo "error: line too long (120 > 100)"'
                  - exit 3
          slow:
            steps:
              - name: wait
                script:
                  - echo "slow job started"
                  - sleep 6
                  - echo "{MARKER}"
                  - sleep 8
                  - echo "slow job done"
          release:
            depends_on: [build, slow, payload]
            deploy:
              environment: production
              version: v2
              strategy: canary
              canary:
                steps:
                  - set_weight: 20
                  - approval: {{name: go-live, timeout: 600}}
                analysis: {{interval: 1, min_requests: 5, max_error_rate: 0.05}}
        """)


class _EvilSite:
    """A page on another origin of the same host (127.0.0.1, another port: same-site but
    cross-origin, so a SameSite=Strict cookie IS sent) that POSTs to the server."""

    def __init__(self, target: str) -> None:
        page = textwrap.dedent(f"""\
            <!doctype html><title>evil</title>
            <script>
            fetch("{target}", {{method: "POST", mode: "no-cors", credentials: "include",
                               headers: {{"Content-Type": "text/plain"}}, body: "x"}});
            </script>""").encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _wait_for_gate(ci, run_id: str, cluster, timeout: float = 120) -> None:
    """Until the deployment waits at its gate; a run that ends first fails the test with its logs."""
    deadline = time.monotonic() + timeout
    while True:
        _, view = ci.api("GET", f"/api/v1/runs/{run_id}")
        deployment = view["jobs"]["release"].get("deployment") or {}
        if deployment.get("state") == "waiting_approval":
            return
        if view["status"] != "running" or time.monotonic() > deadline:
            logs = {name: ci.api("GET", f"/api/v1/runs/{run_id}/jobs/{name}/log")[1] for name in view["jobs"]}
            pytest.fail(f"no gate: {view['status']}, deployment {deployment.get('state')}\n"
                        f"{ {n: (j['status'], j['reason']) for n, j in view['jobs'].items()} }\n{logs}\n"
                        + "\n".join(w.log()[-4000:] for w in cluster.workers))
        time.sleep(0.5)


def _login(page, base: str, token: str) -> None:
    page.goto(base + "/")
    assert "/login" in page.url
    page.fill("#token", token)
    page.click("form[action='/login'] button[type=submit]")
    page.wait_for_url(base + "/")


def test_follow_a_run_approve_its_gate_and_stay_safe_in_chromium(cluster, site: Site, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from playwright.sync_api import expect, sync_playwright

    site.start_v1()
    # A name no other test's worker has: a worker starting reaps the step sessions left by
    # "a previous life" of its name (LocalExecutor.reap_orphans), whoever started them.
    cluster.worker(f"webui-{os.getpid()}", concurrency=4)
    repo = ForgeRepo.create(tmp_path / "forge")
    repo.commit({".conveyor.yml": pipeline(site)})
    shots = artifacts_dir()
    with recording_forge() as forge, serving_ci(tmp_path, cluster, forge, repo, monkeypatch) as ci, \
            sync_playwright() as playwright:
        tokens = open_tokens(ci.settings.effective_state_url)
        approver, reader = tokens.create("oncall", "approve"), tokens.create("viewer", "read")
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        evil = None
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            dialogs: list[str] = []
            problems: list[str] = []

            def watch(page) -> None:
                page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
                page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
                page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)

            page = context.new_page()
            watch(page)
            _login(page, ci.url, approver)

            status, body = ci.api("POST", "/api/v1/runs", {"repository": "acme/app", "ref": "main"})
            assert status == 201, body
            run_id = body["run_id"]

            # -- the slow job's log, open before its line is printed: the line arrives live
            log = context.new_page()
            watch(log)
            log.goto(f"{ci.url}/runs/{run_id}/jobs/slow")
            expect(log.locator("#log-info")).to_contain_text("line", timeout=30_000)
            assert MARKER not in log.inner_text("#log"), "the marker was printed before the page opened"
            log.evaluate("window.__sameDocument = true")
            expect(log.locator("#log")).to_contain_text(MARKER, timeout=60_000)
            _, slow_now = ci.api("GET", f"/api/v1/runs/{run_id}")
            assert slow_now["jobs"]["slow"]["status"] == "running"  # it still sleeps after the marker
            assert log.evaluate("window.__sameDocument") is True
            log.close()

            # -- the run page, loaded while the run goes on; never reloaded from here on
            page.goto(f"{ci.url}/runs/{run_id}")
            page.evaluate("window.__sameDocument = true")
            with Load(site.haproxy.url):
                approve = page.locator("button[data-decision='approve']")
                _wait_for_gate(ci, run_id, cluster)
                expect(approve).to_be_visible(timeout=30_000)
                expect(page.locator("svg.dag g.job[data-job='slow']")).to_have_class(
                    re.compile(r"\bstatus-success\b"), timeout=30_000)
                expect(page.locator(".gate")).to_contain_text("go-live")
                approve.click()
                expect(page.locator("#flash")).to_contain_text("Approved", timeout=10_000)
                view = ci.wait_run(run_id, timeout=120)
            assert view["status"] == "success", view
            assert view["jobs"]["release"]["deployment"]["approvals"]["go-live"]["by"] == "oncall"

            expected = {"build[PY=3.11]": "success", "build[PY=3.12]": "success", "payload": "success",
                        "lint": "failed", "slow": "success", "release": "success"}
            assert {name: job["status"] for name, job in view["jobs"].items()} == expected
            expect(page.locator("[data-part='head'] .st .word").first).to_have_text("success", timeout=15_000)
            for name, status in expected.items():
                node = page.locator(f'svg.dag g.job[data-job="{name}"]')
                expect(node).to_have_attribute("data-status", status, timeout=15_000)
                assert f"status-{status}" in node.get_attribute("class").split()
                expect(node.locator(".job-icon")).to_have_text(STATUS_GLYPHS[status])
                expect(node.locator("title")).to_have_text(f"{name} ({status})")
                word = "failed (allowed)" if name == "lint" else status
                expect(page.locator(f'table.jobs tr[data-job="{name}"] .word')).to_have_text(word)
            assert page.evaluate("window.__sameDocument") is True  # all of it live, no reload
            expect(page.locator("table.artifacts")).to_contain_text("dist/app-3.11.txt")
            expect(page.locator("[data-deploy-job='release']")).to_contain_text("approved by oncall")
            page.evaluate("document.getElementById('flash').hidden = true")
            page.screenshot(path=str(shots / "run-page.png"), full_page=True)
            docs_image = ROOT / "docs" / "images" / "run-page.png"
            docs_image.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shots / "run-page.png", docs_image)

            # -- the payload is text, and nothing in the log is markup
            page.goto(f"{ci.url}/runs/{run_id}/jobs/payload")
            expect(page.locator("#log")).to_contain_text(PAYLOAD, timeout=15_000)
            expect(page.locator("#log")).to_contain_text("<img src=x onerror=alert(2)>")
            expect(page.locator("#log")).to_contain_text("click-me")
            assert page.locator("#log script, #log img, #log a:not(.ln), #log svg").count() == 0
            assert page.locator("#log .ansi-fg-2").first.inner_text() == "green"
            orange = page.locator("#log span[data-c]").first
            assert orange.evaluate("e => getComputedStyle(e).color") == "rgb(255, 135, 0)"
            # live lines are coloured by the page's script exactly as the server colours a log
            _, raw = ci.api("GET", f"/api/v1/runs/{run_id}/jobs/payload/log")
            samples = raw.splitlines() + ["\x1b[1;38;2;1;2;3mbold rgb\x1b[22m plain-rgb\x1b[0m \x1b[94mbright",
                                          "progress 10%\rprogress 100%", "\x1b[4:3mcurly\x1b[24m \x1b[48:5:200mbg"]
            for line in samples:
                expected_html = pages._no_inline_style(ansi.ansi_line_to_html(line, ansi.PLAIN)[0])
                assert page.evaluate("l => window.ConveyorUI.ansiLine(l)", line) == expected_html, line

            # -- a failed job's log: jump to the first error; the log view's screenshot
            page.goto(f"{ci.url}/runs/{run_id}/jobs/lint")
            expect(page.locator("#jump-error")).to_be_enabled(timeout=15_000)
            page.click("#jump-error")
            expect(page.locator("#log .row.hl")).to_contain_text("error: line too long")
            assert "#L" in page.url
            page.screenshot(path=str(shots / "log-view.png"))

            # -- at a phone's width
            phone = browser.new_context(viewport={"width": 375, "height": 812}, is_mobile=True)
            small = phone.new_page()
            watch(small)
            _login(small, ci.url, approver)
            small.goto(f"{ci.url}/runs/{run_id}")
            assert small.evaluate("document.documentElement.scrollWidth") <= 375 + 1
            small.screenshot(path=str(shots / "run-page-phone.png"), full_page=True)
            phone.close()

            # -- a read-scope session: no buttons, and its forged POSTs are refused
            readers = browser.new_context(viewport={"width": 1280, "height": 900})
            view_page = readers.new_page()
            watch(view_page)
            _login(view_page, ci.url, reader)
            view_page.goto(f"{ci.url}/runs/{run_id}")
            expect(view_page.locator("svg.dag g.job")).to_have_count(len(expected))
            assert view_page.locator("button[data-post]").count() == 0
            assert view_page.locator("text=Cancel run").count() == 0
            forged = view_page.evaluate("""async (url) => {
                const r = await fetch(url, {method: "POST", credentials: "same-origin"});
                return [r.status, await r.text()];
            }""", f"/api/v1/runs/{run_id}/cancel")
            assert forged[0] == 403 and "CSRF" in forged[1], forged
            csrf = view_page.get_attribute("body", "data-csrf")
            cross = readers.request.post(f"{ci.url}/api/v1/runs/{run_id}/cancel",
                                         headers={"Origin": "https://evil.example", "X-CSRF-Token": csrf})
            assert cross.status == 403 and "another origin" in cross.text()
            # ... and so is one from the approver's session (scope allows it: the origin does not)
            cross = context.request.post(f"{ci.url}/api/v1/runs/{run_id}/cancel",
                                         headers={"Origin": "https://evil.example",
                                                  "X-CSRF-Token": page.get_attribute("body", "data-csrf")})
            assert cross.status == 403 and "another origin" in cross.text()
            readers.close()

            # -- a page of another origin on the same host: the browser sends the cookie, the server refuses
            evil = _EvilSite(f"{ci.url}/api/v1/runs/{run_id}/cancel")
            attacker = context.new_page()
            with attacker.expect_response(lambda r: r.url.endswith("/cancel")) as answer:
                attacker.goto(evil.url)
            assert answer.value.status == 403
            _, after = ci.api("GET", f"/api/v1/runs/{run_id}")
            assert after["cancel_requested"] is False

            assert dialogs == [], dialogs
            assert problems == [], problems
        finally:
            browser.close()
            if evil is not None:
                evil.close()
