"""Webhook authenticity: the right signature verifies, anything else is False, nothing raises."""
from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, strategies as st

from coordinator.triggers import signatures
from coordinator.triggers.signatures import verify_gitea, verify_github, verify_gitlab

# GitHub's own example ("Validating webhook deliveries"): this secret and body give this signature.
GITHUB_SECRET = b"It's a Secret to Everybody"
GITHUB_BODY = b"Hello, World!"
GITHUB_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"

SECRET = b"s3cret"
BODY = b'{"ref": "refs/heads/main"}'
HEX = hmac.new(SECRET, BODY, hashlib.sha256).hexdigest()


def test_github_documented_example_verifies() -> None:
    assert verify_github(GITHUB_SECRET, GITHUB_BODY, GITHUB_SIGNATURE) is True


@pytest.mark.parametrize("header", [
    GITHUB_SIGNATURE.upper().replace("SHA256=", "sha256="),  # upper-case hex
    f"  {GITHUB_SIGNATURE} ",  # surrounding blanks, as some proxies leave them
])
def test_github_accepts_harmless_variations(header: str) -> None:
    assert verify_github(GITHUB_SECRET, GITHUB_BODY, header) is True


@pytest.mark.parametrize("secret, body, header", [
    (b"another secret", GITHUB_BODY, GITHUB_SIGNATURE),
    (GITHUB_SECRET, b"Hello, World?", GITHUB_SIGNATURE),
    (GITHUB_SECRET, GITHUB_BODY, None),
    (GITHUB_SECRET, GITHUB_BODY, ""),
    (GITHUB_SECRET, GITHUB_BODY, GITHUB_SIGNATURE[len("sha256="):]),  # no prefix
    (GITHUB_SECRET, GITHUB_BODY, "sha1=" + GITHUB_SIGNATURE[len("sha256="):]),
    (GITHUB_SECRET, GITHUB_BODY, "SHA256=" + GITHUB_SIGNATURE[len("sha256="):]),
    (GITHUB_SECRET, GITHUB_BODY, GITHUB_SIGNATURE[:-1]),  # truncated
    (GITHUB_SECRET, GITHUB_BODY, GITHUB_SIGNATURE + "0"),  # too long
    (GITHUB_SECRET, GITHUB_BODY, GITHUB_SIGNATURE[:-1] + "g"),  # not hex
    (GITHUB_SECRET, GITHUB_BODY, GITHUB_SIGNATURE[:-1] + "é"),  # not ASCII
    (GITHUB_SECRET, GITHUB_BODY, "sha256=" + "٣" * 64),  # digits, but not ASCII ones
    (b"", GITHUB_BODY, "sha256=" + hmac.new(b"", GITHUB_BODY, hashlib.sha256).hexdigest()),  # empty secret
])
def test_github_refuses(secret: bytes, body: bytes, header: str | None) -> None:
    assert verify_github(secret, body, header) is False


def test_gitea_signature_is_bare_hex() -> None:
    assert verify_gitea(SECRET, BODY, HEX) is True
    assert verify_gitea(SECRET, BODY, HEX.upper()) is True
    assert verify_gitea(SECRET, BODY, "sha256=" + HEX) is False
    assert verify_gitea(SECRET, BODY + b" ", HEX) is False
    assert verify_gitea(b"other", BODY, HEX) is False
    assert verify_gitea(SECRET, BODY, None) is False
    assert verify_gitea(SECRET, BODY, HEX[:-2]) is False
    assert verify_gitea(b"", BODY, hmac.new(b"", BODY, hashlib.sha256).hexdigest()) is False


def test_gitlab_token_is_compared_as_is() -> None:
    assert verify_gitlab(SECRET, "s3cret") is True
    assert verify_gitlab(SECRET, "s3cret ") is False  # a token is not trimmed: it is the secret itself
    assert verify_gitlab(SECRET, "S3CRET") is False
    assert verify_gitlab(SECRET, None) is False
    assert verify_gitlab(SECRET, "") is False
    assert verify_gitlab(b"", "") is False  # an unset secret never matches an absent token
    assert verify_gitlab("clé".encode(), "clé") is True
    assert verify_gitlab(SECRET, "\udcff") is False  # a lone surrogate from a lenient decoder


def test_every_check_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(signatures.hmac, "compare_digest", spy)
    assert verify_github(GITHUB_SECRET, GITHUB_BODY, GITHUB_SIGNATURE)
    assert verify_gitea(SECRET, BODY, HEX)
    assert verify_gitlab(SECRET, "s3cret")
    assert len(calls) == 3


@given(secret=st.binary(min_size=1, max_size=32), body=st.binary(max_size=200), header=st.text(max_size=80))
def test_arbitrary_headers_never_raise_and_never_verify(secret: bytes, body: bytes, header: str) -> None:
    digest = hmac.new(secret, body, hashlib.sha256).hexdigest()
    assert verify_github(secret, body, header) is (header.strip().lower() == "sha256=" + digest
                                                  and header.strip().startswith("sha256="))
    assert verify_gitea(secret, body, header) is (header.strip().lower() == digest)
    assert verify_gitlab(secret, header) is (utf8(header) == secret)


def utf8(text: str) -> bytes | None:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return None


@given(secret=st.binary(min_size=1, max_size=32), body=st.binary(max_size=200))
def test_the_right_signature_always_verifies(secret: bytes, body: bytes) -> None:
    digest = hmac.new(secret, body, hashlib.sha256).hexdigest()
    assert verify_github(secret, body, "sha256=" + digest)
    assert verify_gitea(secret, body, digest)
