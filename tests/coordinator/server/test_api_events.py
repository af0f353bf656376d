"""A run's job status changes as server-sent events: replayed, followed live until the run
ends, resumed after an event id. Real server over a SQLite store (tests/api_server.py)."""
from __future__ import annotations

import threading
import time
import urllib.parse

import pytest

from tests.api_server import RUN, Server, read_events


def _play(server: Server, delay: float = 0.0) -> None:
    """build succeeds, then test fails: the run ends `failed`."""
    time.sleep(delay)
    claim = server.store.claim(RUN, "build", "w1", 10_000)
    server.store.finish(RUN, "build", claim.token, "success", exit_code=0)
    time.sleep(delay)
    claim = server.store.claim(RUN, "test", "w1", 10_000)
    server.store.finish(RUN, "test", claim.token, "failed", exit_code=1, reason="script_failure")


EXPECTED = [("build", "pending", "running"), ("build", "running", "success"),
            ("test", "pending", "running"), ("test", "running", "failed")]


def _changes(events) -> list[tuple]:
    return [(data["job"], data["from"], data["to"]) for name, data, _ in events if name == "status"]


def test_a_finished_run_replays_its_changes_then_ends(server: Server) -> None:
    _play(server)
    token = server.tokens.create("reader", "read")
    events = read_events(server, f"/api/v1/runs/{RUN}/events", token)
    assert _changes(events) == EXPECTED
    last = events[-2][1]
    assert last["attempt"] == 1 and last["reason"] == "script_failure" and last["at"].endswith("Z")
    assert events[-1][0] == "end" and events[-1][1]["status"] == "failed" and events[-1][1]["finished_at"]
    assert all(event_id for name, _, event_id in events if name == "status")


def test_a_running_run_is_followed_until_it_ends(server: Server) -> None:
    token = server.tokens.create("reader", "read")
    player = threading.Thread(target=_play, args=(server, 0.4))
    player.start()
    started = time.monotonic()
    events = read_events(server, f"/api/v1/runs/{RUN}/events", token)
    player.join()
    assert time.monotonic() - started >= 0.7  # it waited for the changes rather than ending early
    assert _changes(events) == EXPECTED and events[-1][0] == "end"


@pytest.mark.parametrize("how", ["header", "query"])
def test_resuming_after_any_event_id_gives_exactly_the_rest(server: Server, how: str) -> None:
    _play(server)
    token = server.tokens.create("reader", "read")
    events = read_events(server, f"/api/v1/runs/{RUN}/events", token)
    for index, (_, _, event_id) in enumerate(events[:-1]):
        if how == "header":
            rest = read_events(server, f"/api/v1/runs/{RUN}/events", token, {"Last-Event-ID": event_id})
        else:
            rest = read_events(server, f"/api/v1/runs/{RUN}/events?after={urllib.parse.quote(event_id)}", token)
        assert _changes(rest) == EXPECTED[index + 1:], event_id
        assert rest[-1][0] == "end"


@pytest.mark.parametrize("bad", ["abc", "1+0", "-1", "1;DROP", "9" * 30, "9" * 20, "1+99999", "1 2"])
def test_an_event_id_that_is_none_is_400(server: Server, bad: str) -> None:
    token = server.tokens.create("reader", "read")
    status, body, _ = server.request("GET", f"/api/v1/runs/{RUN}/events?after={urllib.parse.quote(bad)}", token)
    assert (status, body["error"]["code"]) == (400, "bad_request")


def test_a_redis_style_id_on_a_sqlite_server_is_400_not_500(server: Server) -> None:
    token = server.tokens.create("reader", "read")
    status, body, _ = server.request("GET", f"/api/v1/runs/{RUN}/events?after=1700000000000-0", token)
    assert status == 400 and body["error"]["code"] == "bad_request"


def test_unknown_run_is_404(server: Server) -> None:
    token = server.tokens.create("reader", "read")
    assert server.request("GET", "/api/v1/runs/20990101-000000-000000/events", token)[0] == 404
