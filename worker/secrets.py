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

    A line that reaches the log in pieces (the executors cut runaway lines every 16 KiB)
    is masked as one with `stream()`: see `LineMasker`.
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
        # The longest form bounds how much of a piece must be held back until the next
        # piece of the same line arrives (LineMasker).
        self._longest = max((len(f) for f in forms), default=0)
        # Longest first: Python's alternation takes the first alternative that matches
        # at a position, so this makes each match the longest form starting there.
        ordered = sorted(forms, key=lambda f: (-len(f), f))
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __repr__(self) -> str:
        # Never the values: a repr ends up in tracebacks and debug logs.
        return f"Masker({self._count} forms)"

    @property
    def longest(self) -> int:
        """Length of the longest form masked (0 when nothing is): a piece of a line holds
        back `longest - 1` characters, the most of a secret that can hang over its end."""
        return self._longest

    def mask(self, text: str) -> str:
        """`text` with every secret form replaced by `****`."""
        if self._pattern is None or self._pattern.search(text) is None:
            return text  # the common case: one scan, no copy
        return self._mask(text, 0, final=True)[0]

    def stream(self) -> LineMasker:
        """A masker for one line that arrives in pieces (see `LineMasker`)."""
        return LineMasker(self)

    def _extend(self, text: str, pos: int, end: int) -> int:
        """The end of a masked span reaching `end`, grown over every form that starts at
        `pos` or later inside it and runs past its end (overlapping secrets)."""
        pattern = self._pattern
        assert pattern is not None
        while pos < end:
            inner = pattern.match(text, pos)
            if inner is not None and inner.end() > end:
                end = inner.end()
            pos += 1
        return end

    def _mask(self, text: str, covered: int, final: bool) -> tuple[str, int, int]:
        """Mask what of `text` can be decided now: `(masked, cut, covered_after)`.

        `masked` stands for `text[:cut]`. With `final`, `cut` is the end of the text.
        Otherwise more of the same line follows, and the last `longest - 1` characters
        may begin a secret that continues there, so they are not decided yet: `cut`
        stops before them. A form starting before `cut` is at most `longest` long, so
        it lies wholly inside `text` and is found here. A masked span that runs past
        `cut` is written as `****` now and its rest, `covered_after` characters of
        `text[cut:]`, is swallowed when the caller passes them back with the next piece
        (`covered`: that many leading characters of `text` belong to a span whose
        `****` was already written).
        """
        pattern = self._pattern
        if pattern is None:
            return text, len(text), 0
        cut = len(text) if final else max(0, len(text) - (self._longest - 1))
        parts: list[str] = []
        last = 0
        if covered:
            # Positions inside the carried span were not all decidable last time (a longer
            # form may start there): look again now that more text is here.
            end = self._extend(text, 0, covered)
            if end > cut:
                return "", cut, end - cut
            last = end
        found = pattern.search(text, last)
        while found is not None and found.start() < cut:
            start, end = found.span()
            end = self._extend(text, start + 1, end)
            parts.append(text[last:start])
            parts.append(MASK)
            if end > cut:
                return "".join(parts), cut, end - cut
            last = end
            found = pattern.search(text, end)
        parts.append(text[last:cut])
        return "".join(parts), cut, 0


class LineMasker:
    """Masks one physical line handed over in pieces, as if it had come whole.

    The executors cut a line longer than 16 KiB into pieces (bounded memory for a runaway
    line). Masking each piece alone would let a secret that straddles a cut through, half
    in one piece and half in the next. `feed(piece, final=False)` returns the part of
    what it has seen that is decided (masked); it holds back at most `longest - 1`
    characters, the most of a secret that can hang over a cut, until the next piece or
    `final=True` (the line's last piece). The pieces returned, joined, equal
    `masker.mask(whole_line)`: no part of a secret is ever returned, wherever the cuts
    fall. Memory stays bounded by one piece plus the longest secret form.
    """

    def __init__(self, masker: Masker) -> None:
        self._masker = masker
        self._held = ""
        self._covered = 0

    @property
    def pending(self) -> bool:
        """Whether text is held back waiting for the rest of its line."""
        return bool(self._held) or self._covered > 0

    def feed(self, piece: str, final: bool = False) -> str:
        """The masked text decided once `piece` is added; `final` ends the line."""
        text = self._held + piece if self._held else piece
        masked, cut, covered = self._masker._mask(text, self._covered, final)
        if final:
            self._held, self._covered = "", 0
        else:
            self._held, self._covered = text[cut:], covered
        return masked
