"""Flower shows each job's outcome: a real worker and a real `conveyor flower` on Redis.

A job task never raises (a raising chord header would break the chord), so the result
backend keeps SUCCESS for every job; the worker's events carry the outcome instead
(worker/task_events.py, docs/observability.md "Flower"). Checked through Flower's HTTP API.
"""
from __future__ import annotations

import ast
import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from tests.cluster import ROOT, Cluster, running_cluster
from tests.services import free_port, wait_for_port


AUTH = "admin:fl0wer-pw"
FINAL_STATES = {"SUCCESS", "FAILURE", "REVOKED", "SKIPPED"}


class Flower:
    def __init__(self, cluster: Cluster) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "coordinator", "flower", "--port", str(self.port)],
            env={**cluster.env, "CONVEYOR_FLOWER_AUTH": AUTH}, cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )

    def get(self, path: str) -> object:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}")
        request.add_header("Authorization", "Basic " + base64.b64encode(AUTH.encode()).decode())
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)


@pytest.fixture
def cluster_with_flower(tmp_path: Path) -> Iterator[tuple[Cluster, Flower]]:
    with running_cluster(tmp_path, "local") as cluster:
        cluster.worker("flower-w1")
        flower = Flower(cluster)
        try:
            assert wait_for_port(flower.port, 30), "flower did not listen"
            yield cluster, flower
        finally:
            flower.stop()


def job_tasks(flower: Flower, run_id: str) -> dict[str, dict]:
    """Flower's task records of one run, by job name (kwargs are shown as a Python literal)."""
    tasks = flower.get("/api/tasks")
    assert isinstance(tasks, dict)
    found = {}
    for task_id, task in tasks.items():
        kwargs = ast.literal_eval(task.get("kwargs") or "{}")
        if kwargs.get("run_id") == run_id:
            found[kwargs["job"]] = {**task, "uuid": task_id}
    return found


def test_flower_shows_failed_and_skipped_jobs_while_the_chord_carries_on(cluster_with_flower) -> None:
    cluster, flower = cluster_with_flower
    # `bad` fails in the chord header {good, bad}; the chord's body still runs: `after_bad`
    # is skipped (its dependency failed) and `report` (always()) runs.
    pipeline = cluster.pipeline("""
        name: outcomes
        jobs:
          good: {steps: [{name: s, script: ["echo fine"]}]}
          bad: {steps: [{name: s, script: ["echo broken", "exit 3"]}]}
          after_bad: {depends_on: [bad], steps: [{name: s, script: ["echo never"]}]}
          report: {depends_on: [good, bad], conditional: "always()", steps: [{name: s, script: ["echo report"]}]}
    """)
    run_id = cluster.submit(pipeline)
    status = cluster.wait(run_id, timeout=90)
    assert status["status"] == "failed"
    assert {name: job["status"] for name, job in status["jobs"].items()} == {
        "good": "success", "bad": "failed", "after_bad": "skipped", "report": "success"}

    # Events reach Flower asynchronously: wait until every job's task is in a final state.
    deadline = time.monotonic() + 30
    while True:
        tasks = job_tasks(flower, run_id)
        if set(tasks) == set(status["jobs"]) and all(t["state"] in FINAL_STATES for t in tasks.values()):
            break
        if time.monotonic() > deadline:
            pytest.fail(f"Flower never showed every job finished: {json.dumps(tasks, indent=1)}")
        time.sleep(0.5)

    assert tasks["good"]["state"] == "SUCCESS"
    assert tasks["report"]["state"] == "SUCCESS"
    assert tasks["bad"]["state"] == "FAILURE"
    assert "script_failure" in tasks["bad"]["exception"] and "3" in tasks["bad"]["exception"]
    assert tasks["after_bad"]["state"] == "SKIPPED"
    assert "upstream_failed" in tasks["after_bad"]["exception"]
    for task in tasks.values():
        assert task["name"] == "conveyor.run_job"

    # Flower's per-state filter (its "Failed" view) lists the failed job.
    failed = flower.get("/api/tasks?state=FAILURE")
    assert isinstance(failed, dict) and tasks["bad"]["uuid"] in failed

    # The result backend, which chords count on, still holds SUCCESS for the failed job.
    stored = flower.get(f"/api/task/result/{tasks['bad']['uuid']}")
    assert isinstance(stored, dict) and stored["state"] == "SUCCESS"
    assert stored["result"]["status"] == "failed" and stored["result"]["reason"] == "script_failure"
