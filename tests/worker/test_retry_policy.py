"""The retry policy: pure decisions from a failure and the attempt history."""
from __future__ import annotations

import random

import pytest

from shared.plan import RetryPolicy
from shared.state.base import AttemptRecord
from worker.retry_policy import (
    INFRA_RETRIES,
    JobFailure,
    next_retry,
    previous_failures,
    retry_delay,
    step_retry_delay,
)

POLICY = RetryPolicy(backoff_base=5.0, backoff_max=120.0)


def attempt(status: str, reason: str | None) -> AttemptRecord:
    return AttemptRecord(1, "w", "t", "t", status, None, reason, None)


def test_previous_failures_split_infrastructure_from_script() -> None:
    history = [attempt("retrying", "script_failure"), attempt("retrying", "infrastructure"),
               attempt("failed", "worker_lost"), attempt("running", None)]
    assert previous_failures(history) == (1, 1)


def test_backoff_doubles_caps_and_jitters() -> None:
    rng = random.Random(7)
    for number, raw in ((1, 5), (2, 10), (3, 20), (6, 120), (9, 120)):
        values = [retry_delay(number, 5, 120, rng) for _ in range(200)]
        assert min(values) >= raw * 0.75 - 1e-9 and max(values) <= min(raw * 1.25, 120) + 1e-9
        assert max(values) - min(values) > 0  # jitter spreads retries


def test_script_failures_use_the_jobs_retry_count() -> None:
    failure = JobFailure("script_failure", 1)
    assert next_retry(failure, [], retry_count=0, policy=POLICY) is None
    first = next_retry(failure, [], retry_count=2, policy=POLICY, rng=random.Random(1))
    assert first is not None and 5 * 0.75 <= first <= 5 * 1.25
    second = next_retry(failure, [attempt("retrying", "script_failure")], 2, POLICY, random.Random(1))
    assert second is not None and 10 * 0.75 <= second <= 10 * 1.25
    spent = [attempt("retrying", "script_failure")] * 2
    assert next_retry(failure, spent, 2, POLICY) is None


def test_infrastructure_has_its_own_budget_on_top_of_retry_count() -> None:
    failure = JobFailure("infrastructure", retry="infrastructure")
    # retry_count 0 does not stop engine hiccups from being retried
    assert next_retry(failure, [], retry_count=0, policy=POLICY) is not None
    history = [attempt("retrying", "infrastructure")] * (INFRA_RETRIES - 1)
    assert next_retry(failure, history, 0, POLICY) is not None
    history.append(attempt("retrying", "infrastructure"))
    assert next_retry(failure, history, 0, POLICY) is None
    # and script failures do not spend it
    assert next_retry(failure, [attempt("retrying", "script_failure")] * 5, 0, POLICY) is not None


@pytest.mark.parametrize("reason", ["cancelled", "integrity_error", "script_failure", "infrastructure"])
def test_never_means_never(reason: str) -> None:
    assert next_retry(JobFailure(reason, retry="never"), [], retry_count=9, policy=POLICY) is None


def test_a_lost_worker_is_not_the_jobs_failure() -> None:
    history = [attempt("failed", "worker_lost")] * 4
    assert next_retry(JobFailure("script_failure", 1), history, 1, POLICY) is not None


def test_step_retries_wait_less_than_job_retries() -> None:
    slow = RetryPolicy(backoff_base=60.0, backoff_max=600.0)
    delays = [step_retry_delay(n, slow, random.Random(n)) for n in range(1, 10)]
    assert max(delays) <= 30.0
    assert delays[0] <= 5 * 1.25
