"""Suggestions for a misspelt name: the one place "did you mean" is decided."""
from __future__ import annotations

import difflib
from collections.abc import Iterable

# difflib's default: close enough that the suggestion is usually what was meant.
CUTOFF = 0.6


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate ``word`` is probably a typo of: a case-insensitive match first, else
    the nearest by difflib's ratio; None when nothing is close."""
    ordered = sorted(candidates)
    for candidate in ordered:
        if candidate.lower() == word.lower():
            return candidate
    close = difflib.get_close_matches(word, ordered, n=1, cutoff=CUTOFF)
    return close[0] if close else None


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """The hint "did you mean 'x'?" when a candidate is close to ``word``, else None."""
    match = closest(word, candidates)
    return f"did you mean '{match}'?" if match is not None else None
