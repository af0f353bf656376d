"""20 worker SIGKILLs during a long pipeline: no job lost, one live attempt at a time, success."""
from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest

from shared.state.base import RUNNING, epoch_seconds
from shared.state.redis import RedisState
from tests.faults.cluster import ReapingWorker, overlapping_attempts

pytestmark = pytest.mark.slow

KILLS = 20
WORKERS = 4
JOB_SECONDS = 3
WAVES, WIDTH = 2, 12


def long_pipeline(marks: Path) -> str:
    """Waves of parallel `sleep`s joined by one job each: chains, groups and chord bodies."""
    def step(seconds: float) -> str:
        # The marks file tells what really ran when, whatever the state store says.
        return (f'{{name: s, script: ["echo \\"$CONVEYOR_JOB start $(date +%s.%N)\\" >> {marks}", '
                f'"sleep {seconds}", "echo \\"$CONVEYOR_JOB end $(date +%s.%N)\\" >> {marks}"]}}')

    lines = ["name: long", "jobs:", f"  setup: {{steps: [{step(1)}]}}"]
    previous = "setup"
    for wave in range(1, WAVES + 1):
        names = [f"wave{wave}-{i}" for i in range(1, WIDTH + 1)]
        for name in names:
            lines.append(f"  {name}: {{depends_on: [{previous}], steps: [{step(JOB_SECONDS)}]}}")
        previous = f"join{wave}"
        lines.append(f"  {previous}: {{depends_on: [{', '.join(names)}], steps: [{step(0.5)}]}}")
    return "\n".join(lines) + "\n"


def real_overlaps(marks: Path) -> int:
    """Jobs whose step really ran twice at the same time (a dead worker's orphaned step)."""
    spans: dict[str, list[list[float]]] = {}
    for line in marks.read_text().splitlines():
        job, what, at = line.split()
        if what == "start":
            spans.setdefault(job, []).append([float(at), float("inf")])
        else:
            open_spans = [s for s in spans[job] if s[1] == float("inf")]
            open_spans[0][1] = float(at)
    return sum(1 for runs in spans.values()
               if any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(runs) for b in runs[i + 1:]))


def test_twenty_worker_kills_lose_no_job(fault_cluster, fault, tmp_path: Path) -> None:
    cluster = fault_cluster
    fault.fault = f"worker SIGKILL x{KILLS} ({WORKERS} workers, {WAVES * WIDTH + WAVES + 1} jobs)"
    env = {"CONVEYOR_LEASE_SECONDS": "3"}
    lives: dict[str, tuple[ReapingWorker, float]] = {}  # name -> (process, started at)
    for n in range(1, WORKERS + 1):
        lives[f"w{n}"] = (cluster.worker(f"w{n}", concurrency=1, **env), time.time())
    marks = tmp_path / "marks"
    marks.touch()
    run_id = cluster.submit(cluster.pipeline(long_pipeline(marks)))
    store = RedisState(cluster.redis_url)
    rng = random.Random(6)
    victims: list[str] = []
    try:
        deadline = time.monotonic() + 240
        while len(victims) < KILLS:
            assert time.monotonic() < deadline, f"only {len(victims)} kills in time"
            assert store.get_run(run_id).status == RUNNING, f"the run ended after {len(victims)} kills"
            now = time.time()
            eligible = []
            for job in store.get_jobs(run_id).values():
                if job.status != RUNNING or any(a.reason == "worker_lost" for a in job.attempts):
                    continue  # a second loss would fail the job by design (max_lost=1)
                started = epoch_seconds(job.attempts[-1].started_at)
                life = lives.get(job.worker or "")
                # mid-job (not about to finish and claim something else), and run by the
                # current life of that worker, not by one already killed
                if life and 0.5 < now - started < JOB_SECONDS - 1.0 and life[1] < started:
                    eligible.append((job.name, job.worker))
            if not eligible:
                time.sleep(0.1)
                continue
            job_name, name = rng.choice(eligible)
            lives[name][0].kill(signal.SIGKILL)
            victims.append(f"{name}:{job_name}")
            # restart at once, without waiting for it to be ready: the others keep working
            worker = ReapingWorker(name, {**cluster.env, **env}, 1)
            cluster.workers.append(worker)
            lives[name] = (worker, time.time())
            time.sleep(rng.uniform(0.2, 0.6))
        fault.injected = len(victims)
        status = cluster.wait(run_id, timeout=240)
    finally:
        store.close()
    jobs = status["jobs"]
    lost = {name: sum(a["reason"] == "worker_lost" for a in job["attempt_history"]) for name, job in jobs.items()}
    overlaps = {name: overlapping_attempts(job) for name, job in jobs.items() if overlapping_attempts(job)}
    orphans = real_overlaps(marks)
    fault.note(f"{sum(lost.values())} attempts lost and re-run ({cluster.reaper_actions()}); run {status['status']}; "
               f"{orphans} job(s) whose killed worker's orphaned step outlived it (local executor)")
    assert status["status"] == "success", {n: (j["status"], j["reason"]) for n, j in jobs.items()}
    assert {j["status"] for j in jobs.values()} == {"success"}
    assert overlaps == {}
    # every kill hit a live attempt, and each of those was recorded and re-run exactly once
    assert sum(lost.values()) == KILLS and max(lost.values()) == 1
    assert all(job["attempts"] == 1 + lost[name] for name, job in jobs.items())
