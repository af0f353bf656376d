"""A small client of `conveyor server`'s API (docs/server.md): what the CLI uses when
CONVEYOR_SERVER_URL and CONVEYOR_TOKEN are set, so users need no broker or store credentials.

Plain urllib: one request per call, JSON in and out, server-sent events read line by line.
Every failure is one `ApiClientError(status, code, message)` (status 0: no HTTP answer).
The token goes only into the `Authorization` header: never into a message, a repr, or a
request to another address (redirects are refused rather than followed with the token).
https is verified against the system's CA certificates (SSL_CERT_FILE to add one).
"""
from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from shared.config import redact_url

DEFAULT_TIMEOUT_S = 30.0
# A followed stream may be silent for a long time (a job printing nothing); past this the
# read gives up and the caller reconnects (a dead connection must not hang for ever).
STREAM_IDLE_TIMEOUT_S = 300.0
CHUNK = 1024 * 1024
MAX_MESSAGE = 500  # characters of a server's error message kept (it is printed)
_TOKEN = re.compile(r"[\x21-\x7e]{1,4096}")  # what an HTTP header value can carry unchanged


class ApiClientError(Exception):
    """An API call that failed: HTTP ``status`` (0 when there was no answer), the error's
    ``code`` and ``message`` (the server's, or what went wrong on the way), and for a 422
    of `trigger` the pipeline's ``diagnostics``."""

    def __init__(self, status: int, code: str, message: str, diagnostics: list[Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.diagnostics = diagnostics or []

    def __repr__(self) -> str:
        return f"ApiClientError({self.status}, {self.code!r}, {self.message!r})"


@dataclass(frozen=True)
class SseEvent:
    """One server-sent event: its name, its data (parsed JSON when it is JSON) and its id."""

    event: str
    data: Any
    id: str | None = None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None  # urllib then raises the 3xx as an HTTPError


class ApiClient:
    """The API of the server at ``url`` with ``token``; one method per endpoint."""

    def __init__(self, url: str, token: str, timeout: float = DEFAULT_TIMEOUT_S,
                 context: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ApiClientError(0, "bad_url", f"CONVEYOR_SERVER_URL must be an http:// or https:// URL, "
                                               f"got {redact_url(url)!r}")
        if parts.username is not None or parts.password is not None:
            raise ApiClientError(0, "bad_url", "CONVEYOR_SERVER_URL must not carry credentials; "
                                               "the token goes in CONVEYOR_TOKEN")
        if parts.query or parts.fragment:
            raise ApiClientError(0, "bad_url", "CONVEYOR_SERVER_URL must not have a query or fragment")
        if not isinstance(token, str) or not _TOKEN.fullmatch(token):
            # Never quote it: a token with a newline in it is still a secret.
            raise ApiClientError(0, "bad_token", "CONVEYOR_TOKEN is not a token (one word of printable ASCII)")
        self.url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self.timeout = timeout
        self.__token = token
        self._opener = urllib.request.build_opener(
            _NoRedirect(), urllib.request.HTTPSHandler(context=context or ssl.create_default_context()))

    def __repr__(self) -> str:
        return f"ApiClient({self.url!r})"

    # -- endpoints -------------------------------------------------------------------------

    def runs(self, limit: int = 20, status: str | None = None) -> list[dict[str, Any]]:
        """`GET /api/v1/runs`: newest first."""
        query: dict[str, Any] = {"limit": limit}
        if status:
            query["status"] = status
        return self._json("GET", "/api/v1/runs", query=query)

    def run(self, run_id: str) -> dict[str, Any]:
        """`GET /api/v1/runs/{run}`: the JSON of `conveyor status RUN --format json` (+ trigger)."""
        return self._json("GET", _path("runs", run_id))

    def job_log(self, run_id: str, job: str) -> str:
        """A job's log as stored so far, as text."""
        with self._open("GET", _path("runs", run_id, "jobs", job, "log")) as response:
            return _read_all(response).decode("utf-8", errors="replace")

    def follow_log(self, run_id: str, job: str) -> Iterator[SseEvent]:
        """A job's log from its first line as `line` events, until one `end` event."""
        return self._stream(_path("runs", run_id, "jobs", job, "log"), {"follow": 1})

    def events(self, run_id: str, after: str | None = None) -> Iterator[SseEvent]:
        """A run's job status changes as `status` events (after event id ``after``), until one `end` event."""
        return self._stream(_path("runs", run_id, "events"), {"after": after} if after else None)

    def cancel(self, run_id: str) -> dict[str, Any]:
        """`POST /api/v1/runs/{run}/cancel`: `{"run_id", "stopping": [jobs]}`."""
        return self._json("POST", _path("runs", run_id, "cancel"), expect=(202,))

    def answer_gate(self, run_id: str, gate: str, decision: str, comment: str | None = None) -> dict[str, Any]:
        """Approve or reject a gate as the token's owner; the stored answer."""
        body: dict[str, Any] = {"decision": decision}
        if comment is not None:
            body["comment"] = comment
        return self._json("POST", _path("runs", run_id, "approvals", gate), body)

    def deployment_command(self, run_id: str, job: str, kind: str) -> dict[str, Any]:
        """Queue `abort` or `rollback` of a deployment job."""
        return self._json("POST", _path("runs", run_id, "deployments", job, kind), {}, expect=(202,))

    def artifacts(self, run_id: str, all_kinds: bool = False) -> list[dict[str, Any]]:
        """A run's artifact records (each with its `members`); with ``all_kinds`` also source and logs."""
        return self._json("GET", _path("runs", run_id, "artifacts"), query={"all": 1} if all_kinds else None)

    def artifact_chunks(self, run_id: str, job: str, path: str, kind: str = "artifact") -> Iterator[bytes]:
        """One stored file's bytes; raises ApiClientError when the server cuts the stream
        (it does so when the bytes do not match their digest)."""
        segments = [quote(part, safe="") for part in path.split("/")]
        url_path = _path("runs", run_id, "artifacts", job) + "/" + "/".join(segments)
        response = self._open("GET", url_path, query={"kind": kind} if kind != "artifact" else None)
        return _Closing(self._chunks(response), response)

    def trigger(self, repository: str, ref: str, variables: Mapping[str, str] | None = None) -> str:
        """`POST /api/v1/runs`: start a run of a configured repository at ``ref``; its id.
        An invalid pipeline is an ApiClientError(422) with the ``diagnostics``."""
        answer = self._json("POST", "/api/v1/runs",
                            {"repository": repository, "ref": ref, "vars": dict(variables or {})}, expect=(201,))
        run_id = answer.get("run_id") if isinstance(answer, dict) else None
        if not isinstance(run_id, str):
            raise ApiClientError(201, "bad_answer", "the server accepted the run but sent no run id")
        return run_id

    # -- transport -------------------------------------------------------------------------

    def _json(self, method: str, path: str, body: Any = None, query: Mapping[str, Any] | None = None,
              expect: tuple[int, ...] = (200,)) -> Any:
        with self._open(method, path, body, query) as response:
            raw = _read_all(response)
            if response.status not in expect:
                raise ApiClientError(response.status, "unexpected", f"the server answered {response.status} to "
                                                                    f"{method} {path}")
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiClientError(response.status, "bad_answer", f"the server's answer to {method} {path} "
                                                                "is not JSON") from None

    def _open(self, method: str, path: str, body: Any = None, query: Mapping[str, Any] | None = None,
              timeout: float | None = None) -> http.client.HTTPResponse:
        url = self.url + path + (f"?{urlencode(query)}" if query else "")
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method)
        # Unredirected: even a redirect followed by some handler would not carry it along.
        request.add_unredirected_header("Authorization", f"Bearer {self.__token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            return self._opener.open(request, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as exc:
            raise _http_error(exc, method, path) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiClientError(0, "unreachable", f"cannot reach the server at {redact_url(self.url)}: "
                                                   f"{reason}") from None

    def _stream(self, path: str, query: Mapping[str, Any] | None) -> Iterator[SseEvent]:
        response = self._open("GET", path, query=query, timeout=STREAM_IDLE_TIMEOUT_S)
        return _Closing(_events(response), response)

    @staticmethod
    def _chunks(response: http.client.HTTPResponse) -> Iterator[bytes]:
        expected = response.headers.get("Content-Length")
        received = 0
        with response:
            try:
                while chunk := response.read(CHUNK):
                    received += len(chunk)
                    yield chunk
            except (OSError, http.client.HTTPException) as exc:
                raise ApiClientError(0, "interrupted", f"the download was cut after {received} bytes "
                                                       f"({type(exc).__name__})") from None
        # urllib's read() ends quietly on a closed connection: the length is checked here.
        if expected is not None and expected.isdigit() and received != int(expected):
            raise ApiClientError(0, "interrupted", f"the download was cut after {received} of {expected} bytes")


class _Closing(Iterator[Any]):
    """An iterator over a response that closes the response when closed, even unstarted
    (a generator's own `with` only runs once it has been started)."""

    def __init__(self, items: Iterator[Any], response: http.client.HTTPResponse) -> None:
        self._items, self._response = items, response

    def __next__(self) -> Any:
        return next(self._items)

    def close(self) -> None:
        close = getattr(self._items, "close", None)
        if close is not None:
            close()
        self._response.close()


def _path(*segments: str) -> str:
    """An API path from segments, each percent-encoded whole (a `/` or `..` in a run id,
    job or gate name stays inside its segment)."""
    return "/api/v1/" + "/".join(quote(segment, safe="") for segment in segments)


def _read_all(response: http.client.HTTPResponse) -> bytes:
    try:
        return response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise ApiClientError(0, "interrupted", f"the answer was cut ({type(exc).__name__})") from None


def _http_error(exc: urllib.error.HTTPError, method: str, path: str) -> ApiClientError:
    try:
        raw = exc.read()
    except (OSError, http.client.HTTPException):
        raw = b""
    finally:
        exc.close()
    if 300 <= exc.code < 400:
        where = redact_url(str(exc.headers.get("Location", "?")))[:200]
        return ApiClientError(exc.code, "redirect", f"the server answered {exc.code} (to {where}); set "
                                                    "CONVEYOR_SERVER_URL to the address it redirects to")
    code, message, diagnostics = f"http_{exc.code}", f"the server answered {exc.code} to {method} {path}", None
    try:
        error = json.loads(raw).get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict):
        code = str(error.get("code") or code)
        message = str(error.get("message") or message)[:MAX_MESSAGE]
        if isinstance(error.get("diagnostics"), list):
            diagnostics = error["diagnostics"]
    return ApiClientError(exc.code, code, message, diagnostics)


def _events(response: http.client.HTTPResponse) -> Iterator[SseEvent]:
    """Parse `text/event-stream`: fields up to a blank line make one event; `:` lines are comments."""
    name, event_id = "message", None
    data: list[str] = []
    with response:
        while True:
            try:
                raw = response.readline()
            except (socket.timeout, TimeoutError):
                # Not a failure: a followed job may print nothing for a long time.
                raise ApiClientError(0, "idle", "the stream was silent too long") from None
            except (OSError, http.client.HTTPException) as exc:
                raise ApiClientError(0, "interrupted", f"the stream was cut ({type(exc).__name__})") from None
            if not raw:
                if data:
                    raise ApiClientError(0, "interrupted", "the stream was cut in the middle of an event")
                return
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if not line:
                if data:
                    text = "\n".join(data)
                    try:
                        value: Any = json.loads(text)
                    except ValueError:
                        value = text
                    yield SseEvent(name, value, event_id)
                name, data = "message", []
                continue
            if line.startswith(":"):
                continue
            field, _, value_text = line.partition(":")
            value_text = value_text[1:] if value_text.startswith(" ") else value_text
            if field == "event":
                name = value_text
            elif field == "data":
                data.append(value_text)
            elif field == "id":
                event_id = value_text
