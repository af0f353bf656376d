"""`conveyor server` benchmark: webhook to first job, a burst of deliveries, `GET run`.

    python bench/server_bench.py [--pushes 20] [--burst 50] [--gets 200] [--jobs 500]

One Redis, one `conveyor worker` (local executor), a bare git repository as the forge, a
recording forge for commit statuses and the server in this process (uvicorn), as the
integration tests build them (tests/coordinator/server/ci_fixture.py).

1. Webhook -> first job started, on a warm mirror: a commit is pushed, its signed GitHub
   push payload delivered; the figure is the first job's `started_at` (state store) minus
   the moment the delivery was sent. Baseline, same run, same worker: the same pipeline
   submitted in-process with `coordinator.submit.submit` (no HTTP, no git): the ratio is
   what the server path adds. Target (issue #13): p50 <= 300 ms.
2. A burst of deliveries to one repository: `--burst` commits pushed, then all their
   deliveries sent at once. Reports accepted/lost, the runs created, how many git
   fetches ran and the most that ran at once (must be 1: one fetch at a time per mirror).
3. `GET /api/v1/runs/{run}` of a `--jobs`-job run; baseline `GET /healthz` (the HTTP
   floor of the same server). Target: p50 <= 10 ms.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coordinator.git_mirror import Mirror  # noqa: E402
from shared.state.base import epoch_seconds  # noqa: E402
from tests.cluster import running_cluster  # noqa: E402
from tests.coordinator.server.ci_fixture import ForgeRepo, github_push, serving_ci  # noqa: E402
from tests.forge_recorder import recording_forge  # noqa: E402

PIPELINE = "name: bench\njobs:\n  first: {steps: [{name: s, script: ['true']}]}\n"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def first_start(store, run_id: str, timeout: float = 60) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = store.get_jobs(run_id)
        started = [epoch_seconds(job.started_at) for job in jobs.values() if job.started_at]
        if started:
            return min(started)
        time.sleep(0.005)
    raise RuntimeError(f"run {run_id}: no job started in {timeout}s")


def wait_all(store, run_ids: list[str], timeout: float = 300) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = {r: store.get_run(r).status for r in run_ids}
        if all(s != "running" for s in statuses.values()):
            return statuses
        time.sleep(0.2)
    raise RuntimeError("runs did not finish")


def webhook_latency(ci, pushes: int) -> list[float]:
    store = ci.app.state.services.store
    out = []
    for n in range(pushes):
        sha = ci.repo.commit({"n.txt": str(n)})
        sent = time.time()
        code, answer = ci.deliver(github_push(sha))
        assert code == 202, answer
        out.append(first_start(store, answer["runs"][0]) - sent)
        wait_all(store, answer["runs"])
    return out


def submit_latency(ci, pushes: int, tmp: Path) -> list[float]:
    from coordinator.submit import compile_run, submit
    from shared.celery_app import create_app

    store = ci.app.state.services.store
    app = create_app(ci.settings)
    source = tmp / "submit-src"
    source.mkdir(exist_ok=True)
    (source / "pipeline.yml").write_text(PIPELINE)
    out = []
    for _ in range(pushes):
        sent = time.time()
        run_id, result = compile_run(source / "pipeline.yml", {})
        submit(app, store, run_id, result.plan, source / "pipeline.yml", {}, source, ci.settings)
        out.append(first_start(store, run_id) - sent)
        wait_all(store, [run_id])
    return out


def burst(ci, count: int) -> dict:
    fetches = {"count": 0, "running": 0, "max": 0}
    lock = threading.Lock()
    original = Mirror._fetch

    def counted(self, *args, **kwargs):  # measurement only: how many fetches, how many at once
        with lock:
            fetches["count"] += 1
            fetches["running"] += 1
            fetches["max"] = max(fetches["max"], fetches["running"])
        try:
            return original(self, *args, **kwargs)
        finally:
            with lock:
                fetches["running"] -= 1

    shas = [ci.repo.commit({"burst.txt": str(n)}) for n in range(count)]
    Mirror._fetch = counted
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(count) as pool:
            answers = list(pool.map(lambda sha: (time.monotonic(), ci.deliver(github_push(sha))), shas))
        wall = time.monotonic() - started
    finally:
        Mirror._fetch = original
    accepted = [a for _, a in answers if a[0] == 202]
    runs = [r for a in accepted for r in a[1]["runs"]]
    statuses = wait_all(ci.app.state.services.store, runs)
    return {"sent": count, "accepted": len(accepted), "runs": len(set(runs)), "fetches": fetches["count"],
            "max_concurrent_fetches": fetches["max"], "wall": wall,
            "succeeded": sum(1 for s in statuses.values() if s == "success")}


def get_latency(ci, jobs: int, gets: int) -> tuple[list[float], list[float]]:
    from coordinator.frontend import load_text
    from shared.state.base import JobMeta

    text = "name: big\njobs:\n" + "".join(f"  j{n}: {{steps: [{{name: s, script: ['true']}}]}}\n"
                                          for n in range(jobs))
    run_id = "20261203-000000-b16b16"
    result = load_text(text, "big.yml", {}, run_id=run_id)
    store = ci.app.state.services.store
    store.create_run(run_id, "big", {n: JobMeta() for n in result.plan.jobs}, result.plan.to_dict(), {})

    def timed(path: str, token: bool) -> float:
        request = urllib.request.Request(ci.url + path)
        if token:
            request.add_header("Authorization", f"Bearer {ci.token}")
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
        elapsed = time.perf_counter() - start
        if path.startswith("/api"):
            assert len(json.loads(body)["jobs"]) == jobs
        return elapsed

    for _ in range(10):
        timed(f"/api/v1/runs/{run_id}", True)
    runs = [timed(f"/api/v1/runs/{run_id}", True) for _ in range(gets)]
    floor = [timed("/healthz", False) for _ in range(gets)]
    return runs, floor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pushes", type=int, default=20)
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--gets", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=500)
    args = parser.parse_args(argv)
    import logging

    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="server-bench-") as raw:
        tmp = Path(raw)
        (tmp / "cluster").mkdir()
        with running_cluster(tmp / "cluster", "local") as cluster, recording_forge() as forge:
            cluster.worker("w1", concurrency=2)
            repo = ForgeRepo.create(tmp / "forge")
            repo.commit({".conveyor.yml": PIPELINE})
            with serving_ci(tmp, cluster, forge, repo) as ci:
                webhook_latency(ci, 2)  # warm: the mirror, the worker, the canvas path
                submit_latency(ci, 2, tmp)
                hooks = webhook_latency(ci, args.pushes)
                submits = submit_latency(ci, args.pushes, tmp)
                b = burst(ci, args.burst)
                runs, floor = get_latency(ci, args.jobs, args.gets)
    ms = 1000
    print(f"webhook -> first job started, {args.pushes} pushes: p50 {pct(hooks, 50) * ms:.0f} ms, "
          f"p95 {pct(hooks, 95) * ms:.0f} ms (target p50 <= 300 ms)")
    print(f"baseline in-process submit -> first job started: p50 {pct(submits, 50) * ms:.0f} ms, "
          f"p95 {pct(submits, 95) * ms:.0f} ms; ratio webhook/submit p50 {pct(hooks, 50) / pct(submits, 50):.2f}")
    print(f"burst of {b['sent']} deliveries: {b['accepted']} accepted, {b['sent'] - b['accepted']} lost, "
          f"{b['runs']} runs ({b['succeeded']} succeeded), {b['fetches']} git fetches, at most "
          f"{b['max_concurrent_fetches']} at once, all answered in {b['wall']:.2f} s")
    print(f"GET run of {args.jobs} jobs, {args.gets} requests: p50 {pct(runs, 50) * ms:.1f} ms, "
          f"p95 {pct(runs, 95) * ms:.1f} ms (target p50 <= 10 ms); baseline GET /healthz p50 "
          f"{pct(floor, 50) * ms:.1f} ms; ratio {pct(runs, 50) / pct(floor, 50):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
