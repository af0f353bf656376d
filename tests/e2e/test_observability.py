"""A worker process with `--metrics-port` and `--log-format json`, observed from outside."""
from __future__ import annotations

import json
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.services import free_port


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.parametrize("executor", ["local"], indirect=True)
def test_metrics_and_json_logs_of_a_running_worker(cluster) -> None:
    port = free_port()
    worker = cluster.worker("obs-w1", CONVEYOR_METRICS_PORT=str(port), CONVEYOR_LOG_FORMAT="json")
    pipeline = cluster.pipeline("""
        name: observed
        jobs:
          build: {steps: [{name: s, script: ["echo built"]}]}
          test: {depends_on: [build], steps: [{name: s, script: ["echo tested"]}]}
    """)
    result = cluster.cli("submit", str(pipeline), "--wait")
    assert result.returncode == 0, result.stdout + result.stderr

    samples = scrape(port)
    assert value(samples, "conveyor_worker_info", worker="obs-w1", executor="local",
                 version=_version()) == 1
    assert value(samples, "conveyor_active_jobs") == 0
    records = [json.loads(line) for line in worker.output if line.startswith("{")]
    celery_lines = [r for r in records if r["logger"].startswith("celery.")]
    assert any(r["message"].endswith(" ready.") for r in celery_lines)
    received = [r for r in celery_lines if "conveyor.run_job" in r["message"] and "received" in r["message"]]
    assert len(received) >= 2  # one per job (more when a job waited for its dependency)
    assert all({"ts", "level", "logger", "message"} <= set(r) for r in records)
    # Every line the worker wrote after this command's own start-up messages is JSON.
    started = next(i for i, line in enumerate(worker.output) if line.startswith("{"))
    not_json = [line for line in worker.output[started:] if line.strip() and not line.startswith("{")]
    assert not not_json, not_json

    # Needs the job runner to report job_started/job_finished (worker/job_runner.py).
    assert value(samples, "conveyor_jobs_total", status="success", reason="") == 2, \
        {k: v for k, v in samples.items() if k[0].startswith("conveyor_jobs")}
    assert value(samples, "conveyor_job_duration_seconds_count", status="success") == 2


def _version() -> str:
    from worker.metrics import conveyor_version

    return conveyor_version()


@pytest.mark.parametrize("executor", ["local"], indirect=True)
def test_metrics_port_already_taken_is_a_clear_error(cluster) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cluster.cli("worker", "--name", "obs-busy", "--metrics-port", str(port), timeout=60)
    assert result.returncode != 0
    assert f"cannot serve metrics on 0.0.0.0:{port}" in result.stderr, result.stderr
