"""End to end through the CLI on real Redis and Docker, with two worker processes."""
from __future__ import annotations

import base64
import json as jsonlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime

import pytest
import redis

from tests.services import free_port, wait_for_port


IMAGE = "conveyor-test/busybox"


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["docker", "local"], indirect=True)
def test_diamond_runs_across_two_workers(cluster) -> None:
    cluster.worker("w1")
    cluster.worker("w2")
    pipeline = cluster.pipeline(f"""
        name: diamond
        defaults: {{image: "{IMAGE}"}}
        jobs:
          a: {{steps: [{{name: s, script: ["echo from-a"]}}]}}
          b: {{depends_on: [a], steps: [{{name: s, script: ["sleep 1", "echo from-b"]}}]}}
          c: {{depends_on: [a], steps: [{{name: s, script: ["sleep 1", "echo from-c"]}}]}}
          d: {{depends_on: [b, c], steps: [{{name: s, script: ["echo from-d"]}}]}}
    """)
    result = cluster.cli("submit", str(pipeline), "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = result.stdout.strip().splitlines()[0]
    status = cluster.status(run_id)
    assert status["status"] == "success"
    jobs = status["jobs"]
    assert {j["status"] for j in jobs.values()} == {"success"}
    assert ts(jobs["b"]["started_at"]) >= ts(jobs["a"]["finished_at"])
    assert ts(jobs["d"]["started_at"]) >= max(ts(jobs["b"]["finished_at"]), ts(jobs["c"]["finished_at"]))
    # b and c ran side by side, not one after the other
    assert ts(jobs["c"]["started_at"]) < ts(jobs["b"]["finished_at"]) and ts(jobs["b"]["started_at"]) < ts(jobs["c"]["finished_at"])
    assert {jobs[j]["worker"] for j in jobs} <= {"w1", "w2"}
    assert "from-d" in cluster.logs(run_id, "d")


@pytest.mark.slow
def test_failure_skips_dependents_runs_cleanup_and_allows_failure(cluster) -> None:
    cluster.worker("w1")
    cluster.worker("w2")
    pipeline = cluster.pipeline(f"""
        name: failing
        defaults: {{image: "{IMAGE}"}}
        jobs:
          build: {{steps: [{{name: s, script: ["echo ok"]}}]}}
          flaky: {{depends_on: [build], allow_failure: true, steps: [{{name: s, script: ["exit 3"]}}]}}
          test: {{depends_on: [build], steps: [{{name: s, script: ["echo testing", "exit 7", "echo never"]}}]}}
          package: {{depends_on: [test], steps: [{{name: s, script: ["echo package"]}}]}}
          cleanup: {{depends_on: [package], conditional: "failure()", steps: [{{name: s, script: ["echo cleaning"]}}]}}
          after-flaky: {{depends_on: [flaky], steps: [{{name: s, script: ["echo fine"]}}]}}
    """)
    result = cluster.cli("submit", str(pipeline), "--wait")
    assert result.returncode == 1
    run_id = result.stdout.strip().splitlines()[0]
    jobs = cluster.status(run_id)["jobs"]
    assert cluster.status(run_id)["status"] == "failed"
    assert (jobs["test"]["status"], jobs["test"]["reason"], jobs["test"]["exit_code"]) == ("failed", "script_failure", 7)
    assert (jobs["package"]["status"], jobs["package"]["reason"]) == ("skipped", "upstream_failed")
    assert jobs["cleanup"]["status"] == "success"
    assert jobs["flaky"]["status"] == "failed" and jobs["after-flaky"]["status"] == "success"
    test_log = cluster.logs(run_id, "test")
    assert "testing" in test_log and "never" not in test_log


@pytest.mark.slow
def test_retries_with_backoff_then_success(cluster, tmp_path) -> None:
    cluster.worker("w1")
    pipeline = cluster.pipeline(f"""
        name: retrying
        retry_policy: {{max_attempts: 3, backoff_base: 1, backoff_max: 2}}
        jobs:
          flaky:
            image: "{IMAGE}"
            steps:
              - name: s
                script:
                  - echo attempt-$CONVEYOR_JOB
                  - exit 1
    """)
    run_id = cluster.submit(pipeline)
    status = cluster.wait(run_id)
    job = status["jobs"]["flaky"]
    assert job["status"] == "failed" and job["attempts"] == 3
    history = job["attempt_history"]
    assert [a["reason"] for a in history] == ["script_failure"] * 3
    delays = [a["retry_delay"] for a in history[:2]]
    assert 0.75 <= delays[0] <= 1.25 and 1.5 <= delays[1] <= 2.0
    gap = ts(history[1]["started_at"]) - ts(history[0]["finished_at"])
    assert gap >= delays[0] - 0.05


@pytest.mark.slow
def test_step_timeout_and_oom(cluster) -> None:
    cluster.worker("w1")
    pipeline = cluster.pipeline(f"""
        name: limits
        defaults: {{image: "{IMAGE}"}}
        jobs:
          slow: {{steps: [{{name: s, timeout: 2, script: ["echo start", "sleep 60"]}}]}}
          hungry:
            resources: {{memory: 32m}}
            steps: [{{name: s, script: ['x=$(head -c 100000000 /dev/zero | tr "\\0" a); echo done']}}]
    """)
    run_id = cluster.submit(pipeline)
    status = cluster.wait(run_id, timeout=90)
    jobs = status["jobs"]
    assert (jobs["slow"]["status"], jobs["slow"]["reason"]) == ("failed", "timeout")
    assert ts(jobs["slow"]["finished_at"]) - ts(jobs["slow"]["started_at"]) < 2 + 5 + 5
    assert (jobs["hungry"]["status"], jobs["hungry"]["reason"]) == ("failed", "oom")


def test_secrets_are_injected_and_masked_everywhere(cluster) -> None:
    secret = "s3cr3t-Value-9f2c"
    cluster.worker("w1", CONVEYOR_SECRET_API_TOKEN=secret)
    pipeline = cluster.pipeline(f"""
        name: secrets
        jobs:
          use:
            image: "{IMAGE}"
            secrets: [API_TOKEN]
            steps: [{{name: s, script: ['echo "token=$API_TOKEN"', 'test "${{#API_TOKEN}}" = "{len(secret)}"']}}]
    """)
    run_id = cluster.submit(pipeline)
    status = cluster.wait(run_id)
    assert status["jobs"]["use"]["status"] == "success"
    log = cluster.logs(run_id, "use")
    assert "token=****" in log and secret not in log
    client = redis.Redis.from_url(cluster.redis_url)
    for key in client.scan_iter("*"):
        assert secret.encode() not in key
        kind = client.type(key)
        if kind == b"string":
            assert secret.encode() not in (client.get(key) or b"")
        elif kind == b"hash":
            assert all(secret.encode() not in v for v in client.hgetall(key).values())
        elif kind == b"list":
            assert all(secret.encode() not in v for v in client.lrange(key, 0, -1))
        elif kind == b"stream":
            for _, fields in client.xrange(key):
                assert all(secret.encode() not in v for v in fields.values())
    for path in (cluster.tmp / "data").rglob("*.log"):
        assert secret not in path.read_text()


@pytest.mark.slow
def test_cancel_mid_run(cluster) -> None:
    cluster.worker("w1")
    pipeline = cluster.pipeline(f"""
        name: cancelme
        defaults: {{image: "{IMAGE}"}}
        jobs:
          long: {{steps: [{{name: s, script: ["echo started", "sleep 120"]}}]}}
          later: {{depends_on: [long], steps: [{{name: s, script: ["echo later"]}}]}}
    """)
    run_id = cluster.submit(pipeline)
    deadline = time.monotonic() + 60
    while cluster.status(run_id)["jobs"]["long"]["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(1)
    start = time.monotonic()
    assert cluster.cli("cancel", run_id).returncode == 0
    status = cluster.wait(run_id, timeout=30)
    assert time.monotonic() - start < 15
    assert status["status"] == "cancelled"
    assert status["jobs"]["long"]["status"] == "cancelled"
    assert status["jobs"]["later"]["status"] == "cancelled"


@pytest.mark.slow
def test_worker_killed_mid_job_reruns_once_on_other_worker(cluster) -> None:
    victim = cluster.worker("victim", concurrency=1, CONVEYOR_VISIBILITY_TIMEOUT="8")
    pipeline = cluster.pipeline(f"""
        name: survivor
        jobs:
          work: {{image: "{IMAGE}", steps: [{{name: s, script: ["echo begin", "sleep 6", "echo end"]}}]}}
    """)
    run_id = cluster.submit(pipeline)
    deadline = time.monotonic() + 60
    while cluster.status(run_id)["jobs"]["work"]["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    victim.kill(signal.SIGKILL)
    cluster.worker("rescuer", concurrency=1, CONVEYOR_VISIBILITY_TIMEOUT="8")
    status = cluster.wait(run_id, timeout=120)
    job = status["jobs"]["work"]
    assert job["status"] == "success"
    assert job["worker"] == "rescuer"
    assert [a["reason"] for a in job["attempt_history"]] == ["worker_lost", None]
    assert cluster.logs(run_id, "work").count("end") >= 1
    # The killed worker's container outlived it; the worker's next life removes it.
    def leftovers() -> list[str]:
        out = subprocess.run(["docker", "ps", "-aq", "--filter", "label=conveyor.worker=victim"],
                             capture_output=True, text=True, check=True).stdout
        return out.split()
    assert leftovers(), "expected the killed worker's container to be left behind"
    cluster.worker("victim", concurrency=1)
    assert leftovers() == []


@pytest.mark.slow
def test_visibility_timeout_shorter_than_job_runs_once(cluster) -> None:
    cluster.worker("w1", concurrency=2, CONVEYOR_VISIBILITY_TIMEOUT="2")
    cluster.worker("w2", concurrency=2, CONVEYOR_VISIBILITY_TIMEOUT="2")
    pipeline = cluster.pipeline(f"""
        name: long
        jobs:
          work: {{image: "{IMAGE}", steps: [{{name: s, script: ["echo once", "sleep 12"]}}]}}
          next: {{image: "{IMAGE}", depends_on: [work], steps: [{{name: s, script: ["echo next"]}}]}}
    """)
    run_id = cluster.submit(pipeline)
    status = cluster.wait(run_id, timeout=120)
    assert status["status"] == "success"
    assert status["jobs"]["work"]["attempts"] == 1
    assert status["jobs"]["next"]["attempts"] == 1
    assert cluster.logs(run_id, "work").count("$ echo once") == 1


@pytest.mark.slow
def test_pipeline_timeout_cancels_the_run(cluster) -> None:
    cluster.worker("w1")
    pipeline = cluster.pipeline(f"""
        name: deadline
        timeout: 4
        jobs:
          long: {{image: "{IMAGE}", steps: [{{name: s, script: ["sleep 60"]}}]}}
          after: {{image: "{IMAGE}", depends_on: [long], steps: [{{name: s, script: ["echo after"]}}]}}
    """)
    run_id = cluster.submit(pipeline)
    status = cluster.wait(run_id, timeout=60)
    assert status["status"] == "cancelled"
    long = status["jobs"]["long"]
    assert (long["status"], long["reason"]) == ("failed", "timeout")
    assert status["jobs"]["after"]["status"] == "cancelled"
    assert ts(long["finished_at"]) - ts(status["created_at"]) < 4 + 2 + 5 + 5


def test_flower_requires_auth_and_shows_run_and_job(cluster, tmp_path) -> None:

    cluster.worker("w1")
    port = free_port()
    flower = subprocess.Popen([sys.executable, "-m", "coordinator", "flower", "--port", str(port)],
                              env={**cluster.env, "CONVEYOR_FLOWER_AUTH": "admin:pa55word"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert wait_for_port(port, 30), "flower did not listen"
        pipeline = cluster.pipeline(f"""
            name: flowered
            jobs:
              visible: {{image: "{IMAGE}", secrets: [], steps: [{{name: s, script: ["echo hi"]}}]}}
        """)
        run_id = cluster.submit(pipeline)
        cluster.wait(run_id)
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/tasks", timeout=5)
            raise AssertionError("flower answered without credentials")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/tasks")
        request.add_header("Authorization", "Basic " + base64.b64encode(b"admin:pa55word").decode())
        deadline = time.monotonic() + 20
        while True:
            tasks = jsonlib.loads(urllib.request.urlopen(request, timeout=5).read())
            mine = [t for t in tasks.values() if run_id in (t.get("kwargs") or "")]
            if mine or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert mine, tasks
        assert mine[0]["name"] == "conveyor.run_job" and "'job': 'visible'" in mine[0]["kwargs"]
    finally:
        os.killpg(flower.pid, signal.SIGKILL)
        flower.wait(timeout=10)
