"""A local stand-in for a forge's status API: records every request, answers as scripted.

    with recording_forge() as forge:
        request = build_request("github", forge.url, "acme/app", sha, ...)
        forge.fail_next(2, 502)            # the next two requests get 502, then 201 again
        ...
        assert forge.wait_for(lambda calls: len(calls) == 3)
        assert forge.calls[-1].body["state"] == "success"

* `calls`: a copy of every request so far, in arrival order: method, raw path (as sent,
  percent-escapes kept), headers, JSON body (None if not JSON), raw bytes, the status
  answered (decided on arrival) and whether it was stalled.
* `fail_next(n, status, body=, headers=)`: the next n requests are answered `status`
  (default 502), with that body and those extra headers (e.g. a `Location`) if given.
* `stall_next(n, status)`: the next n requests are held without an answer until
  `release()`, `stop()`, or 30 s (longer than any client timeout), then answered.
* `stop()` closes the listening socket (connections are refused: "forge down");
  `start()` listens again on the same port.
* Every other request is answered 201 with `{"id": N, "state": ...}`, like the forges.

Stdlib only (`http.server` on a thread); the port comes from `tests.services.free_port`.
"""
from __future__ import annotations

import json
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator, Mapping, Sequence

from tests.services import free_port

STALL_LIMIT = 30.0
MAX_BODY = 1 << 20


@dataclass(frozen=True)
class Call:
    """One request the forge received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    raw: bytes
    status: int
    stalled: bool = False

    def header(self, name: str) -> str | None:
        """A header's value, whatever the case of its name."""
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


@dataclass(frozen=True)
class _Answer:
    status: int
    stall: bool = False
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()


class RecordingForge:
    """See the module docstring. Use `recording_forge()` so it is always stopped."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._cond = threading.Condition()
        self._calls: list[Call] = []
        self._script: deque[_Answer] = deque()
        self._release = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- scripting --------------------------------------------------------------------

    @property
    def calls(self) -> list[Call]:
        with self._cond:
            return list(self._calls)

    def fail_next(self, n: int, status: int = 502, *, body: bytes | None = None,
                  headers: Mapping[str, str] | None = None) -> None:
        """Answer the next n requests with `status` (and this body and these headers, if given)."""
        extra = tuple((headers or {}).items())
        with self._cond:
            self._script.extend(_Answer(status, body=body, headers=extra) for _ in range(n))

    def stall_next(self, n: int = 1, status: int = 201) -> None:
        with self._cond:
            self._release.clear()
            self._script.extend(_Answer(status, stall=True) for _ in range(n))

    def release(self) -> None:
        """Let every stalled request be answered."""
        self._release.set()

    def wait_for(self, predicate: Callable[[Sequence[Call]], bool], timeout: float = 5.0) -> bool:
        """Wait until `predicate(calls)` is true (True) or `timeout` seconds pass (False)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(list(self._calls)):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    # -- up and down ------------------------------------------------------------------

    def start(self) -> None:
        if self._server is not None:
            return
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler_for(self))
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"forge-recorder-{self.port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Close the listening socket: new connections are refused until `start()`."""
        server, self._server = self._server, None
        if server is None:
            return
        self._release.set()
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- the handler's side -----------------------------------------------------------

    def _arrived(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> tuple[_Answer, bytes]:
        """Record the request and decide its answer: (the answer, the body to send)."""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        with self._cond:
            answer = self._script.popleft() if self._script else _Answer(201)
            self._calls.append(Call(method, path, headers, body, raw, answer.status, answer.stall))
            self._cond.notify_all()
            number = len(self._calls)
        if answer.stall:
            self._release.wait(STALL_LIMIT)
        payload = answer.body if answer.body is not None else _answer_body(answer.status, number, body)
        return answer, payload


def _answer_body(status: int, number: int, body: Any) -> bytes:
    if 200 <= status < 300:
        state = body.get("state") if isinstance(body, dict) else None
        return json.dumps({"id": number, "state": state}).encode()
    return json.dumps({"message": f"scripted answer {status}"}).encode()


def _handler_for(forge: RecordingForge) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(min(length, MAX_BODY)) if length > 0 else b""
            answer, payload = forge._arrived(self.command, self.path, dict(self.headers.items()), raw)
            try:
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                for name, value in answer.headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except OSError:  # the client gave up (timed out) while we stalled
                pass

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read .calls
            pass

    return Handler


@contextmanager
def recording_forge(port: int | None = None) -> Iterator[RecordingForge]:
    """A started `RecordingForge`, stopped (and its stalls released) on exit."""
    forge = RecordingForge(port)
    forge.start()
    try:
        yield forge
    finally:
        forge.stop()
