"""What every part of the server shares: its error type and shape, the services handlers
read and write, and the token dependency: a bearer token or the web UI's session cookie
(docs/server.md, docs/web-ui.md)."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from coordinator.run_status import is_run_id
from coordinator.server.ui import session as ui_session
from shared.config import Settings
from shared.state.base import RunRecord, StateStore
from shared.tokens import Scope, Token, TokenStore


class ApiError(Exception):
    """An error answer: HTTP status, a stable machine code and a one-line message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          409: "conflict", 413: "too_large", 422: "invalid", 503: "unavailable"}


def error_response(status: int, code: str, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


@dataclass
class Services:
    """What the handlers read and write: opened once per server process."""

    settings: Settings
    store: StateStore
    tokens: TokenStore
    runtime: Any = None  # coordinator.server.runtime.ServerRuntime: repositories, runs from events
    _artifact_view: Any = None

    def artifact_view(self) -> Any:
        """(artifact store, index), opened on first use and kept: a connection per request
        would cost more than the request."""
        if self._artifact_view is None:
            from coordinator.run_status import open_artifact_view

            self._artifact_view = open_artifact_view(self.settings)
        return self._artifact_view


def requires(scope: Scope) -> Callable[..., Awaitable[Token]]:
    """A dependency: the request's token, which must include ``scope``.

    The token is the `Authorization: Bearer` one or, without that header, the one behind the
    web UI's session cookie (coordinator/server/ui/session.py). A cookie-authenticated unsafe
    request (POST, PUT, DELETE...) must also carry the session's CSRF token (`X-CSRF-Token`,
    or form field `csrf_token`) and come from this server's own origin: a browser sends the
    cookie on its own, so the cookie alone proves nothing about who asked.
    """

    async def check(request: Request) -> Token:
        svc = request.app.state.services
        header = request.headers.get("authorization")
        if header is not None or ui_session.COOKIE not in request.cookies:
            value = header[7:].strip() if header is not None and header[:7].lower() == "bearer " else None
            token = await run_in_threadpool(svc.tokens.verify, value)
            if token is None:
                raise ApiError(401, "unauthorized", "a valid API token is required (Authorization: Bearer TOKEN)")
        else:
            session = await run_in_threadpool(ui_session.from_request, request)
            if session is None:
                raise ApiError(401, "unauthorized", "the session has ended: sign in again")
            if request.method not in ui_session.SAFE_METHODS:
                supplied = request.headers.get(ui_session.CSRF_HEADER)
                if supplied is None:
                    supplied = await ui_session.form_field(request, ui_session.CSRF_FIELD)
                why = ui_session.csrf_refusal(request, session, supplied, public_url(svc))
                if why is not None:
                    raise ApiError(403, "forbidden", why)
            token = session.token
        if not token.allows(scope):
            raise ApiError(403, "forbidden", f"this token's scope is {token.scope!r}; this needs {scope!r}")
        return token

    return check


def public_url(svc: Services) -> str | None:
    """The server's public address (CONVEYOR_PUBLIC_URL), if configured."""
    runtime_url = getattr(svc.runtime, "public_url", None)
    return runtime_url or svc.settings.public_url


def known_run(services: Services, run_id: str) -> RunRecord:
    """The run's record; 404 for an unknown run or anything that cannot be a run id."""
    run = services.store.get_run(run_id) if is_run_id(run_id) else None
    if run is None:
        raise ApiError(404, "not_found", f"no run {run_id!r}")
    return run




def services(request: Request) -> Services:
    """A dependency: the services of the app handling ``request``."""
    return request.app.state.services
