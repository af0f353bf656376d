"""What every part of the server shares: its error type and shape, the services handlers
read and write, and the bearer-token dependency (docs/server.md)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import JSONResponse

from coordinator.run_status import is_run_id
from shared.config import Settings
from shared.state.base import StateStore
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


def requires(scope: Scope) -> Callable[..., Token]:
    """A dependency: the request's bearer token, which must include ``scope``."""

    def check(request: Request) -> Token:
        header = request.headers.get("authorization", "")
        value = header[7:].strip() if header[:7].lower() == "bearer " else None
        token = request.app.state.services.tokens.verify(value)
        if token is None:
            raise ApiError(401, "unauthorized", "a valid API token is required (Authorization: Bearer TOKEN)")
        if not token.allows(scope):
            raise ApiError(403, "forbidden", f"this token's scope is {token.scope!r}; this needs {scope!r}")
        return token

    return check


def known_run(services: Services, run_id: str) -> None:
    if not is_run_id(run_id) or services.store.get_run(run_id) is None:
        raise ApiError(404, "not_found", f"no run {run_id!r}")




def services(request: Request) -> Services:
    """A dependency: the services of the app handling ``request``."""
    return request.app.state.services
