"""What the differential tests of the Redis/SQLite twins share: results that include the
errors raised, the coverage counter, and the hypothesis settings of a random sequence."""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis.control import currently_in_test_context


@dataclass(frozen=True)
class Raised:
    """An operation raised: only the class is compared (messages may differ in wording)."""

    error: str


def attempt(call: Callable[[], Any]) -> Any:
    """What `call` returned, or `Raised` with the class of what it raised: errors are results too."""
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - every error class is part of the contract
        return Raised(type(exc).__name__)


class Reached(Counter):
    """What the operations reached (on both twins alike: only agreed results are noted). A
    generator that stopped reaching the states a test lists would make the comparison vacuous."""

    def note(self, label: str) -> None:
        self[label] += 1
        if currently_in_test_context():
            event(label)  # shown by --hypothesis-show-statistics


RANDOM_SEQUENCES = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    database=None,  # the checkout is shared; a failure prints its own sequence to replay
    suppress_health_check=[HealthCheck.too_slow],
)
