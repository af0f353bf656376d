"""Web UI sessions: a token given once at `/login` becomes a server-side session named by an
HttpOnly, SameSite=Strict cookie (docs/web-ui.md, "Sign-in and CSRF").

- The session lives in the coordination store (`Coordination.put/get/delete`, with a TTL),
  so every server behind one address knows it. Its key is the SHA-256 of the random session
  id: whoever reads the store cannot replay a cookie from it.
- A session records the token's name, scope and SHA-256, never the token; every request
  looks the hash up again, so a revoked token ends its sessions at once.
- Session ids are only ever made here (`start`): an id a client makes up is never adopted
  (no fixation); signing in again always gives a new one.
- Unsafe requests authenticated by the cookie need the session's CSRF token (header
  `X-CSRF-Token` or form field `csrf_token`, compared in constant time) and must not come
  from another site (`Sec-Fetch-Site`, `Origin`).

Nothing here answers HTTP: `coordinator/server/common.py` (the API's `requires`) and
`pages.py` (the pages) turn what these functions return into answers.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from shared.tokens import Token, TokenStore, token_hash

COOKIE = "conveyor_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
TTL_S = 12 * 3600  # absolute: a session is not extended by use
KEY_PREFIX = "ui-session:"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
FORM_MAX = 64 * 1024  # a form this UI posts is a few hundred bytes
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Session:
    """A live session: the token it was opened with (as the store knows it now) and its CSRF token."""

    key: str  # the coordination key: KEY_PREFIX + sha256(session id)
    token: Token
    token_hash: str
    csrf: str
    created_at: float


def _key(session_id: str) -> str:
    return KEY_PREFIX + hashlib.sha256(session_id.encode()).hexdigest()


def start(coordination: Any, tokens: TokenStore, raw_token: str | None) -> tuple[str, Session] | None:
    """A new session for ``raw_token``: (session id for the cookie, session); None when the
    token is not a live one. The raw token is hashed here and forgotten."""
    token = tokens.verify(raw_token)
    if token is None or raw_token is None:
        return None
    session_id = secrets.token_urlsafe(32)
    digest = token_hash(raw_token)
    csrf = secrets.token_urlsafe(32)
    now = time.time()
    record = {"name": token.name, "scope": token.scope, "token_hash": digest, "csrf": csrf, "created_at": now}
    coordination.put(_key(session_id), json.dumps(record), ttl_s=TTL_S)
    return session_id, Session(_key(session_id), token, digest, csrf, now)


def load(coordination: Any, tokens: TokenStore, session_id: str | None) -> Session | None:
    """The session named by a cookie value, or None: unknown, expired, malformed, or its token
    revoked (then the session is deleted too)."""
    if not session_id or not _SESSION_ID.fullmatch(session_id):
        return None
    key = _key(session_id)
    raw = coordination.get(key)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        digest, csrf, created = str(data["token_hash"]), str(data["csrf"]), float(data["created_at"])
    except (ValueError, KeyError, TypeError):
        coordination.delete(key)
        return None
    if time.time() - created > TTL_S:  # a backend that kept it past its TTL
        coordination.delete(key)
        return None
    token = tokens.by_hash(digest)
    if token is None:  # revoked: the session ends with it
        coordination.delete(key)
        return None
    return Session(key, token, digest, csrf, created)


def end(coordination: Any, session: Session) -> None:
    """Forget the session server-side: its cookie is worthless from now on."""
    coordination.delete(session.key)


def from_request(request: Any) -> Session | None:
    """The session of a Starlette request's cookie (looked up once per request)."""
    cached = getattr(request.state, "ui_session", False)
    if cached is not False:
        return cached
    services = request.app.state.services
    session = load(services.runtime.coordination, services.tokens, request.cookies.get(COOKIE))
    request.state.ui_session = session
    return session


# -- cookies ----------------------------------------------------------------------------------


def is_secure(request: Any, public_url: str | None) -> bool:
    """Whether the cookie must be `Secure`: the request came over https, or the server's
    public address (CONVEYOR_PUBLIC_URL, behind a TLS proxy) is https."""
    return request.url.scheme == "https" or (public_url or "").lower().startswith("https://")


def set_cookie(response: Any, session_id: str, secure: bool) -> None:
    response.set_cookie(COOKIE, session_id, max_age=TTL_S, path="/", secure=secure, httponly=True,
                        samesite="strict")


def clear_cookie(response: Any, secure: bool) -> None:
    response.delete_cookie(COOKIE, path="/", secure=secure, httponly=True, samesite="strict")


# -- CSRF -------------------------------------------------------------------------------------


def _origin_of(url: str | None) -> str | None:
    if not url:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def cross_site(request: Any, public_url: str | None) -> str | None:
    """Why an unsafe request does not come from this server's own pages, or None.

    `Sec-Fetch-Site` (sent by every current browser) must be `same-origin` or `none` (typed
    or bookmarked); a `same-site` sibling host is refused too. An `Origin` header, when sent,
    must be this server's origin: the one the request was addressed to, or the public URL's.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None and site.lower() not in ("same-origin", "none"):
        kind = site.lower() if site.lower() in ("cross-site", "same-site") else "cross-site"
        return f"a {kind} request is refused"
    origin = request.headers.get("origin")
    if origin is not None:
        own = {_origin_of(f"{request.url.scheme}://{request.headers.get('host', '')}"), _origin_of(public_url)}
        if origin.lower() not in {o for o in own if o}:
            return "a request from another origin is refused"
    return None


def csrf_refusal(request: Any, session: Session, supplied: str | None, public_url: str | None) -> str | None:
    """Why a cookie-authenticated unsafe request is refused, or None when it may go on."""
    why = cross_site(request, public_url)
    if why is not None:
        return why
    if not supplied:
        return "the CSRF token is missing (header X-CSRF-Token)"
    if not hmac.compare_digest(supplied.encode("utf-8", "replace"), session.csrf.encode()):
        return "the CSRF token is wrong"
    return None


async def form_field(request: Any, name: str) -> str | None:
    """A field of an `application/x-www-form-urlencoded` body (no multipart parser needed);
    None for another content type or a body over FORM_MAX."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        return None
    body = await request.body()
    if len(body) > FORM_MAX:
        return None
    try:
        values = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=50)
    except ValueError:  # more fields than any form here has
        return None
    found = values.get(name)
    return found[0] if found else None
