"""Attacks on the web UI's sessions (coordinator/server/ui/session.py, docs/web-ui.md).

- the cookie: HttpOnly, SameSite=Strict, Path=/, Secure over https; the session id is
  random, is not the token and is not stored (only its hash is a key);
- fixation: a session id a client makes up is never adopted, and signing in again
  replaces the browser's session;
- CSRF: a cookie-authenticated POST without the CSRF token, with a wrong one, from
  another origin or marked cross-site is refused (403) and changes nothing; a bearer
  request needs no CSRF token; signing in from another site is refused too;
- scope: a read-scope session cannot cancel or approve, and sees no buttons;
- lifetime: a revoked token ends its sessions; signing out ends the session server-side
  (the old cookie replayed is refused); an expired record is not honoured;
- reflection: the login form never shows the submitted token back;
- log lines: `<script>`, `<img onerror>` and OSC 8 `javascript:` links are text.
"""
from __future__ import annotations

import hashlib
import json
import time

import pytest

from coordinator.server.ui import session as ui_session
from deploy.store import deploy_store_for
from tests.api_server import DEPLOY_RUN, RUN, Server, add_deploy_run
from tests.coordinator.server.ui.web_client import Answer, WebClient

COOKIE = ui_session.COOKIE


def sign_in(server: Server, scope: str = "admin", name: str | None = None) -> tuple[WebClient, str]:
    token = server.tokens.create(name or f"web-{scope}", scope)
    client = WebClient(server.url)
    client.login(token)
    return client, token


def cookie_attributes(answer: Answer) -> dict[str, str]:
    raw = next(c for c in answer.set_cookies if c.startswith(COOKIE + "="))
    parts = [p.strip() for p in raw.split(";")]
    attributes = {"value": parts[0].split("=", 1)[1]}
    for part in parts[1:]:
        key, _, value = part.partition("=")
        attributes[key.lower()] = value
    return attributes


def coordination_rows(server: Server) -> list[tuple[str, str]]:
    """Every key and value of the server's coordination table (SQLite here)."""
    return server_coordination(server).file.conn().execute("SELECT key, value FROM server_keys").fetchall()


# -- the cookie ------------------------------------------------------------------------------------


def test_the_session_cookie_is_httponly_strict_and_not_the_token(server: Server) -> None:
    token = server.tokens.create("alice", "read")
    answer = WebClient(server.url).post("/login", form={"token": token, "next": "/"})
    attributes = cookie_attributes(answer)
    assert "httponly" in attributes and attributes["samesite"].lower() == "strict" and attributes["path"] == "/"
    assert "secure" not in attributes  # plain http here
    session_id = attributes["value"]
    assert len(session_id) == 43 and token not in session_id
    assert session_id != hashlib.sha256(token.encode()).hexdigest()
    # The store has the session under the hash of its id, and neither the token nor the id.
    rows = [(k, v) for k, v in coordination_rows(server) if k.startswith(ui_session.KEY_PREFIX)]
    assert len(rows) == 1
    key, value = rows[0]
    assert key == ui_session.KEY_PREFIX + hashlib.sha256(session_id.encode()).hexdigest()
    assert token not in value and session_id not in value
    record = json.loads(value)
    assert record["name"] == "alice" and record["scope"] == "read"
    assert record["token_hash"] == hashlib.sha256(token.encode()).hexdigest() and record["csrf"]


def test_the_cookie_is_secure_behind_https(server: Server) -> None:
    token = server.tokens.create("alice", "read")
    # uvicorn trusts X-Forwarded-Proto from 127.0.0.1: a TLS proxy in front of the server
    answer = WebClient(server.url).post("/login", form={"token": token}, headers={"X-Forwarded-Proto": "https"})
    assert answer.status == 303 and "secure" in cookie_attributes(answer)


def test_a_public_https_url_makes_the_cookie_secure() -> None:
    class Url:
        scheme = "http"

    class Request:
        url = Url()

    assert ui_session.is_secure(Request(), "https://ci.example.com")
    assert not ui_session.is_secure(Request(), "http://ci.example.com")
    assert not ui_session.is_secure(Request(), None)


# -- fixation ----------------------------------------------------------------------------------------


def test_a_session_id_chosen_by_the_client_is_never_adopted(server: Server) -> None:
    planted = "A" * 43
    client = WebClient(server.url, cookies={COOKIE: planted})
    assert client.get("/").status == 303  # not a session
    assert client.get("/api/v1/runs").status == 401
    token = server.tokens.create("victim", "admin")
    answer = client.post("/login", form={"token": token})
    assert cookie_attributes(answer)["value"] != planted
    assert WebClient(server.url, cookies={COOKIE: planted}).get("/").status == 303  # still nothing


def test_signing_in_again_ends_the_browser_s_previous_session(server: Server) -> None:
    client, _ = sign_in(server, "read", "first")
    old = client.cookies[COOKIE]
    client.login(server.tokens.create("second", "read"))
    assert client.cookies[COOKIE] != old
    assert WebClient(server.url, cookies={COOKIE: old}).get("/").status == 303


# -- CSRF ------------------------------------------------------------------------------------------


def _cancel(client: WebClient, headers: dict[str, str] | None = None) -> Answer:
    return client.post(f"/api/v1/runs/{RUN}/cancel", headers=headers or {})


def test_a_cookie_post_without_or_with_a_wrong_csrf_token_is_refused(server: Server) -> None:
    client, _ = sign_in(server)
    csrf = client.csrf()
    for headers in ({}, {"X-CSRF-Token": ""}, {"X-CSRF-Token": csrf[:-1] + ("x" if csrf[-1] != "x" else "y")},
                    {"X-CSRF-Token": csrf + "x"}, {"X-CSRF-Token": "null"}):
        answer = _cancel(client, headers)
        assert answer.status == 403, headers
        assert answer.json()["error"]["code"] == "forbidden" and "CSRF" in answer.json()["error"]["message"]
    assert server.store.get_run(RUN).cancel_requested is False
    assert _cancel(client, {"X-CSRF-Token": csrf}).status == 202
    assert server.store.get_run(RUN).cancel_requested is True


def test_another_session_s_csrf_token_does_not_work(server: Server) -> None:
    alice, _ = sign_in(server, "admin", "alice")
    mallory, _ = sign_in(server, "admin", "mallory")
    assert _cancel(alice, {"X-CSRF-Token": mallory.csrf()}).status == 403
    assert server.store.get_run(RUN).cancel_requested is False


@pytest.mark.parametrize("headers", [
    {"Origin": "https://evil.example"},
    {"Origin": "null"},
    {"Origin": "http://127.0.0.1:1"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
])
def test_a_cookie_post_from_another_site_is_refused_even_with_the_token(server: Server, headers: dict) -> None:
    client, _ = sign_in(server)
    answer = _cancel(client, {"X-CSRF-Token": client.csrf(), **headers})
    assert answer.status == 403 and answer.json()["error"]["code"] == "forbidden"
    assert server.store.get_run(RUN).cancel_requested is False


def test_the_page_s_own_post_passes(server: Server) -> None:
    client, _ = sign_in(server)
    answer = _cancel(client, {"X-CSRF-Token": client.csrf(), "Origin": server.url, "Sec-Fetch-Site": "same-origin"})
    assert answer.status == 202


def test_the_csrf_token_may_come_as_a_form_field(server: Server) -> None:
    client, _ = sign_in(server)
    assert client.post(f"/api/v1/runs/{RUN}/cancel", form={"csrf_token": "wrong"}).status == 403
    assert client.post(f"/api/v1/runs/{RUN}/cancel", form={"csrf_token": client.csrf()}).status == 202


def test_a_bearer_post_needs_no_csrf_token(server: Server) -> None:
    token = server.tokens.create("bot", "trigger")
    bare = WebClient(server.url)
    answer = bare.post(f"/api/v1/runs/{RUN}/cancel", headers={"Authorization": f"Bearer {token}",
                                                              "Origin": "https://elsewhere.example"})
    assert answer.status == 202


def test_a_bad_bearer_header_is_not_rescued_by_a_good_cookie(server: Server) -> None:
    client, _ = sign_in(server)
    assert client.get("/api/v1/runs", headers={"Authorization": "Bearer cvy_wrong"}).status == 401


def test_signing_in_from_another_site_is_refused(server: Server) -> None:
    token = server.tokens.create("victim", "admin")
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        answer = WebClient(server.url).post("/login", form={"token": token}, headers=headers)
        assert answer.status == 403 and not answer.set_cookies
        assert token not in answer.body


# -- scope -------------------------------------------------------------------------------------------


def test_a_read_session_cannot_cancel_or_approve_and_sees_no_buttons(server: Server) -> None:
    add_deploy_run(server)
    deploy_store_for(server.store).create({
        "run_id": DEPLOY_RUN, "job": "release", "state": "waiting_approval", "next_tick_at": 0, "strategy": "canary",
        "stable_version": "v1", "new_version": "v2", "events": [],
        "data": {"gate": {"name": "go-live", "since": int(time.time() * 1000), "deadline": None}}})
    client, _ = sign_in(server, "read")
    page = client.get(f"/runs/{DEPLOY_RUN}").body
    assert "go-live" in page and "data-post=" not in page and "<button type=\"button\"" not in page
    csrf = client.csrf()
    headers = {"X-CSRF-Token": csrf}
    assert client.post(f"/api/v1/runs/{DEPLOY_RUN}/cancel", headers=headers).status == 403
    answer = client.post(f"/api/v1/runs/{DEPLOY_RUN}/approvals/go-live", body={"decision": "approve"}, headers=headers)
    assert answer.status == 403 and "scope is 'read'" in answer.json()["error"]["message"]
    assert client.post(f"/api/v1/runs/{DEPLOY_RUN}/deployments/release/abort", headers=headers).status == 403
    assert deploy_store_for(server.store).gate_answers(DEPLOY_RUN) == {}
    assert server.store.get_run(DEPLOY_RUN).cancel_requested is False


def test_a_trigger_session_cannot_approve(server: Server) -> None:
    add_deploy_run(server)
    client, _ = sign_in(server, "trigger")
    answer = client.post(f"/api/v1/runs/{DEPLOY_RUN}/approvals/go-live", body={"decision": "approve"},
                         headers={"X-CSRF-Token": client.csrf()})
    assert answer.status == 403
    assert deploy_store_for(server.store).gate_answers(DEPLOY_RUN) == {}


# -- lifetime ------------------------------------------------------------------------------------------


def test_a_revoked_token_ends_its_sessions(server: Server) -> None:
    client, _ = sign_in(server, "admin", "leaving")
    assert client.get("/").status == 200
    csrf = client.csrf()
    assert server.tokens.revoke("leaving")
    assert client.get("/").status == 303
    assert client.get("/api/v1/runs").status == 401
    assert _cancel(client, {"X-CSRF-Token": csrf}).status == 401
    assert not [k for k, _ in coordination_rows(server) if k.startswith(ui_session.KEY_PREFIX)]
    # a new token with the same name does not revive the session
    server.tokens.create("leaving", "admin")
    assert client.get("/").status == 303


def test_logout_ends_the_session_server_side(server: Server) -> None:
    client, _ = sign_in(server)
    old = client.cookies[COOKIE]
    csrf = client.csrf()
    answer = client.post("/logout", form={"csrf_token": csrf})
    assert answer.status == 303
    attributes = cookie_attributes(answer)
    assert attributes["value"] in ("", '""') and attributes.get("max-age") == "0"
    replay = WebClient(server.url, cookies={COOKIE: old})
    assert replay.get("/").status == 303
    assert replay.get("/api/v1/runs").status == 401
    assert _cancel(replay, {"X-CSRF-Token": csrf}).status == 401


def test_logout_without_the_csrf_token_is_refused(server: Server) -> None:
    client, _ = sign_in(server)
    assert client.post("/logout", form={}).status == 403
    assert client.post("/logout", form={"csrf_token": client.csrf()}, headers={"Origin": "https://evil.example"}).status == 403
    assert client.get("/").status == 200  # still signed in


def test_an_expired_session_record_is_not_honoured(server: Server) -> None:
    token = server.tokens.create("old", "read")
    coordination = server_coordination(server)
    session_id, session = ui_session.start(coordination, server.tokens, token)
    assert ui_session.load(coordination, server.tokens, session_id) is not None
    record = json.loads(coordination.get(session.key))
    record["created_at"] -= ui_session.TTL_S + 1
    coordination.put(session.key, json.dumps(record), ttl_s=60)
    assert ui_session.load(coordination, server.tokens, session_id) is None
    assert coordination.get(session.key) is None


def server_coordination(server: Server):
    from coordinator.server.coordination import open_coordination

    assert server.settings is not None
    return open_coordination(server.settings.effective_state_url)


@pytest.mark.parametrize("value", ["", "x", "A" * 42, "A" * 44, "../../etc", "A" * 42 + "=", "é" * 43])
def test_malformed_cookies_are_no_session(server: Server, value: str) -> None:
    assert ui_session.load(server_coordination(server), server.tokens, value) is None


# -- reflection and log lines --------------------------------------------------------------------------


def test_the_login_form_never_shows_the_submitted_token(server: Server) -> None:
    for submitted in ("cvy_" + "s3cr3t" * 6, "cvy_\"><script>alert(1)</script>", "not-even-a-token-123456"):
        answer = WebClient(server.url).post("/login", form={"token": submitted, "next": "/"})
        assert answer.status == 401
        assert submitted not in answer.body and "s3cr3t" not in answer.body and "<script>alert" not in answer.body
        assert 'name="token" type="password"' in answer.body and 'value="cvy' not in answer.body


def test_hostile_log_lines_render_as_text(server: Server) -> None:
    server.store.append_logs(RUN, "build", [
        ("stdout", "<script>alert(document.cookie)</script>"),
        ("stdout", '<img src=x onerror="alert(1)">'),
        ("stdout", "\x1b]8;;javascript:alert(1)\x1b\\click me\x1b]8;;\x1b\\ and \x1b]8;;javascript:alert(2)\x07two\x1b]8;;\x07"),
        ("stderr", '\x1b[31m"><svg onload=alert(1)>\x1b[0m'),
        ("stdout", "\x1b]0;title\x07\x1b[2J\x1b[38;2;1;2;3m</span><a href=\"javascript:x\">"),
    ])
    client, _ = sign_in(server, "read")
    data = client.get(f"/ui/runs/{RUN}/jobs/build/lines").json()
    html = "\n".join(data["html"])
    for bad in ("<script", "<img", "<svg", "<a ", "href=\"", "onerror=\"", "javascript:alert(1)\x1b", "\x1b", "\x07"):
        assert bad not in html, bad
    assert data["html"][0] == "&lt;script&gt;alert(document.cookie)&lt;/script&gt;"
    assert data["html"][2] == "click me and two"  # the link's text stays, its URL is gone
    assert "javascript" not in data["html"][2]
    assert data["html"][3] == '<span class="ansi-fg-1">&quot;&gt;&lt;svg onload=alert(1)&gt;</span>'
    # every tag left is a span with a fixed class or a checked colour
    import re

    for tag in re.findall(r"<[^>]*>", html):
        assert re.fullmatch(r'<span(?: class="[a-z0-9 -]+")?(?: data-c="[a-z:#0-9;-]+")?>|</span>', tag), tag
