"""The worker's Prometheus exporter, scraped over HTTP as Prometheus would."""
from __future__ import annotations

import threading
import urllib.request
from typing import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from worker import metrics


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = metrics.serve(0, "127.0.0.1")
    yield f"http://127.0.0.1:{server.server_port}/metrics"
    server.shutdown()
    server.server_close()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition: (name, sorted labels) -> value."""
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_job_outcomes_durations_and_active_jobs(endpoint: str) -> None:
    before = scrape(endpoint)
    metrics.job_started()
    metrics.job_started()
    during = scrape(endpoint)
    assert value(during, "conveyor_active_jobs") == value(before, "conveyor_active_jobs") + 2
    metrics.job_finished("success", None, 12.5)
    metrics.job_finished("failed", "oom", 0.2)
    after = scrape(endpoint)
    assert value(after, "conveyor_active_jobs") == value(before, "conveyor_active_jobs")
    assert value(after, "conveyor_jobs_total", status="success", reason="") == \
        value(before, "conveyor_jobs_total", status="success", reason="") + 1
    assert value(after, "conveyor_jobs_total", status="failed", reason="oom") == \
        value(before, "conveyor_jobs_total", status="failed", reason="oom") + 1
    # 12.5 s lands in the 30 s bucket but not the 10 s one
    for le, delta in (("10.0", 0), ("30.0", 1), ("+Inf", 1)):
        name, labels = "conveyor_job_duration_seconds_bucket", {"status": "success", "le": le}
        assert value(after, name, **labels) - value(before, name, **labels) == delta, le
    assert value(after, "conveyor_job_duration_seconds_sum", status="failed") == \
        pytest.approx(value(before, "conveyor_job_duration_seconds_sum", status="failed") + 0.2)


def test_a_skipped_job_counts_without_touching_active_or_duration(endpoint: str) -> None:
    before = scrape(endpoint)
    metrics.job_finished("skipped", "condition_false", 0.0, started=False)
    after = scrape(endpoint)
    assert value(after, "conveyor_jobs_total", status="skipped", reason="condition_false") == \
        value(before, "conveyor_jobs_total", status="skipped", reason="condition_false") + 1
    assert value(after, "conveyor_active_jobs") == value(before, "conveyor_active_jobs")
    assert value(after, "conveyor_job_duration_seconds_count", status="skipped") == 0


def test_unknown_status_and_reason_become_other(endpoint: str) -> None:
    before = scrape(endpoint)
    metrics.job_started()
    metrics.job_finished("run-20260101-abcdef", "job build failed on host-17", 1.0)
    after = scrape(endpoint)
    assert value(after, "conveyor_jobs_total", status="other", reason="other") == \
        value(before, "conveyor_jobs_total", status="other", reason="other") + 1
    assert not any("run-20260101" in str(key) or "host-17" in str(key) for key in after)


def test_latencies_container_ops_and_artifacts(endpoint: str) -> None:
    before = scrape(endpoint)
    metrics.queue_wait(0.3)
    metrics.hop_latency(0.02)
    metrics.hop_latency(-5)  # a clock skewed between machines: counted as 0, not lost
    metrics.container_op("create", "ok")
    metrics.container_op("create", "ok")
    metrics.container_op("pull", "error")
    metrics.artifact_bytes("up", 1000)
    metrics.artifact_bytes("down", 250)
    metrics.artifact_bytes("up", 0)
    metrics.artifact_dedup_hits(3)
    after = scrape(endpoint)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("conveyor_queue_wait_seconds_count") == 1
    assert delta("conveyor_queue_wait_seconds_bucket", le="0.25") == 0
    assert delta("conveyor_queue_wait_seconds_bucket", le="0.5") == 1
    assert delta("conveyor_hop_latency_seconds_count") == 2
    assert delta("conveyor_hop_latency_seconds_bucket", le="0.005") == 1  # the skewed one
    assert delta("conveyor_hop_latency_seconds_sum") == pytest.approx(0.02)
    assert delta("conveyor_container_operations_total", op="create", outcome="ok") == 2
    assert delta("conveyor_container_operations_total", op="pull", outcome="error") == 1
    assert delta("conveyor_artifact_bytes_total", direction="up") == 1000
    assert delta("conveyor_artifact_bytes_total", direction="down") == 250
    assert delta("conveyor_artifact_dedup_hits_total") == 3


def test_deployment_gauge_follows_transitions(endpoint: str) -> None:
    metrics.deployment_transition("staging-gauge", "canary", None, "pending")
    metrics.deployment_transition("staging-gauge", "canary", None, "pending")
    metrics.deployment_transition("staging-gauge", "canary", "pending", "running")
    samples = scrape(endpoint)
    labels = {"environment": "staging-gauge", "strategy": "canary"}
    assert value(samples, "conveyor_deployments", state="pending", **labels) == 1
    assert value(samples, "conveyor_deployments", state="running", **labels) == 1
    metrics.deployment_transition("staging-gauge", "canary", "running", "succeeded")
    samples = scrape(endpoint)
    assert value(samples, "conveyor_deployments", state="running", **labels) == 0
    assert value(samples, "conveyor_deployments", state="succeeded", **labels) == 1


def test_open_ended_labels_are_capped(endpoint: str) -> None:
    for index in range(metrics.MAX_LABEL_VALUES + 10):
        metrics.deployment_transition(f"review-{index}", "rolling", None, "running")
    samples = scrape(endpoint)
    environments = {dict(labels)["environment"] for name, labels in samples if name == "conveyor_deployments"}
    assert len(environments) <= metrics.MAX_LABEL_VALUES + 1
    assert "other" in environments
    assert "review-0" in environments  # values seen first keep their own series


def test_worker_info_and_process_metrics(endpoint: str) -> None:
    metrics.worker_info("w-info", "docker", "9.9.9")
    samples = scrape(endpoint)
    assert value(samples, "conveyor_worker_info", worker="w-info", executor="docker", version="9.9.9") == 1
    assert value(samples, "process_resident_memory_bytes") > 0


def test_updates_are_thread_safe(endpoint: str) -> None:
    before = scrape(endpoint)

    def work() -> None:
        for _ in range(500):
            metrics.artifact_dedup_hits(1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = scrape(endpoint)
    assert value(after, "conveyor_artifact_dedup_hits_total") - value(before, "conveyor_artifact_dedup_hits_total") == 4000


def test_calls_are_safe_without_a_server() -> None:
    # Nothing serves this registry here; the calls must still not raise, even on odd input.
    metrics.job_finished("success", None, float("nan"))
    metrics.artifact_bytes("sideways", 10)
    metrics.artifact_dedup_hits(-1)
    metrics.deployment_transition("prod", "blue_green", "never-entered", None)
    metrics.container_op(None, None)  # type: ignore[arg-type]


def test_serve_reports_a_busy_port(endpoint: str) -> None:
    busy = int(endpoint.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(OSError):
        metrics.serve(busy, "127.0.0.1")
