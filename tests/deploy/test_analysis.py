"""Analysis windows: deltas of router counters, verdicts, and no data never passing."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st

from deploy.analysis import FAIL, INCONCLUSIVE, PASS, delta, evaluate, judge, percentile
from deploy.config import AnalysisConfig
from deploy.routers.base import Counters

CONFIG = AnalysisConfig(interval=5, min_requests=20, max_error_rate=0.01, max_p99_ms=500, failure_limit=2)


def test_a_window_is_the_difference_between_two_readings() -> None:
    before = {"canary": Counters(responses=1000, errors_5xx=3, rtime_ms=20)}
    after = {"canary": Counters(responses=1100, errors_5xx=8, rtime_ms=25)}
    m = evaluate(before, after, CONFIG)
    assert (m.requests, m.errors, m.error_rate, m.latency_ms) == (100, 5, 0.05, 25)
    assert m.verdict == FAIL and "error rate 5.00% > 1.00%" in m.why


def test_within_limits_passes() -> None:
    m = evaluate({"c": Counters(0, 0)}, {"c": Counters(200, 1, 40)}, CONFIG)
    assert m.verdict == PASS and m.error_rate == 0.005


def test_slow_responses_fail() -> None:
    m = evaluate({"c": Counters(0, 0)}, {"c": Counters(50, 0, 800)}, CONFIG)
    assert m.verdict == FAIL and "latency 800 ms > 500 ms" in m.why


def test_fewer_requests_than_min_is_inconclusive_even_when_all_failed() -> None:
    assert evaluate({"c": Counters(0, 0)}, {"c": Counters(19, 19, 9000)}, CONFIG).verdict == INCONCLUSIVE
    assert judge(0, 0, None, AnalysisConfig(min_requests=0)).verdict == INCONCLUSIVE  # zero is never data


def test_a_reset_counter_counts_from_zero() -> None:
    assert delta(Counters(500, 10), Counters(30, 1)) == (30, 1)


def test_several_canary_servers_are_summed_and_latency_weighted() -> None:
    before = {"a": Counters(0, 0), "b": Counters(0, 0)}
    after = {"a": Counters(30, 0, 100), "b": Counters(10, 1, 500)}
    m = evaluate(before, after, CONFIG)
    assert (m.requests, m.errors) == (40, 1) and m.latency_ms == 200


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 10_000), st.integers(1, 1000))
def test_verdict_matches_the_thresholds(requests: int, errors: int, min_requests: int) -> None:
    errors = min(errors, requests)
    config = AnalysisConfig(min_requests=min_requests, max_error_rate=0.02, max_p99_ms=1e9)
    verdict = judge(requests, errors, 1.0, config).verdict
    if requests < min_requests or requests == 0:
        assert verdict == INCONCLUSIVE
    else:
        assert verdict == (FAIL if errors / requests > 0.02 else PASS)


def test_percentile_is_nearest_rank() -> None:
    samples = list(range(1, 101))
    assert percentile(samples, 0.99) == 99 and percentile(samples, 0.5) == 50 and percentile([], 0.99) is None
