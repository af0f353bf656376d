"""Attacks on `conveyor server`'s API: no token, a forged, malformed, revoked or too-weak
token, and hostile run ids. Every refusal happens before a store is asked for run data."""
from __future__ import annotations

import hashlib

import pytest

from tests.api_server import RUN, Server


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


def test_the_stored_hash_is_not_a_token(server: Server) -> None:
    token = server.tokens.create("reader", "read")
    stored = hashlib.sha256(token.encode()).hexdigest()
    for forged in (stored, "cvy_" + stored, token + "x", token[:-1], "cvy_" + "A" * 5000):
        assert server.request("GET", "/api/v1/runs", forged)[0] == 401


@pytest.mark.parametrize("run_id", ["20990101-000000-000000", "..%2F..%2Fetc", "a..b"])
def test_unknown_or_hostile_run_ids_are_404(server: Server, run_id: str) -> None:
    token = server.tokens.create("reader", "read")
    status, body, _ = server.request("GET", f"/api/v1/runs/{run_id}", token)
    assert status == 404 and body["error"]["code"] == "not_found"
