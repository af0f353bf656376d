"""API tokens of `conveyor server`: named, scoped, stored only as hashes.

A token is `cvy_` + 43 random URL-safe characters (256 bits), printed once when created.
The store keeps its SHA-256 (a fast hash is right here: the token is random, not a
password a dictionary could guess), its name, its scope and when it was created. Scopes
are ordered, each including the ones before it: read < trigger < approve < admin.

Behaviour is written once in `TokenStore`; a backend supplies four primitives over one
key-value table (Redis hash `conveyor:tokens`, or a SQLite table beside the run state).
"""
from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Literal, Protocol, get_args

from shared.state import state_backend

Scope = Literal["read", "trigger", "approve", "admin"]
SCOPES: tuple[str, ...] = get_args(Scope)
PREFIX = "cvy_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
REDIS_KEY = "conveyor:tokens"


class TokenError(ValueError):
    """A token request that cannot be done (bad name or scope, a name already taken)."""


@dataclass(frozen=True)
class Token:
    """What the store knows of a token (never the token itself)."""

    name: str
    scope: Scope
    created_at: float

    def allows(self, needed: Scope) -> bool:
        """Whether this token's scope includes ``needed``."""
        return SCOPES.index(self.scope) >= SCOPES.index(needed)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenBackend(Protocol):
    """The primitives: one table from token hash to a JSON record."""

    def put_new(self, key: str, value: str) -> bool:
        """Store ``value`` under ``key`` unless the key exists; True when stored."""

    def get(self, key: str) -> str | None: ...

    def delete(self, key: str) -> bool: ...

    def items(self) -> list[tuple[str, str]]: ...


class TokenStore:
    """Create, verify, list and revoke tokens over a ``TokenBackend``."""

    def __init__(self, backend: TokenBackend) -> None:
        self.backend = backend

    def create(self, name: str, scope: str) -> str:
        """A new token for ``name`` with ``scope``; the only time the token is seen."""
        if not _NAME.match(name):
            raise TokenError(f"invalid token name {name!r}: letters, digits, '_.@-', at most 64 characters")
        if scope not in SCOPES:
            raise TokenError(f"unknown scope {scope!r}: one of {', '.join(SCOPES)}")
        if any(token.name == name for token in self.list()):
            raise TokenError(f"a token named {name!r} exists; revoke it first (`conveyor token revoke {name}`)")
        token = PREFIX + secrets.token_urlsafe(32)
        record = json.dumps({"name": name, "scope": scope, "created_at": time.time()})
        if not self.backend.put_new(token_hash(token), record):  # 2^-256: a collision means a bug
            raise TokenError("token collision; try again")
        return token

    def verify(self, token: str | None) -> Token | None:
        """The token's record, or None for a missing, malformed, unknown or revoked one."""
        if not token or not token.startswith(PREFIX) or len(token) > 128:
            return None
        raw = self.backend.get(token_hash(token))
        return _record(raw) if raw is not None else None

    def by_hash(self, digest: str | None) -> Token | None:
        """The live token whose SHA-256 is ``digest`` (what a web session keeps instead of the
        token); None when it was revoked or ``digest`` is not a hash."""
        if not digest or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            return None
        raw = self.backend.get(digest)
        return _record(raw) if raw is not None else None

    def list(self) -> list[Token]:
        """Every live token, by name."""
        return sorted((_record(raw) for _, raw in self.backend.items()), key=lambda token: token.name)

    def revoke(self, name: str) -> bool:
        """Forget the token named ``name``; False when there is none."""
        for key, raw in self.backend.items():
            if _record(raw).name == name:
                return self.backend.delete(key)
        return False


def _record(raw: str) -> Token:
    data = json.loads(raw)
    return Token(str(data["name"]), data["scope"], float(data["created_at"]))


class RedisTokenBackend:
    """Tokens in the Redis hash `conveyor:tokens` of the state store's database."""

    def __init__(self, url: str) -> None:
        import redis

        # As the state store opens it: redis-py reads rediss:// TLS options from the URL.
        self.client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=10)

    def put_new(self, key: str, value: str) -> bool:
        return bool(self.client.hsetnx(REDIS_KEY, key, value))

    def get(self, key: str) -> str | None:
        return self.client.hget(REDIS_KEY, key)

    def delete(self, key: str) -> bool:
        return bool(self.client.hdel(REDIS_KEY, key))

    def items(self) -> list[tuple[str, str]]:
        return list(self.client.hgetall(REDIS_KEY).items())


class SQLiteTokenBackend:
    """Tokens in a table of the embedded state file."""

    SCHEMA = "CREATE TABLE IF NOT EXISTS api_tokens (hash TEXT PRIMARY KEY, record TEXT NOT NULL);"

    def __init__(self, path: str) -> None:
        from shared.sqlite_file import SQLiteFile

        self.file = SQLiteFile(path, self.SCHEMA)

    def put_new(self, key: str, value: str) -> bool:
        with self.file.transaction() as db:
            cursor = db.execute("INSERT OR IGNORE INTO api_tokens (hash, record) VALUES (?, ?)", (key, value))
            return cursor.rowcount == 1

    def get(self, key: str) -> str | None:
        row = self.file.conn().execute("SELECT record FROM api_tokens WHERE hash = ?", (key,)).fetchone()
        return row[0] if row else None

    def delete(self, key: str) -> bool:
        with self.file.transaction() as db:
            return db.execute("DELETE FROM api_tokens WHERE hash = ?", (key,)).rowcount == 1

    def items(self) -> list[tuple[str, str]]:
        return [(row[0], row[1]) for row in self.file.conn().execute("SELECT hash, record FROM api_tokens")]


def open_tokens(state_url: str) -> TokenStore:
    """The token store beside the run state at ``state_url`` (redis:// or sqlite:///)."""
    backend, where = state_backend(state_url)
    if backend == "redis":
        return TokenStore(RedisTokenBackend(where))
    return TokenStore(SQLiteTokenBackend(where))
