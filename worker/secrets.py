"""Job secrets: read from the worker's own environment, and masked out of everything logged.

A job lists secret *names* (`secrets: [DEPLOY_TOKEN]`); only names travel through the
broker, task arguments and the state store. The worker that runs the job looks each one
up in its own environment as `CONVEYOR_SECRET_<NAME>` (`load_secrets`) and builds a
`Masker` from the values, which every line of output passes through before it is stored
or written anywhere. See docs/logs-and-secrets.md.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import quote, quote_plus

ENV_PREFIX = "CONVEYOR_SECRET_"
MASK = "****"

# Same rule the pipeline schema applies to `secrets:` entries: a name that could not be
# an environment variable could never be configured, so it is a caller bug.
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class MissingSecret(Exception):
    """Secrets a job lists that the worker's environment does not provide (or leaves empty)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names: list[str] = list(names)
        wanted = ", ".join(f"{ENV_PREFIX}{name}" for name in self.names)
        plural = "s" if len(self.names) != 1 else ""
        super().__init__(
            f"missing secret{plural} {', '.join(self.names)}: "
            f"set {wanted} (non-empty) in the worker's environment"
        )

    def __reduce__(self) -> tuple[type, tuple[list[str]]]:
        # Celery pickles exceptions across processes; the default would call
        # MissingSecret(message) and turn the names into the message's characters.
        return (type(self), (self.names,))


def load_secrets(names: Sequence[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The value of `CONVEYOR_SECRET_<NAME>` for each listed name, keyed by name.

    Names are case-sensitive, as environment variables are. Every missing name is
    reported in one MissingSecret, so a misconfigured worker is fixed in one go. An
    empty value counts as missing: it cannot be masked and is almost always a
    deployment mistake (`export CONVEYOR_SECRET_TOKEN=$UNSET_VAR`).
    """
    env = os.environ if environ is None else environ
    found: dict[str, str] = {}
    missing: list[str] = []
    for name in names:
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise ValueError(f"invalid secret name {name!r}: expected {NAME_PATTERN.pattern}")
        if name in found or name in missing:
            continue
        value = env.get(ENV_PREFIX + name)
        if value:
            found[name] = value
        else:
            missing.append(name)
    if missing:
        raise MissingSecret(missing)
    return found


def _base64_forms(value: str) -> set[str]:
    """The ways `value` can show up inside base64 text, standard and URL-safe alphabets.

    A secret embedded in a longer encoded string (`user:token` in a Basic auth header)
    starts at byte offset 0, 1 or 2 of a 3-byte group, and each offset encodes it to
    different characters. For each offset, keep only the characters that depend on the
    secret's bytes alone: drop the leading ones mixed with the bytes before it and the
    last one mixed with whatever follows (the GitHub Actions runner does the same).
    """
    data = value.encode("utf-8")
    forms = {base64.b64encode(data).decode("ascii")}  # the whole value encoded, padding included
    for shift, skip in ((0, 0), (1, 2), (2, 3)):
        encoded = base64.b64encode(b"\0" * shift + data).decode("ascii").rstrip("=")
        end = len(encoded) - (1 if (len(data) + shift) % 3 else 0)
        forms.add(encoded[skip:end])
    forms |= {f.replace("+", "-").replace("/", "_") for f in forms}
    return forms


def _url_forms(value: str) -> set[str]:
    """`value` percent-encoded as URLs and form bodies carry it, upper- and lower-case hex."""
    forms = {quote(value, safe=""), quote_plus(value, safe="")}
    forms |= {re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), f) for f in forms}
    return forms


def secret_forms(value: str) -> set[str]:
    """Every string that reveals `value`: itself, its lines, their base64 and URL encodings."""
    plain = {value}
    # A multi-line secret (a PEM key) reaches the log one line at a time.
    plain |= {line.strip() for line in value.splitlines() if line.strip()}
    forms = set(plain)
    for text in plain:
        forms |= _base64_forms(text) | _url_forms(text)
    return forms


class Masker:
    """Replaces every occurrence of any secret, in any of its forms, with `****`.

    Secrets shorter than `min_length` characters (and encoded forms that short) are not
    masked: masking a one- or two-character value like `a` or `42` would shred every
    log line while hiding nothing an attacker could not guess. Where occurrences of
    different secrets overlap, the whole overlapping span is masked, so no part of
    either leaks.
    """

    def __init__(self, secrets: Iterable[str], min_length: int = 3) -> None:
        if min_length < 1:
            raise ValueError(f"min_length must be at least 1, got {min_length!r}")
        forms: set[str] = set()
        for value in secrets:
            if len(value) >= min_length:
                forms |= secret_forms(value)
        forms = {f for f in forms if len(f) >= min_length}
        self._count = len(forms)
        # Longest first: Python's alternation takes the first alternative that matches
        # at a position, so this makes each match the longest form starting there.
        ordered = sorted(forms, key=lambda f: (-len(f), f))
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __repr__(self) -> str:
        # Never the values: a repr ends up in tracebacks and debug logs.
        return f"Masker({self._count} forms)"

    def mask(self, text: str) -> str:
        """`text` with every secret form replaced by `****`."""
        pattern = self._pattern
        if pattern is None:
            return text
        found = pattern.search(text)
        if found is None:  # the common case: one scan, no copy
            return text
        parts: list[str] = []
        last = 0
        while found is not None:
            start, end = found.span()
            # A match hides [start, end); another form may start inside it and run past
            # its end (overlapping secrets). Extend over those before masking.
            pos = start + 1
            while pos < end:
                inner = pattern.match(text, pos)
                if inner is not None and inner.end() > end:
                    end = inner.end()
                pos += 1
            parts.append(text[last:start])
            parts.append(MASK)
            last = end
            found = pattern.search(text, end)
        parts.append(text[last:])
        return "".join(parts)
