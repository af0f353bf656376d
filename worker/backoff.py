"""Exponential backoff with jitter for job and step retries."""
from __future__ import annotations

import random

JITTER = 0.25  # ±25 %: spreads retries of many jobs that failed together


def retry_delay(attempt: int, base: float, maximum: float, rng: random.Random | None = None) -> float:
    """Delay before retry number ``attempt`` (1 = first retry): base·2^(n-1), capped, ±25 %."""
    raw = min(maximum, base * (2 ** max(attempt - 1, 0)))
    spread = (rng or random).uniform(1 - JITTER, 1 + JITTER)
    return max(0.0, min(maximum, raw * spread)) if maximum > 0 else 0.0
