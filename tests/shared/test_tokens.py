"""API tokens on both backends: created once, stored as hashes, scoped, revocable."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from shared.tokens import TokenError, TokenStore, open_tokens


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.services)])
def tokens(request: pytest.FixtureRequest, tmp_path: Path) -> TokenStore:
    if request.param == "sqlite":
        return open_tokens(f"sqlite:///{tmp_path / 'state.db'}")
    store = open_tokens(request.getfixturevalue("redis_url"))
    for token in store.list():
        store.revoke(token.name)
    return store


def test_a_token_verifies_with_its_name_and_scope_and_only_its_hash_is_stored(tokens: TokenStore) -> None:
    value = tokens.create("ci-bot", "trigger")
    token = tokens.verify(value)
    assert token is not None and (token.name, token.scope) == ("ci-bot", "trigger")
    stored = dict(tokens.backend.items())
    assert value not in str(stored) and hashlib.sha256(value.encode()).hexdigest() in stored


def test_scopes_are_ordered(tokens: TokenStore) -> None:
    approve = tokens.verify(tokens.create("oncall", "approve"))
    assert approve is not None
    assert approve.allows("read") and approve.allows("trigger") and approve.allows("approve")
    assert not approve.allows("admin")


@pytest.mark.parametrize("value", [None, "", "cvy_", "cvy_" + "x" * 43, "not-ours", "cvy_" + "a" * 200])
def test_unknown_and_malformed_tokens_do_not_verify(tokens: TokenStore, value: str | None) -> None:
    tokens.create("someone", "read")
    assert tokens.verify(value) is None


def test_names_are_unique_and_checked_and_scopes_known(tokens: TokenStore) -> None:
    tokens.create("ci-bot", "read")
    with pytest.raises(TokenError, match="exists"):
        tokens.create("ci-bot", "admin")
    with pytest.raises(TokenError, match="invalid token name"):
        tokens.create("../x", "read")
    with pytest.raises(TokenError, match="unknown scope"):
        tokens.create("other", "root")


def test_revoke_forgets_the_token(tokens: TokenStore) -> None:
    value = tokens.create("temp", "read")
    assert tokens.revoke("temp") is True
    assert tokens.verify(value) is None and tokens.revoke("temp") is False
    assert [t.name for t in tokens.list()] == []
