"""Analysis windows: is the new version answering well enough, judged from the router's counters?

A window compares the canary servers' cumulative counters at its end with those at its
start. Fewer responses than `min_requests` make it inconclusive: no data is not success.
The error rate is 5xx responses over all responses; the latency figure is the router's
average response time (HAProxy's `rtime`, over its last 1024 requests), which stands in
for the p99 the router cannot give. Pure functions only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence, TypedDict

from deploy.config import AnalysisConfig
from deploy.routers.base import Counters

PASS = "pass"
FAIL = "fail"
INCONCLUSIVE = "inconclusive"


class AnalysisResult(TypedDict):
    """A Measurement as JSON: the fields of an `analysis` event, and the blue-green smoke result."""

    requests: int
    errors: int
    error_rate: float | None
    latency_ms: float | None
    verdict: str  # PASS | FAIL | INCONCLUSIVE
    why: str


@dataclass(frozen=True)
class Measurement:
    """One window's figures and verdict."""

    requests: int
    errors: int
    error_rate: float | None
    latency_ms: float | None
    verdict: str
    why: str

    def to_dict(self) -> AnalysisResult:
        return {"requests": self.requests, "errors": self.errors, "error_rate": self.error_rate,
                "latency_ms": self.latency_ms, "verdict": self.verdict, "why": self.why}


def delta(before: Counters, after: Counters) -> tuple[int, int]:
    """(responses, 5xx) between two readings; a counter that went down was reset (server re-created)."""
    if after.responses < before.responses or after.errors_5xx < before.errors_5xx:
        return after.responses, after.errors_5xx
    return after.responses - before.responses, after.errors_5xx - before.errors_5xx


def judge(requests: int, errors: int, latency_ms: float | None, config: AnalysisConfig) -> Measurement:
    """The verdict on a window's totals."""
    rate = errors / requests if requests else None
    if requests < config.min_requests or requests == 0:
        return Measurement(requests, errors, rate, latency_ms, INCONCLUSIVE,
                           f"{requests} responses, fewer than min_requests {config.min_requests}")
    reasons = []
    if rate is not None and rate > config.max_error_rate:
        reasons.append(f"error rate {rate:.2%} > {config.max_error_rate:.2%}")
    if latency_ms is not None and latency_ms > config.max_p99_ms:
        reasons.append(f"latency {latency_ms:.0f} ms > {config.max_p99_ms:.0f} ms")
    if reasons:
        return Measurement(requests, errors, rate, latency_ms, FAIL, "; ".join(reasons))
    return Measurement(requests, errors, rate, latency_ms, PASS, f"{requests} responses within limits")


def evaluate(baseline: Mapping[str, Counters], current: Mapping[str, Counters], config: AnalysisConfig) -> Measurement:
    """Judge the window between two readings of the same servers (servers missing from either are skipped)."""
    requests = errors = 0
    weighted_latency = 0.0
    for name, after in current.items():
        before = baseline.get(name, Counters())
        n, e = delta(before, after)
        requests += n
        errors += e
        weighted_latency += after.rtime_ms * n
    latency = weighted_latency / requests if requests else None
    return judge(requests, errors, latency, config)


def percentile(samples: Sequence[float], fraction: float) -> float | None:
    """The nearest-rank percentile (0 < fraction <= 1) of the samples."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]
