"""The status sender against a local recording forge: retries, give-ups, order, supersession, never blocking."""
from __future__ import annotations

import random
import threading
import time
from functools import partial
from typing import Any, Callable, Iterator

import pytest

from coordinator.forge_status import StatusRequest, build_request, next_delay
from coordinator.status_sender import StatusSender
from tests.forge_recorder import RecordingForge, recording_forge
from tests.services import free_port

SHA = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "ghp_thisIsTheSecretToken0123456789"
FAST = partial(next_delay, base=0.001, cap=0.005)  # the real policy's decisions, in milliseconds
SLOW_RETRY = partial(next_delay, base=30.0, cap=30.0)  # a retry that never comes within a test
EVENT_KEYS = {"at", "attempt", "state", "context", "url", "outcome", "http_status", "error", "retry_in"}


class Events:
    """An on_attempt callback that keeps every event and can wait for one."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self._cond = threading.Condition()

    def __call__(self, event: dict[str, Any]) -> None:
        with self._cond:
            self.items.append(event)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.items):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def outcomes(self) -> list[tuple[str, str, int | None]]:
        return [(e["state"], e["outcome"], e["http_status"]) for e in self.items]


def status(forge_url: str, state: str = "success", *, sha: str = SHA, context: str = "conveyor/build",
           forge: str = "github") -> StatusRequest:
    return build_request(forge, forge_url, "acme/app", sha, state, context, f"run is {state}",
                         "https://ci.example.com/runs/r-1", TOKEN)


@pytest.fixture
def forge() -> Iterator[RecordingForge]:
    with recording_forge() as f:
        yield f


@pytest.fixture
def sender() -> Iterator[StatusSender]:
    s = StatusSender(delay=FAST, timeout=2.0)
    yield s
    s.close(timeout=2.0)


def test_sent_once_on_201(forge: RecordingForge, sender: StatusSender) -> None:
    events = Events()
    req = status(forge.url)
    sender.submit(req, events)
    assert sender.wait_idle(5)
    [call] = forge.calls
    assert (call.method, call.path) == ("POST", f"/repos/acme/app/statuses/{SHA}")
    assert call.body == req.body
    assert call.header("Authorization") == f"Bearer {TOKEN}"
    [event] = events.items
    assert set(event) == EVENT_KEYS
    assert (event["attempt"], event["outcome"], event["http_status"], event["error"]) == (1, "sent", 201, None)
    assert (event["state"], event["context"], event["url"]) == ("success", "conveyor/build", req.url)


def test_the_event_time_comes_from_the_injected_clock(forge: RecordingForge) -> None:
    events = Events()
    with StatusSender(delay=FAST, clock=lambda: 1714564800.123) as sender:
        sender.submit(status(forge.url), events)
        assert sender.wait_idle(5)
    assert events.items[0]["at"] == "2024-05-01T12:00:00.123Z"


def test_retried_after_502s_then_sent(forge: RecordingForge, sender: StatusSender) -> None:
    forge.fail_next(2, 502)
    events = Events()
    sender.submit(status(forge.url), events)
    assert sender.wait_idle(5)
    assert [c.status for c in forge.calls] == [502, 502, 201]
    assert len({c.raw for c in forge.calls}) == 1  # the same request each time
    assert [(e["attempt"], e["outcome"], e["http_status"]) for e in events.items] == [
        (1, "retrying", 502), (2, "retrying", 502), (3, "sent", 201)]
    assert events.items[0]["retry_in"] == 0.001 and events.items[1]["retry_in"] == 0.002
    assert "502" in events.items[0]["error"]


def test_429_is_retried(forge: RecordingForge, sender: StatusSender) -> None:
    forge.fail_next(1, 429)
    events = Events()
    sender.submit(status(forge.url), events)
    assert sender.wait_idle(5)
    assert [e["outcome"] for e in events.items] == ["retrying", "sent"]


@pytest.mark.parametrize("code", [404, 422, 401])
def test_gives_up_on_a_4xx_without_retrying(forge: RecordingForge, sender: StatusSender, code: int) -> None:
    forge.fail_next(1, code, body=b'{"message": "Not Found"}')
    events = Events()
    sender.submit(status(forge.url), events)
    assert sender.wait_idle(5)
    assert len(forge.calls) == 1
    [event] = events.items
    assert (event["outcome"], event["http_status"], event["attempt"]) == ("gave_up", code, 1)
    assert str(code) in event["error"] and "Not Found" in event["error"]  # the forge's reason is kept


def test_gives_up_after_the_last_attempt_of_5xx(forge: RecordingForge, sender: StatusSender) -> None:
    forge.fail_next(10, 503)
    events = Events()
    sender.submit(status(forge.url), events)
    assert sender.wait_idle(5)
    assert len(forge.calls) == 6
    assert [e["outcome"] for e in events.items] == ["retrying"] * 5 + ["gave_up"]
    assert [e["attempt"] for e in events.items] == [1, 2, 3, 4, 5, 6]


def test_a_forge_that_is_down_does_not_block_submit_and_is_given_up(sender: StatusSender) -> None:
    events = Events()
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    started = time.monotonic()
    sender.submit(status(down), events)
    took = time.monotonic() - started
    assert events.wait_for(lambda items: items and items[-1]["outcome"] == "gave_up")
    assert took < 0.5  # sanity only; the stalled-forge test below shows submit does not wait for I/O
    assert [e["outcome"] for e in events.items] == ["retrying"] * 5 + ["gave_up"]
    assert all(e["http_status"] is None for e in events.items)
    assert "Connection" in events.items[-1]["error"] and "refused" in events.items[-1]["error"].lower()


def test_submit_returns_while_the_forge_still_holds_the_request(forge: RecordingForge, sender: StatusSender) -> None:
    forge.stall_next(1)
    events = Events()
    started = time.monotonic()
    sender.submit(status(forge.url), events)
    took = time.monotonic() - started
    assert forge.wait_for(lambda calls: len(calls) == 1)
    assert events.items == []  # the attempt is still on the wire, yet submit has returned
    assert took < 0.05
    forge.release()
    assert events.wait_for(lambda items: len(items) == 1)
    assert events.items[0]["outcome"] == "sent"


def test_a_forge_stopped_then_started_again_gets_the_status(forge: RecordingForge) -> None:
    events = Events()
    with StatusSender(delay=partial(next_delay, base=0.05, cap=0.2)) as sender:
        forge.stop()
        sender.submit(status(forge.url), events)
        assert events.wait_for(lambda items: len(items) >= 1)
        forge.start()
        assert sender.wait_idle(5)
    assert events.items[0]["outcome"] == "retrying" and events.items[-1]["outcome"] == "sent"
    assert len(forge.calls) == 1


def test_a_forge_that_stalls_past_the_timeout_is_retried(forge: RecordingForge) -> None:
    forge.stall_next(1)
    events = Events()
    with StatusSender(delay=FAST, timeout=0.2) as sender:
        sender.submit(status(forge.url), events)
        assert sender.wait_idle(5)
    assert [(e["outcome"], e["http_status"]) for e in events.items] == [("retrying", None), ("sent", 201)]
    assert "timed out" in events.items[0]["error"].lower()


# -- order and supersession -----------------------------------------------------------


def test_a_newer_state_supersedes_an_older_one_waiting_to_be_retried(forge: RecordingForge) -> None:
    forge.fail_next(1, 502)
    events = Events()
    with StatusSender(delay=SLOW_RETRY) as sender:
        sender.submit(status(forge.url, "pending"), events)
        assert events.wait_for(lambda items: len(items) == 1)
        assert events.items[0]["outcome"] == "retrying"
        sender.submit(status(forge.url, "success"), events)
        assert sender.wait_idle(5)  # nothing is left to send: the pending retry is gone
    assert events.outcomes() == [("pending", "retrying", 502), ("pending", "superseded", None),
                                 ("success", "sent", 201)]
    assert [c.body["state"] for c in forge.calls] == ["pending", "success"]


def test_a_newer_state_waits_for_the_attempt_in_flight_then_replaces_its_retry(forge: RecordingForge) -> None:
    forge.stall_next(1, status=502)
    events = Events()
    with StatusSender(delay=SLOW_RETRY) as sender:
        sender.submit(status(forge.url, "pending"), events)
        assert forge.wait_for(lambda calls: len(calls) == 1)
        sender.submit(status(forge.url, "success"), events)
        time.sleep(0.2)
        assert len(forge.calls) == 1  # same commit and context: one at a time
        forge.release()
        assert sender.wait_idle(5)
    assert [c.body["state"] for c in forge.calls] == ["pending", "success"]
    assert events.outcomes() == [("pending", "superseded", 502), ("success", "sent", 201)]


def test_a_status_never_sent_is_superseded_at_once(forge: RecordingForge) -> None:
    forge.stall_next(1)
    events = Events()
    with StatusSender(delay=FAST, workers=1) as sender:
        sender.submit(status(forge.url, "pending", context="conveyor/other"), events)  # holds the one worker
        assert forge.wait_for(lambda calls: len(calls) == 1)
        sender.submit(status(forge.url, "pending"), events)
        sender.submit(status(forge.url, "success"), events)
        [event] = events.items  # reported at submit, on the caller's thread
        assert (event["state"], event["outcome"], event["attempt"]) == ("pending", "superseded", 0)
        forge.release()
        assert sender.wait_idle(5)
    assert [(c.body["context"], c.body["state"]) for c in forge.calls] == [
        ("conveyor/other", "pending"), ("conveyor/build", "success")]


def test_different_contexts_and_commits_do_not_wait_for_each_other(forge: RecordingForge) -> None:
    forge.stall_next(1)
    events = Events()
    with StatusSender(delay=FAST, workers=2) as sender:
        sender.submit(status(forge.url, context="conveyor/slow"), events)
        assert forge.wait_for(lambda calls: len(calls) == 1)
        sender.submit(status(forge.url, context="conveyor/fast"), events)
        assert events.wait_for(lambda items: len(items) == 1)
        assert events.items[0]["context"] == "conveyor/fast"
        forge.release()
        assert sender.wait_idle(5)


def test_the_last_submitted_state_is_the_last_one_the_forge_keeps(forge: RecordingForge) -> None:
    """Random sequences over several keys, with a few scripted failures: per key, the last
    request the forge saw is the last state submitted, and it was accepted."""
    rng = random.Random(7)
    keys = [("conveyor/a", SHA), ("conveyor/b", SHA), ("conveyor/a", "f" * 40)]
    last: dict[tuple[str, str], str] = {}
    events = Events()
    with StatusSender(delay=FAST, workers=2) as sender:
        for _ in range(60):
            if rng.random() < 0.1:
                forge.fail_next(1, rng.choice([500, 502, 503, 429]))
            context, sha = rng.choice(keys)
            state = rng.choice(["pending", "success", "failure", "error"])
            sender.submit(status(forge.url, state, sha=sha, context=context), events)
            last[(context, sha)] = state
            if rng.random() < 0.3:
                time.sleep(0.002)
        assert sender.wait_idle(10)
    for (context, sha), state in last.items():
        calls = [c for c in forge.calls if c.body["context"] == context and c.path.endswith(sha)]
        assert calls[-1].body["state"] == state and calls[-1].status == 201
    assert not [e for e in events.items if e["outcome"] == "gave_up"]


# -- robustness -----------------------------------------------------------------------


def test_a_failing_callback_does_not_stop_the_sender(forge: RecordingForge, sender: StatusSender) -> None:
    def broken(event: dict[str, Any]) -> None:
        raise RuntimeError("recorder down")

    sender.submit(status(forge.url, context="conveyor/one"), broken)
    events = Events()
    sender.submit(status(forge.url, context="conveyor/two"), events)
    assert sender.wait_idle(5)
    assert len(forge.calls) == 2 and events.items[0]["outcome"] == "sent"


def test_close_drains_what_is_queued(forge: RecordingForge) -> None:
    forge.fail_next(2, 502)
    events = Events()
    sender = StatusSender(delay=FAST)
    sender.submit(status(forge.url), events)
    assert sender.close(timeout=5) is True
    assert [e["outcome"] for e in events.items] == ["retrying", "retrying", "sent"]


def test_close_gives_up_what_cannot_be_sent_in_time(forge: RecordingForge) -> None:
    forge.fail_next(1, 502)
    events = Events()
    sender = StatusSender(delay=SLOW_RETRY)
    sender.submit(status(forge.url), events)
    assert events.wait_for(lambda items: len(items) == 1)
    assert sender.close(timeout=0.1) is False
    assert [e["outcome"] for e in events.items] == ["retrying", "gave_up"]
    assert "closed" in events.items[-1]["error"]
    sender.submit(status(forge.url), events)  # after close: recorded as given up, never raises
    assert events.items[-1]["outcome"] == "gave_up" and len(forge.calls) == 1


def test_gitlab_and_gitea_requests_reach_the_forge_as_built(forge: RecordingForge, sender: StatusSender) -> None:
    events = Events()
    gitlab = build_request("gitlab", forge.url + "/api/v4", "group/sub/app", SHA, "failure", "conveyor/build",
                           "failed", "", TOKEN)
    gitea = build_request("gitea", forge.url + "/api/v1", "acme/app", SHA, "error", "conveyor/build",
                          "cancelled", "", TOKEN)
    sender.submit(gitlab, events)
    sender.submit(gitea, events)
    assert sender.wait_idle(5)
    by_path = {c.path: c for c in forge.calls}
    lab = by_path[f"/api/v4/projects/group%2Fsub%2Fapp/statuses/{SHA}"]
    assert lab.body == {"state": "failed", "name": "conveyor/build", "description": "failed"}
    assert lab.header("PRIVATE-TOKEN") == TOKEN and lab.header("Authorization") is None
    tea = by_path[f"/api/v1/repos/acme/app/statuses/{SHA}"]
    assert tea.body == {"state": "error", "context": "conveyor/build", "description": "cancelled"}
    assert tea.header("Authorization") == f"token {TOKEN}"


def test_the_token_never_appears_in_any_event(forge: RecordingForge) -> None:
    forge.fail_next(1, 502, body=f'{{"message": "bad token {TOKEN}"}}'.encode())
    forge.fail_next(1, 401, body=f'{{"message": "Bearer {TOKEN} is not valid"}}'.encode())
    events = Events()
    with StatusSender(delay=FAST) as sender:
        sender.submit(status(forge.url), events)
        sender.submit(status(f"http://127.0.0.1:{free_port()}", context="conveyor/down"), events)
        assert sender.wait_idle(5)
    assert {e["outcome"] for e in events.items} >= {"retrying", "gave_up"}
    assert TOKEN not in repr(events.items)
    assert "***" in repr(events.items)  # the forge's echo was redacted, not dropped
