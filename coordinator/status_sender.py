"""Sends commit statuses in the background, with retries, and never holds up a run.

Spec (server.md, "Commit statuses"): "Sent with retries and backoff; a forge that is down
never fails or delays the run; every attempt is a run event." `coordinator/forge_status.py`
builds each request and says how long to wait before trying again; this module does the
I/O on a small pool of daemon threads:

* `submit(request, on_attempt)` only queues and returns at once; it never raises for a
  forge's sake.
* Every attempt calls `on_attempt(event)` with `{"at", "attempt", "state", "context",
  "url", "outcome", "http_status", "error", "retry_in"}`; `outcome` is `sent` (2xx),
  `retrying` (retried after `retry_in` seconds), `gave_up` (an answer that will not
  change, the attempts are used up, or the sender is closing) or `superseded` (a newer
  status for the same commit and context replaced this one before it could be retried
  or sent; `attempt` is then the number of attempts it had). The server records each
  as a run event. The URL carries no secret; error texts have every token redacted.
* Statuses with the same `key` (forge URL of the commit, context) go one at a time, in
  the order submitted; a newer one replaces an older one that is still waiting, so a
  late `pending` retry can never land after `success`. Different keys go in parallel.
* Redirects are not followed: urllib would replay the request, `Authorization` header
  included, to whatever host the answer names.

`on_attempt` runs on a sender thread (or, for `superseded` at submit and for statuses
submitted after `close`, on the caller's): keep it short; an exception from it is logged
and ignored, so a broken recorder cannot stop statuses.
"""
from __future__ import annotations

import http.client
import itertools
import logging
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable

from coordinator.forge_status import StatusRequest, next_delay
from shared.state.base import iso_ms

log = logging.getLogger(__name__)

DelayPolicy = Callable[[int, int | None], float | None]
OnAttempt = Callable[[dict[str, Any]], None]

SENT = "sent"
RETRYING = "retrying"
GAVE_UP = "gave_up"
SUPERSEDED = "superseded"

TIMEOUT = 5.0  # seconds per attempt: connect and each read
_ERROR_BODY = 300  # characters of a refusal's body kept in `error` (GitHub says why in it)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse every redirect: the 3xx becomes an HTTPError, and the token stays home."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[override]
        return None


@dataclass
class _Item:
    request: StatusRequest
    on_attempt: OnAttempt
    seq: int
    due: float  # time.monotonic() at which it may be sent
    attempts: int = 0


@dataclass
class _Slot:
    """One key's line: at most one status being sent and at most one waiting."""

    waiting: _Item | None = None
    busy: bool = False


@dataclass
class _Result:
    status: int | None
    error: str | None = None
    final: bool = False  # an unexpected error: do not retry whatever the policy says

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class _Event:
    item: _Item
    outcome: str
    result: _Result = field(default_factory=lambda: _Result(None))
    retry_in: float | None = None


class StatusSender:
    """A background sender of `StatusRequest`s; see the module docstring.

    `delay(attempt, http_status)` is the retry policy (`forge_status.next_delay`; tests
    give a fast one), `timeout` the seconds per attempt, `workers` the threads,
    `clock` the wall clock for events' `at`, `opener` the urllib opener (redirects off).
    """

    def __init__(self, *, delay: DelayPolicy = next_delay, timeout: float = TIMEOUT, workers: int = 2,
                 clock: Callable[[], float] = time.time,
                 opener: urllib.request.OpenerDirector | None = None) -> None:
        if workers < 1:
            raise ValueError("workers must be 1 or more")
        self._delay = delay
        self._timeout = timeout
        self._clock = clock
        self._opener = opener or urllib.request.build_opener(_NoRedirect)
        self._cond = threading.Condition()
        self._slots: dict[tuple[str, str], _Slot] = {}
        self._seq = itertools.count()
        self._closed = False  # no new submissions
        self._stopping = False  # workers leave; what still waits is given up
        self._threads = [threading.Thread(target=self._work, name=f"conveyor-status-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    # -- public -------------------------------------------------------------------------

    def submit(self, request: StatusRequest, on_attempt: OnAttempt) -> None:
        """Queue `request`; returns at once. A waiting status with the same key is superseded."""
        with self._cond:
            item = _Item(request, on_attempt, next(self._seq), time.monotonic())
            closed, replaced = self._closed, None
            if not closed:
                slot = self._slots.setdefault(request.key, _Slot())
                replaced, slot.waiting = slot.waiting, item
                self._cond.notify_all()
        if closed:
            self._emit(_Event(item, GAVE_UP, _Result(None, "status sender is closed; not sent")))
        if replaced is not None:
            self._emit(_Event(replaced, SUPERSEDED, _Result(None, f"replaced by a newer status ({request.state})")))

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing is waiting or being sent (True), or `timeout` seconds pass (False)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._slots:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def close(self, timeout: float = 10.0) -> bool:
        """Take no more statuses, keep sending (and retrying) what is queued for up to
        `timeout` seconds, then give up the rest. True when everything was drained."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        drained = self.wait_idle(timeout)
        with self._cond:
            self._stopping = True
            abandoned = [slot.waiting for slot in self._slots.values() if slot.waiting is not None]
            for slot in self._slots.values():
                slot.waiting = None
            self._drop_empty()
            self._cond.notify_all()
        for item in abandoned:
            self._emit(_Event(item, GAVE_UP, _Result(None, "status sender closed before it could be sent")))
        for thread in self._threads:
            # A thread in the middle of an attempt ends within one timeout; it is a daemon anyway.
            thread.join(timeout=0.1)
        return drained

    def __enter__(self) -> StatusSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the workers --------------------------------------------------------------------

    def _next_ready(self) -> _Item | None:
        """Under the lock: take the oldest due item whose key is not being sent, or wait."""
        while not self._stopping:
            now = time.monotonic()
            best_key, best, next_due = None, None, None
            for key, slot in self._slots.items():
                item = slot.waiting
                if slot.busy or item is None:
                    continue
                if item.due <= now:
                    if best is None or (item.due, item.seq) < (best.due, best.seq):
                        best_key, best = key, item
                elif next_due is None or item.due < next_due:
                    next_due = item.due
            if best is not None:
                slot = self._slots[best_key]  # type: ignore[index]
                slot.waiting, slot.busy = None, True
                return best
            self._cond.wait(None if next_due is None else max(0.0, next_due - now))
        return None

    def _work(self) -> None:
        while True:
            with self._cond:
                item = self._next_ready()
            if item is None:
                return
            item.attempts += 1
            result = self._send(item.request)
            with self._cond:
                event = self._settle(item, result)
            # The key stays busy until its event is recorded: events of one key come in
            # order, and `wait_idle` means "sent and recorded".
            self._emit(event)
            with self._cond:
                self._slots[item.request.key].busy = False
                self._drop_empty()
                self._cond.notify_all()

    def _settle(self, item: _Item, result: _Result) -> _Event:
        """Under the lock: what this attempt's result means for its key (still busy)."""
        slot = self._slots[item.request.key]
        if result.ok:
            return _Event(item, SENT, result)
        wait = None if result.final or self._stopping else self._policy(item.attempts, result.status)
        if wait is None:
            return _Event(item, GAVE_UP, result)
        if slot.waiting is not None:  # a newer status came while this one was on the wire
            return _Event(item, SUPERSEDED, result)
        item.due = time.monotonic() + wait
        slot.waiting = item
        return _Event(item, RETRYING, result, retry_in=wait)

    def _policy(self, attempt: int, status: int | None) -> float | None:
        try:
            return self._delay(attempt, status)
        except Exception:  # noqa: BLE001 - a broken policy gives up this status, not the worker
            log.exception("the commit status retry policy failed")
            return None

    def _drop_empty(self) -> None:
        for key in [k for k, s in self._slots.items() if s.waiting is None and not s.busy]:
            del self._slots[key]

    def _send(self, request: StatusRequest) -> _Result:
        http_request = urllib.request.Request(request.url, data=request.data(), headers=dict(request.headers),
                                              method=request.method)
        try:
            with self._opener.open(http_request, timeout=self._timeout) as response:
                response.read(65536)
                return _Result(response.status)
        except urllib.error.HTTPError as exc:
            try:
                body = exc.read(4096).decode("utf-8", "replace")
            except Exception:  # the body is only a hint; a broken one must not matter
                body = ""
            finally:
                exc.close()
            text = " ".join(f"HTTP {exc.code} {exc.reason}: {body}".split())[:_ERROR_BODY]
            return _Result(exc.code, request.redact(text))
        except urllib.error.URLError as exc:
            reason = exc.reason
            return _Result(None, request.redact(f"{type(reason).__name__}: {reason}"))
        except (OSError, http.client.HTTPException) as exc:
            return _Result(None, request.redact(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__))
        except Exception as exc:  # noqa: BLE001 - unforeseen: give up this status, keep the worker
            log.exception("commit status to %s failed unexpectedly", request.url)
            return _Result(None, request.redact(f"{type(exc).__name__}: {exc}"), final=True)

    def _emit(self, event: _Event) -> None:
        item, result = event.item, event.result
        request = item.request
        record = {
            "at": iso_ms(self._clock() * 1000),
            "attempt": item.attempts,
            "state": request.state,
            "context": request.context,
            "url": request.url,
            "outcome": event.outcome,
            "http_status": result.status,
            "error": result.error,
            "retry_in": event.retry_in,
        }
        if event.outcome == GAVE_UP:
            log.warning("commit status %s %s to %s not sent after %d attempt(s): %s", request.context,
                        request.state, request.url, item.attempts, result.error)
        try:
            item.on_attempt(record)
        except Exception:  # noqa: BLE001 - a broken recorder must not stop statuses
            log.exception("recording a commit status attempt failed")
