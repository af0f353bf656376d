"""Is a webhook delivery authentic? One check per forge (spec server.md, "Webhooks").

| forge | header | value |
|---|---|---|
| GitHub | `X-Hub-Signature-256` | `sha256=` + hex HMAC-SHA256 of the raw body, keyed with the secret |
| Gitea | `X-Gitea-Signature` | hex HMAC-SHA256 of the raw body (no prefix) |
| GitLab | `X-Gitlab-Token` | the secret itself |

Every check

* compares with `hmac.compare_digest`, so the time taken does not tell an attacker how
  many leading characters were right;
* returns False — never raises — for a missing header, a malformed one (wrong prefix,
  wrong length, not hex, not ASCII), or a wrong value: the server answers 401 either way
  and must not crash on hostile input;
* returns False when the configured secret is empty: an empty HMAC key or token is a
  misconfiguration (an unset environment variable), and accepting it would let anyone
  who guesses that sign deliveries;
* accepts upper- or lower-case hex (the forges send lower case; case carries no secret)
  and ignores blanks around the GitHub and Gitea headers; a GitLab token is compared
  exactly, since it is the secret itself.

Always verify the raw body bytes as received, before any JSON parsing or re-encoding.
"""
from __future__ import annotations

import hashlib
import hmac
import string

_HEX = frozenset(string.hexdigits)
_SHA256_HEX_LENGTH = 64
GITHUB_PREFIX = "sha256="


def _hex_digest(secret: bytes, body: bytes) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def _equal_hex(expected: str, header: str) -> bool:
    """`header` is exactly a SHA-256 hex digest equal to `expected` (constant time once well formed)."""
    # Shape checks leak only the header's own shape, which the sender already knows.
    if len(header) != _SHA256_HEX_LENGTH or not _HEX.issuperset(header):
        return False
    return hmac.compare_digest(expected.encode("ascii"), header.lower().encode("ascii"))


def verify_github(secret: bytes, body: bytes, header: str | None) -> bool:
    """True when `header` (X-Hub-Signature-256) is `sha256=<hex HMAC-SHA256 of body keyed with secret>`."""
    if not secret or not isinstance(header, str):
        return False
    value = header.strip()
    if not value.startswith(GITHUB_PREFIX):
        return False
    return _equal_hex(_hex_digest(secret, body), value[len(GITHUB_PREFIX):])


def verify_gitea(secret: bytes, body: bytes, header: str | None) -> bool:
    """True when `header` (X-Gitea-Signature) is the hex HMAC-SHA256 of `body` keyed with `secret`."""
    if not secret or not isinstance(header, str):
        return False
    return _equal_hex(_hex_digest(secret, body), header.strip())


def verify_gitlab(secret: bytes, header: str | None) -> bool:
    """True when `header` (X-Gitlab-Token) equals `secret` (compared as UTF-8 bytes, constant time)."""
    if not secret or not isinstance(header, str):
        return False
    try:
        token = header.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from a lenient header decoder
        return False
    return hmac.compare_digest(secret, token)
