"""The one "did you mean": a case-insensitive match wins, then the nearest spelling."""
from __future__ import annotations

from shared.suggest import closest, did_you_mean


def test_a_case_insensitive_match_wins_over_a_closer_spelling() -> None:
    assert closest("Build", ["build", "Buildx"]) == "build"


def test_the_nearest_spelling_or_nothing() -> None:
    assert closest("tset", ["test", "deploy"]) == "test"
    assert closest("zzz", ["test", "deploy"]) is None


def test_the_hint_text() -> None:
    assert did_you_mean("dependson", ["depends_on", "steps"]) == "did you mean 'depends_on'?"
    assert did_you_mean("zzz", ["steps"]) is None
