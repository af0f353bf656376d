"""Blue-green pre-promotion analysis: synthetic requests straight to the green instances.

Before the switch the green servers take no real traffic, so there are no router counters
to judge; instead each green instance gets `min_requests` (at least 20) GET requests on
`/`, and the same thresholds as canary analysis apply, with a real p99 from the samples.
"""
from __future__ import annotations

import http.client
import time
from typing import Sequence

from deploy.analysis import Measurement, judge, percentile
from deploy.config import AnalysisConfig
from deploy.providers.base import Instance

MIN_SAMPLES = 20


def smoke(instances: Sequence[Instance], config: AnalysisConfig, path: str = "/", timeout: float = 2.0) -> Measurement:
    """Send the synthetic requests and judge them: a 5xx or a connection error counts as an error."""
    count = max(config.min_requests, MIN_SAMPLES)
    latencies: list[float] = []
    errors = 0
    for instance in instances:
        for _ in range(count):
            started = time.perf_counter()
            try:
                conn = http.client.HTTPConnection(instance.host, instance.port, timeout=timeout)
                try:
                    conn.request("GET", path, headers={"User-Agent": "conveyor-analysis"})
                    response = conn.getresponse()
                    response.read()
                    if response.status >= 500:
                        errors += 1
                finally:
                    conn.close()
            except (OSError, http.client.HTTPException):
                errors += 1
            latencies.append((time.perf_counter() - started) * 1000)
    return judge(len(latencies), errors, percentile(latencies, 0.99), config)
