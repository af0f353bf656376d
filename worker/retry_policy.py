"""When and how long to retry a failed job or step: pure functions, no I/O, no clock.

Like Dramatiq's retries middleware, the policy lives outside the worker loop: the job
runner describes what failed (a ``JobFailure``) and what happened before (the attempt
history), and ``next_retry`` answers with a delay or None.
"""
from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from shared.plan import RetryPolicy
from shared.state.base import FAILED, RETRYING, AttemptRecord

JITTER = 0.25  # ±25 %: spreads retries of many jobs that failed together
INFRA_RETRIES = 3  # engine hiccups are retried on top of the job's own retry_count
# A step's own retries (`retry_count` on a step) wait less: the job is already running and
# holds its workspace and slot.
STEP_BACKOFF_BASE_MAX = 5.0
STEP_BACKOFF_MAX = 30.0

# What a failure counts against: the job's own `retry_count` ("script"), the worker's
# budget for engine and store hiccups ("infrastructure"), or nothing ("never": retrying
# would only repeat it, or someone asked for the stop).
RetryClass = Literal["script", "infrastructure", "never"]


@dataclass(frozen=True)
class JobFailure:
    """Why an attempt failed: the reason recorded for the job, the exit code of the step
    that failed it (None when no step ran to an end), and what a retry counts against."""

    reason: str
    exit_code: int | None = None
    retry: RetryClass = "script"


def retry_delay(attempt: int, base: float, maximum: float, rng: random.Random | None = None) -> float:
    """Delay before retry number ``attempt`` (1 = first retry): base·2^(n-1), capped, ±25 %."""
    raw = min(maximum, base * (2 ** max(attempt - 1, 0)))
    spread = (rng or random).uniform(1 - JITTER, 1 + JITTER)
    return max(0.0, min(maximum, raw * spread)) if maximum > 0 else 0.0


def previous_failures(attempts: Iterable[AttemptRecord]) -> tuple[int, int]:
    """(script-level failures, infrastructure failures) of earlier attempts; a lost
    worker's attempt counts as neither (the job did not fail, its worker did)."""
    script = infra = 0
    for attempt in attempts:
        if attempt.status in (FAILED, RETRYING):
            if attempt.reason == "infrastructure":
                infra += 1
            elif attempt.reason != "worker_lost":
                script += 1
    return script, infra


def next_retry(failure: JobFailure, earlier: Iterable[AttemptRecord], retry_count: int, policy: RetryPolicy,
               rng: random.Random | None = None) -> float | None:
    """Seconds to wait before the next attempt, or None when the job has failed for good.

    ``retry_count`` and ``policy`` are the job's (from the plan); ``earlier`` is the job's
    attempt history before this attempt.
    """
    script, infra = previous_failures(earlier)
    if failure.retry == "infrastructure" and infra < INFRA_RETRIES:
        return retry_delay(infra + 1, policy.backoff_base, policy.backoff_max, rng)
    if failure.retry == "script" and script < retry_count:
        return retry_delay(script + 1, policy.backoff_base, policy.backoff_max, rng)
    return None


def step_retry_delay(retry: int, policy: RetryPolicy, rng: random.Random | None = None) -> float:
    """Delay before a step's retry number ``retry`` (1 = first) inside a running job."""
    return retry_delay(retry, min(policy.backoff_base, STEP_BACKOFF_BASE_MAX), STEP_BACKOFF_MAX, rng)
