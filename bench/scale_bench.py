"""Scale-out benchmark: the same 200 `sleep 0.2` jobs over 1, 2 and 4 worker processes.

    python bench/scale_bench.py [--jobs 200] [--sleep 0.2] [--workers 1,2,4] [--concurrency 1]

Each line starts its own redis-server and `conveyor worker` processes (local executor, one
data directory: one machine), runs a short warm-up, then the measured run: independent
jobs, so nothing but slots limits them. Efficiency = ideal / measured, where ideal is the
slot time the sleeps need, jobs x sleep / (workers x concurrency), and measured is the
run's first job start to last job finish (state store clock). Target: >= 80 %.

Concurrency 1 per process by default: each added process is one added slot, as a worker on
another machine would be, so the figure isolates what scale-out costs (Redis round trips,
hand-offs, balance between consumers) from a single process's thread pool. Sleeps use no
CPU, but each job costs its worker some (claim, workspace, fork, log, finish): past a few
slots per core that CPU, not the slots, becomes the limit (see docs/benchmarks-scale.md).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from exec_bench import Cluster, independent_pipeline  # noqa: E402
from measure import cpu_seconds, percentile, verdict  # noqa: E402
from shared.state.base import epoch_seconds as epoch  # noqa: E402

TARGET = 0.80


def measure(workers: int, concurrency: int, jobs: int, sleep: float) -> dict:
    """One cluster of `workers` processes; the figures of one measured run."""
    with ExitStack() as stack:
        cluster = Cluster.start(stack, "local")
        processes = [cluster.worker(f"w{n}", concurrency) for n in range(1, workers + 1)]
        cluster.run(cluster.source("warm", independent_pipeline("warm", 2 * workers * concurrency, "true")))
        pipeline = cluster.source("scale", independent_pipeline("scale", jobs, f"sleep {sleep}"))
        cpu_before = sum(cpu_seconds(p.proc.pid) for p in processes)
        result = cluster.run(pipeline)
        cpu = sum(cpu_seconds(p.proc.pid) for p in processes) - cpu_before
    slots = workers * concurrency
    ideal = jobs * sleep / slots
    span = result.span()
    per_worker = Counter(job.worker for job in result.jobs.values())
    durations = [epoch(j.finished_at) - epoch(j.started_at) for j in result.jobs.values()]
    return {
        "workers": workers, "concurrency": concurrency, "slots": slots, "ideal": ideal, "span": span,
        "wall": result.submit_to_finish, "efficiency": ideal / span,
        "slot_per_job": span * slots / jobs, "job_p50": percentile(durations, 50),
        "balance": sorted(per_worker.values()), "cpu": cpu,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--sleep", type=float, default=0.2)
    parser.add_argument("--workers", default="1,2,4", help="comma-separated worker process counts")
    parser.add_argument("--concurrency", type=int, default=1, help="threads (job slots) per worker process")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    print(f"== scale-out: {args.jobs} independent `sleep {args.sleep}` jobs, local executor, "
          f"concurrency {args.concurrency} per worker; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f} at start")
    rows = []
    for workers in counts:
        started = time.monotonic()
        rows.append(measure(workers, args.concurrency, args.jobs, args.sleep))
        print(f"   {workers} worker(s) measured in {time.monotonic() - started:.0f} s", flush=True)
    header = (f"{'workers':>7} {'slots':>5} {'ideal':>8} {'measured':>9} {'efficiency':>10} "
              f"{'slot/job':>9} {'job p50':>8} {'submit..end':>11} {'worker CPU':>10}  jobs per worker")
    print(header)
    print("-" * len(header))
    ok = True
    for row in rows:
        good = row["efficiency"] >= TARGET
        ok &= good
        print(f"{row['workers']:>7} {row['slots']:>5} {row['ideal']:>7.2f}s {row['span']:>8.2f}s "
              f"{row['efficiency']:>9.0%}{'' if good else '!'} {row['slot_per_job'] * 1000:>7.0f}ms "
              f"{row['job_p50'] * 1000:>6.0f}ms {row['wall']:>10.2f}s {row['cpu']:>9.2f}s  "
              f"{'/'.join(map(str, row['balance']))}")
    print(f"target: efficiency >= {TARGET:.0%} on every line: {verdict(ok)}")
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
