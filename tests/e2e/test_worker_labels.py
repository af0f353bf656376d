"""Worker labels end to end: real Redis, `conveyor worker` processes with and without
`--labels` (through CONVEYOR_WORKER_LABELS), the CLI (docs/cluster.md, "Worker labels")."""
from __future__ import annotations

import time
from datetime import datetime

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("executor", ["local"], indirect=True)]


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_a_job_with_runs_on_always_runs_on_a_worker_with_all_its_labels(cluster) -> None:
    cluster.worker("plain", concurrency=2)
    cluster.worker("gpu-box", concurrency=2, CONVEYOR_WORKER_LABELS="linux,gpu")
    pipeline = cluster.pipeline("""
        name: labels
        jobs:
          train: {runs_on: [gpu], steps: [{name: s, script: ["echo training"]}]}
          train-linux: {runs_on: [linux, gpu], steps: [{name: s, script: ["echo training"]}]}
          lint: {steps: [{name: s, script: ["echo lint"]}]}
          unit: {steps: [{name: s, script: ["echo unit"]}]}
          report: {depends_on: [train, lint, unit], runs_on: gpu, steps: [{name: s, script: ["echo report"]}]}
    """)
    plain_workers = set()
    for _ in range(4):  # 12 labelled jobs: a router ignoring labels would send ~half to `plain`
        status = cluster.wait(cluster.submit(pipeline))
        jobs = status["jobs"]
        assert status["status"] == "success", status
        for name in ("train", "train-linux", "report"):
            assert jobs[name]["worker"] == "gpu-box", (name, jobs[name])
        plain_workers |= {jobs["lint"]["worker"], jobs["unit"]["worker"]}
        assert not any("waiting" in job for job in jobs.values())
    # jobs without runs_on still go to any worker (the gpu worker consumes `jobs` too)
    assert plain_workers <= {"plain", "gpu-box"} and "plain" in plain_workers


def test_a_job_no_live_worker_can_take_shows_why_then_fails_no_worker(cluster) -> None:
    cluster.worker("w1", CONVEYOR_WORKER_LABELS="gpu")
    pipeline = cluster.pipeline("""
        name: tpu
        jobs:
          build: {steps: [{name: s, script: ["echo built"]}]}
          infer: {depends_on: [build], runs_on: [tpu], queue_timeout: 3s, steps: [{name: s, script: ["echo never"]}]}
          after: {depends_on: [infer], steps: [{name: s, script: ["echo never"]}]}
    """)
    run_id = cluster.submit(pipeline)
    deadline = time.monotonic() + 30
    while True:
        status = cluster.status(run_id)
        infer = status["jobs"]["infer"]
        if "waiting" in infer or infer["status"] != "pending" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert (infer["status"], infer.get("waiting")) == ("pending", "waiting for a worker with labels tpu"), status
    text = cluster.cli("status", run_id)
    assert text.returncode == 0, text.stderr
    line = next(line for line in text.stdout.splitlines() if " infer " in f" {line} ")
    assert "pending" in line and "waiting for a worker with labels tpu" in line

    final = cluster.wait(run_id, timeout=60)
    jobs = final["jobs"]
    assert final["status"] == "failed"
    assert (jobs["infer"]["status"], jobs["infer"]["reason"]) == ("failed", "no_worker")
    assert "waiting" not in jobs["infer"]
    assert jobs["infer"]["worker"] == "(no worker)"
    waited = ts(jobs["infer"]["finished_at"]) - ts(jobs["build"]["finished_at"])
    # at least its queue_timeout; at most about the reapers' start-up grace (15 s, for the
    # workers starting with them to announce themselves) and a pass
    assert 3.0 <= waited < 30, waited
    # the job after it is skipped at once, as after any failure (its message was moved on)
    assert (jobs["after"]["status"], jobs["after"]["reason"]) == ("skipped", "upstream_failed")
    log = cluster.logs(run_id, "infer")
    assert "queue_timeout of 3s" in log and "labels tpu" in log and "w1 [gpu]" in log
