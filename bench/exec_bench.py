"""Execution benchmarks: a real redis-server and `conveyor worker` processes, measured
against a baseline run in the same invocation.

    python bench/exec_bench.py {hops,makespan,docker,noop100,rss,all,jobcost} [options]

    hops      hop latency (downstream started_at - upstream finished_at) of a 40-job chain
              vs. a bare Celery chain on the same Redis     target p50 <= 15 ms, p99 <= 100 ms
    makespan  two unequal chains on a concurrency-2 worker vs. the critical path
                                                            target <= 1.1 x critical path + hops
    docker    a one-job run of `true` in Docker vs. `docker run --rm IMAGE true`, medians
                                                            target <= 1.25 x
    noop100   100 independent `true` jobs (concurrency 2) vs. `make -j2` of the same commands
    rss       worker process-tree VmRSS idle and with 4 `sleep 5` jobs
                                                            target < 100 MB + 50 MB/job
    jobcost   diagnostic, not in `all`: run_job in this process, each call it makes timed

Every sub-command starts its own redis-server on a free port in a temporary directory and
its own workers (the tests' cluster, tests/cluster.py), and removes all of it (processes,
containers, files) when it ends, also on Ctrl-C. Times from the state store come from one
clock (Redis TIME, milliseconds). Percentiles, timers and /proc readers: bench/measure.py.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from measure import (  # noqa: E402
    MB, CallTimer, best_of, cpu_seconds, host_line, kill_group, percentile, process_tree, run_sections, tree_rss,
    verdict,
)
from shared.state.base import epoch_seconds as epoch  # noqa: E402
from tests.cluster import Cluster as TestCluster  # noqa: E402
from tests.cluster import running_cluster  # noqa: E402
from tests.services import BUSYBOX_IMAGE as IMAGE  # noqa: E402
from tests.services import ensure_busybox_image, start_redis  # noqa: E402

BARE_QUEUE = "bench-bare"
BARE_TASK = "bench.stamp"
READY_TIMEOUT = 60.0
RUN_TIMEOUT = 120.0


# -- small helpers --------------------------------------------------------------------------

def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


@contextmanager
def redis_server(directory: Path) -> Iterator[str]:
    """A throwaway redis-server (no persistence) on a free port; yields its URL (db 0)."""
    proc, port = start_redis(directory)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        kill_group(proc)


class Process:
    """A long-running child in its own session whose output is drained by a thread.

    `ready` is set when a line containing `ready_marker` appears (Celery logs
    `celery@NAME ready.` once it consumes).
    """

    def __init__(self, argv: list[str], env: dict[str, str], ready_marker: str = " ready."):
        self.output: list[str] = []
        self.ready = threading.Event()
        self._marker = ready_marker
        self.proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line.rstrip("\n"))
            if self._marker in line:
                self.ready.set()

    def wait_ready(self, what: str) -> None:
        if not self.ready.wait(READY_TIMEOUT):
            self.stop()
            tail = "\n".join(self.output[-40:])
            raise RuntimeError(f"{what} did not become ready in {READY_TIMEOUT:.0f} s:\n{tail}")

    def stop(self) -> None:
        # Local-executor steps run in sessions of their own, outside the worker's group:
        # note them first, so none outlives the bench.
        descendants = process_tree(self.proc.pid)[1:] if self.proc.poll() is None else []
        kill_group(self.proc)
        for pid in descendants:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# -- a Conveyor cluster -----------------------------------------------------------------------

@dataclass(frozen=True)
class RunResult:
    """One finished run: its status, the job records and the client-side wall time."""

    run_id: str
    status: str
    jobs: dict
    submit_to_finish: float  # seconds, from just before submit() to the run-end event

    def span(self) -> float:
        """First job start to last job finish, from the state store's clock."""
        first = min(self.jobs.values(), key=lambda j: epoch(j.started_at))
        last = max(self.jobs.values(), key=lambda j: epoch(j.finished_at))
        return store_delta(first.started_at, last.finished_at)


class Cluster(TestCluster):
    """The tests' cluster (tests/cluster.py: its own redis-server, `conveyor worker` processes,
    one data directory) in a temporary directory, with an in-process submitter that waits
    for the run-end event. Made by `Cluster.start`."""

    def __init__(self, tmp: Path, redis_port: int, executor: str):
        super().__init__(tmp, redis_port, executor)
        # The workers keep the default lease, as deployed (the tests shorten it).
        del self.env["CONVEYOR_LEASE_SECONDS"]
        self.overrides: dict = {}

    @classmethod
    def start(cls, stack: ExitStack, executor: str, overrides: dict | None = None) -> "Cluster":
        """A cluster in a new temporary directory, stopped and removed when `stack` closes."""
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="conveyor-bench-")))
        cluster = stack.enter_context(running_cluster(tmp, executor, cls))
        assert isinstance(cluster, cls)
        cluster.connect(stack, overrides or {})
        return cluster

    def connect(self, stack: ExitStack, overrides: dict) -> None:
        """The submitter's app and state store (with `overrides` applied to the app)."""
        self.overrides = overrides
        from coordinator.submit import compile_run, submit
        from shared.celery_app import create_app
        from shared.config import load_settings
        from shared.state import open_state

        self._submit = submit
        self._compile = compile_run
        self.settings = load_settings(environ=self.env, config_file=os.devnull)
        self.app = create_app(self.settings)
        self.app.conf.update(self.overrides)  # task_send_sent_event is the submitter's setting
        self.store = open_state(self.settings.effective_state_url)
        stack.callback(self.store.close)

    def worker(self, name: str, concurrency: int = 2, **env: str) -> Process:  # type: ignore[override]
        """Start `conveyor worker` (threads pool, INFO logging, as deployed) and wait until it consumes.

        With overrides, the same command runs through `_worker`, which applies them first;
        the steps it leaves behind are stopped with it (`Process.stop`).
        """
        command = ["-m", "coordinator", "worker"]
        if self.overrides:
            command = [str(Path(__file__).resolve()), "_worker", json.dumps(self.overrides)]
        worker = Process([sys.executable, *command, "--name", name, "--concurrency", str(concurrency),
                          "--loglevel", "INFO"], {**self.env, **env})
        self.workers.append(worker)  # type: ignore[arg-type]
        worker.wait_ready(f"worker {name}")
        return worker

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()

    def source(self, name: str, text: str) -> Path:
        """Write a pipeline into a source folder of its own (the workspace every job copies)."""
        return self.pipeline(text, f"{name}/pipeline.yml")

    def run(self, pipeline: Path) -> RunResult:
        """Submit and block until the run-end event; fail loudly unless every job succeeded."""
        start = time.perf_counter()
        run_id, result = self._compile(pipeline, {})
        assert result.ok, result.diagnostics
        run_id = self._submit(self.app, self.store, run_id, result.plan, pipeline, {}, None).run_id
        cursor = None
        deadline = time.monotonic() + RUN_TIMEOUT
        status = None
        while status is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"run {run_id} did not finish in {RUN_TIMEOUT:.0f} s")
            events, cursor = self.store.events(run_id, after=cursor, block_ms=1000)
            status = next((e.to_status for e in events if e.job is None), None)
        elapsed = time.perf_counter() - start
        jobs = self.store.get_jobs(run_id)
        if status != "success":
            raise RuntimeError(f"run {run_id} ended {status}: "
                               + ", ".join(f"{n}={j.status}/{j.reason}" for n, j in jobs.items()))
        return RunResult(run_id, status, jobs, elapsed)


def store_delta(start: str, end: str) -> float:
    """Seconds between two store timestamps, rounded to their millisecond resolution."""
    return round(epoch(end) - epoch(start), 3)


def job_duration(job) -> float:
    return store_delta(job.started_at, job.finished_at)


class TaskEvents:
    """Celery task events (as Flower sees them), captured in a thread.

    `stamps(run_id, job)` maps an event type (`task-sent`, `task-received`, `task-started`,
    `task-succeeded`) to its timestamp; workers send them with the host clock, which is
    also Redis's clock here (one machine).
    """

    def __init__(self, stack: ExitStack, app) -> None:
        self._by_uuid: dict[str, dict[str, float]] = defaultdict(dict)
        self._jobs: dict[tuple[str, str], str] = {}
        connection = stack.enter_context(app.connection_for_read())
        self._receiver = app.events.Receiver(connection, handlers={"*": self._on_event})
        self._thread = threading.Thread(target=self._receiver.capture, kwargs={"wakeup": False}, daemon=True)
        self._thread.start()
        stack.callback(self._stop)
        time.sleep(0.5)  # the fanout queue must exist before the first event is sent

    def _on_event(self, event: dict) -> None:
        kind, uuid = event.get("type", ""), event.get("uuid")
        if not kind.startswith("task-") or uuid is None:
            return
        self._by_uuid[uuid].setdefault(kind, event["timestamp"])
        if event.get("kwargs"):
            kwargs = ast.literal_eval(event["kwargs"])  # a repr of {'run_id': ..., 'job': ...}
            self._jobs[(kwargs["run_id"], kwargs["job"])] = uuid

    def stamps(self, run_id: str, job: str) -> dict[str, float]:
        uuid = self._jobs.get((run_id, job))
        return dict(self._by_uuid[uuid]) if uuid else {}

    def _stop(self) -> None:
        self._receiver.should_stop = True
        self._thread.join(timeout=3)


# -- a bare Celery app, the baseline for hops -----------------------------------------------

def bare_app(redis_url: str):
    """A Celery app with defaults and one trivial task, on the same Redis as the cluster.

    Broker db 2 and result db 3 keep it apart from Conveyor's db 0/1.
    """
    from celery import Celery

    base = redis_url.rsplit("/", 1)[0]
    app = Celery("bench", broker=f"{base}/2", backend=f"{base}/3")
    app.conf.update(task_default_queue=BARE_QUEUE, broker_connection_retry_on_startup=True,
                    worker_hijack_root_logger=False)

    @app.task(name=BARE_TASK)
    def stamp(history: list | None = None) -> list:
        """Append [start, end] of this execution to the chain's history."""
        started = time.time()
        history = list(history or [])
        history.append([started, time.time()])
        return history

    return app


def bare_worker_main(redis_url: str, concurrency: int) -> None:
    """Entry point of the hidden `_bare-worker` sub-command (run in a child process)."""
    bare_app(redis_url).worker_main([
        "worker", f"--queues={BARE_QUEUE}", f"--concurrency={concurrency}", "--pool=threads",
        "--loglevel=INFO", "--without-mingle", "--hostname=bare@bench",
    ])


def overridden_worker_main(overrides: dict, argv: list[str]) -> None:
    """Entry point of the hidden `_worker` sub-command: `conveyor worker` with Celery settings changed.

    For measuring what a setting costs without editing the engine: the app that
    `create_app` returns gets `overrides`, and `--task-events` (which wins over
    `worker_send_task_events`) is dropped when that setting is overridden.
    """
    from celery import Celery

    import shared.celery_app
    from coordinator.cli import main as conveyor_main

    create_app = shared.celery_app.create_app

    def create_overridden(settings):
        app = create_app(settings)
        app.conf.update(overrides)
        return app

    worker_main = Celery.worker_main

    def worker_main_overridden(self, args):
        if "worker_send_task_events" in overrides:
            args = [a for a in args if a != "--task-events"]
        return worker_main(self, args)

    shared.celery_app.create_app = create_overridden
    Celery.worker_main = worker_main_overridden
    sys.argv = ["conveyor", "worker", *argv]
    conveyor_main()


def parse_overrides(pairs: list[str]) -> dict:
    """`KEY=JSON` pairs (`task_track_started=false`) as a dict of Celery settings."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--celery-conf expects KEY=JSON_VALUE, got {pair!r}")
        overrides[key] = json.loads(value)
    return overrides


# -- pipelines ----------------------------------------------------------------------------------

def chain_pipeline(length: int) -> str:
    lines = ["name: hops", "jobs:"]
    for i in range(length):
        deps = f"depends_on: [j{i - 1:03d}], " if i else ""
        lines.append(f"  j{i:03d}: {{{deps}steps: [{{name: s, action: noop}}]}}")
    return "\n".join(lines) + "\n"


def chains_pipeline(chains: dict[str, tuple[int, float]]) -> str:
    """Independent chains: prefix -> (jobs, sleep seconds per job)."""
    lines = ["name: makespan", "jobs:"]
    for prefix, (count, sleep) in chains.items():
        for i in range(count):
            deps = f"depends_on: [{prefix}{i - 1}], " if i else ""
            lines.append(f"  {prefix}{i}: {{{deps}steps: [{{name: s, script: ['sleep {sleep}']}}]}}")
    return "\n".join(lines) + "\n"


def independent_pipeline(name: str, count: int, script: str, image: str | None = None) -> str:
    lines = [f"name: {name}"]
    if image:
        lines.append(f"defaults: {{image: \"{image}\"}}")
    lines.append("jobs:")
    for i in range(count):
        lines.append(f"  j{i:03d}: {{steps: [{{name: s, script: ['{script}']}}]}}")
    return "\n".join(lines) + "\n"


# -- 1. hops --------------------------------------------------------------------------------

def bench_hops(args: argparse.Namespace) -> bool:
    length, repeat = args.chain, args.repeat
    print(f"== hops: chain of {length} no-op jobs x {repeat} runs, one worker (concurrency 2, local executor)")
    with ExitStack() as stack:
        cluster = Cluster.start(stack, "local", args.celery_conf)
        cluster.worker("hops", 2)
        pipeline = cluster.source("hops", chain_pipeline(length))
        cluster.run(cluster.source("warm", chain_pipeline(2)))  # imports, plan cache, connections
        hops: list[float] = []
        noop_jobs: list[float] = []
        totals: list[float] = []
        for _ in range(repeat):
            result = cluster.run(pipeline)
            jobs = list(result.jobs.values())  # plan order, which is chain order
            hops += [store_delta(a.finished_at, b.started_at) for a, b in zip(jobs, jobs[1:])]
            noop_jobs += [job_duration(j) for j in jobs]
            totals.append(result.submit_to_finish)
        # One more run for the breakdown: decoding events takes CPU the measured runs should not share.
        events = TaskEvents(stack, cluster.app)
        result = cluster.run(pipeline)
        time.sleep(0.3)  # the last events are still on their way
        segments = hop_segments([result], events)

        bare = Process([sys.executable, str(Path(__file__).resolve()), "_bare-worker", cluster.redis_url, "2"],
                       cluster.env)
        stack.callback(bare.stop)
        bare.wait_ready("bare Celery worker")
        bare_hops, round_trips, bare_totals = bare_celery(cluster.redis_url, length, repeat)

    p50, p99 = percentile(hops, 50), percentile(hops, 99)
    b50, b99 = percentile(bare_hops, 50), percentile(bare_hops, 99)
    print(f"{'':34}{'p50':>11}{'p99':>11}{'max':>11}   n")
    print(f"{'conveyor hop (state store)':34}{ms(p50)}{ms(p99)}{ms(max(hops))}   {len(hops)}")
    print(f"{'bare celery chain hop':34}{ms(b50)}{ms(b99)}{ms(max(bare_hops))}   {len(bare_hops)}")
    print(f"{'bare apply_async().get()':34}{ms(percentile(round_trips, 50))}{ms(percentile(round_trips, 99))}"
          f"{ms(max(round_trips))}   {len(round_trips)}")
    print(f"{'conveyor no-op job (claim..finish)':34}{ms(percentile(noop_jobs, 50))}"
          f"{ms(percentile(noop_jobs, 99))}{ms(max(noop_jobs))}   {len(noop_jobs)}")
    print(f"chain of {length}, submit to finish: conveyor {statistics.median(totals):.2f} s, "
          f"bare celery {statistics.median(bare_totals):.2f} s (medians)")
    print(f"ratio hop p50 conveyor/bare: {p50 / b50:.1f}x   p99: {p99 / b99:.1f}x")
    if all(segments.values()):
        print("where a hop goes, from one more run traced with Celery task events (p50 / p99):")
        for label, values in segments.items():
            print(f"  {label:58}{ms(percentile(values, 50))}{ms(percentile(values, 99))}")
    else:
        print("(no task events from the worker: no per-segment breakdown)")
    ok = p50 <= 0.015 and p99 <= 0.100
    print(f"target p50 <= 15 ms, p99 <= 100 ms: {verdict(ok)}")
    return ok


HOP_SEGMENTS = (
    ("upstream finish() -> next task published (task-sent)", None, "task-sent"),
    ("published -> consumed by the worker (task-received)", "task-sent", "task-received"),
    ("consumed -> running in a pool thread (task-started)", "task-received", "task-started"),
    ("running -> claim() (get_run, get_jobs, decide, claim)", "task-started", None),
)


def hop_segments(results: list[RunResult], events: TaskEvents) -> dict[str, list[float]]:
    """Split each hop at the downstream task's events; None stands for the store's times."""
    segments: dict[str, list[float]] = {label: [] for label, _, _ in HOP_SEGMENTS}
    for result in results:
        names = list(result.jobs)  # plan order, which is chain order
        for up, down in zip(names, names[1:]):
            stamps = events.stamps(result.run_id, down)
            for label, start, end in HOP_SEGMENTS:
                begin = epoch(result.jobs[up].finished_at) if start is None else stamps.get(start)
                finish = epoch(result.jobs[down].started_at) if end is None else stamps.get(end)
                if begin is not None and finish is not None:
                    segments[label].append(finish - begin)
    return segments


def bare_celery(redis_url: str, length: int, repeat: int) -> tuple[list[float], list[float], list[float]]:
    """Per-hop latency of a bare Celery chain, and apply_async().get() round trips."""
    from celery import chain

    app = bare_app(redis_url)
    try:
        app.send_task(BARE_TASK, args=([],)).get(timeout=30)  # warm-up
        hops: list[float] = []
        totals: list[float] = []
        for _ in range(repeat):
            start = time.perf_counter()
            canvas = chain(app.signature(BARE_TASK, args=([],)), *[app.signature(BARE_TASK) for _ in range(length - 1)])
            history = canvas.apply_async().get(timeout=60)
            totals.append(time.perf_counter() - start)
            hops += [b[0] - a[1] for a, b in zip(history, history[1:])]
        trips = []
        for _ in range(length * repeat):
            start = time.perf_counter()
            app.send_task(BARE_TASK, args=([],)).get(timeout=30)
            trips.append(time.perf_counter() - start)
        return hops, trips, totals
    finally:
        app.close()


# -- 2. makespan ----------------------------------------------------------------------------

def bench_makespan(args: argparse.Namespace) -> bool:
    chains = {"a": (3, 1.0), "b": (2, 1.25)}
    critical = max(count * sleep for count, sleep in chains.values())
    hops_on_path = max(count for count, _ in chains.values()) - 1
    described = " and ".join(f"{c}x{s:g}s" for c, s in chains.values())
    print(f"== makespan: chains {described} on one worker (concurrency 2, local executor), {args.repeat} runs")
    with ExitStack() as stack:
        cluster = Cluster.start(stack, "local", args.celery_conf)
        cluster.worker("makespan", 2)
        cluster.run(cluster.source("warm", chains_pipeline({"w": (2, 0.01)})))
        pipeline = cluster.source("makespan", chains_pipeline(chains))
        results = [cluster.run(pipeline) for _ in range(args.repeat)]
    spans = [r.span() for r in results]
    walls = [r.submit_to_finish for r in results]
    span, wall = statistics.median(spans), statistics.median(walls)
    allowed = 1.1 * critical + hops_on_path * 0.015
    print(f"critical path (sum of the longer chain's sleeps): {critical:.3f} s, {hops_on_path} hops on it")
    print(f"makespan, first start to last finish (store): {span:.3f} s  = {span / critical:.3f}x  (median)")
    print(f"submit to run-end event (client clock):      {wall:.3f} s  = {wall / critical:.3f}x  (median)")
    a_chain = [results[len(results) // 2].jobs[f"a{i}"] for i in range(chains["a"][0])]
    overheads = [job_duration(j) - chains["a"][1] for j in a_chain]
    print("per job on the critical path, claim..finish minus its sleep: "
          + ", ".join(f"{o * 1000:.0f} ms" for o in overheads))
    ok = span <= allowed
    print(f"target makespan <= 1.1 x {critical:.2f} s + {hops_on_path} x 15 ms = {allowed:.3f} s: {verdict(ok)}")
    return ok


# -- 3. docker ------------------------------------------------------------------------------

def ensure_image() -> None:
    import docker

    client = docker.from_env()
    try:
        ensure_busybox_image(client)
    finally:
        client.close()


def leftover_containers(worker: str) -> list[str]:
    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=conveyor.worker={worker}"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def bench_docker(args: argparse.Namespace) -> bool:
    n = args.runs
    print(f"== docker: one job running `true` in {IMAGE} vs `docker run --rm {IMAGE} true`, N={n} each")
    ensure_image()
    name = "docker-bench"
    with ExitStack() as stack:
        cluster = Cluster.start(stack, "docker", args.celery_conf)
        stack.callback(lambda: _remove_containers(name))
        cluster.worker(name, 2)
        pipeline = cluster.source("docker", independent_pipeline("docker", 1, "true", IMAGE))
        cluster.run(pipeline)  # warm-up: docker SDK import, engine version, image lookup
        raw_run()
        jobs, submits, raws = [], [], []
        for _ in range(n):  # interleaved, so drift in the engine hits both sides alike
            result = cluster.run(pipeline)
            jobs.append(job_duration(result.jobs["j000"]))
            submits.append(result.submit_to_finish)
            raws.append(raw_run())
        left = leftover_containers(name)
    job, submit, raw = statistics.median(jobs), statistics.median(submits), statistics.median(raws)
    print(f"{'':44}{'median':>11}{'min':>11}{'max':>11}")
    print(f"{'conveyor job, started_at..finished_at':44}{ms(job)}{ms(min(jobs))}{ms(max(jobs))}")
    print(f"{'conveyor run, submit..run-end event':44}{ms(submit)}{ms(min(submits))}{ms(max(submits))}")
    print(f"{'docker run --rm (subprocess wall time)':44}{ms(raw)}{ms(min(raws))}{ms(max(raws))}")
    print(f"ratio job/raw: {job / raw:.2f}x   submit-to-finish/raw: {submit / raw:.2f}x   "
          f"containers left behind: {len(left)}")
    ok = job / raw <= 1.25
    print(f"target job (started_at..finished_at) <= 1.25 x raw: {verdict(ok)}")
    return ok


def raw_run() -> float:
    start = time.perf_counter()
    subprocess.run(["docker", "run", "--rm", IMAGE, "true"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _remove_containers(worker: str) -> None:
    ids = leftover_containers(worker)
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)


# -- 4. noop100 -----------------------------------------------------------------------------

def bench_noop100(args: argparse.Namespace) -> bool:
    count, concurrency = args.jobs, 2
    print(f"== noop100: {count} independent `true` jobs, local executor, concurrency {concurrency}, "
          f"vs make -j{concurrency}")
    with ExitStack() as stack:
        cluster = Cluster.start(stack, "local", args.celery_conf)
        worker = cluster.worker("noop", concurrency)
        cluster.run(cluster.source("warm", independent_pipeline("warm", 2, "true")))
        pipeline = cluster.source("noop", independent_pipeline("noop", count, "true"))
        cpu_before = cpu_seconds(worker.proc.pid)
        result = cluster.run(pipeline)
        worker_cpu = cpu_seconds(worker.proc.pid) - cpu_before
        # One more run for the breakdown: decoding events takes CPU the measured run should not share.
        events = TaskEvents(stack, cluster.app)
        traced = cluster.run(pipeline)
        time.sleep(0.3)  # the last events are still on their way
        segments = task_segments(traced, events)
        make = make_baseline(cluster.tmp / "make", count, concurrency)
    durations = [job_duration(j) for j in result.jobs.values()]
    span, wall = result.span(), result.submit_to_finish
    per_job = span * concurrency / count
    make_per_job = make * concurrency / count
    print(f"{'':40}{'wall':>11}{'per job':>11}   (per job = wall x {concurrency} / {count})")
    print(f"{'conveyor, first start..last finish':40}{ms(span)}{ms(per_job)}")
    print(f"{'conveyor, submit..run-end event':40}{ms(wall)}{ms(wall * concurrency / count)}")
    print(f"{f'make -j{concurrency}':40}{ms(make)}{ms(make_per_job)}")
    print(f"job claim..finish: p50 {percentile(durations, 50) * 1000:.1f} ms, "
          f"p99 {percentile(durations, 99) * 1000:.1f} ms")
    print(f"per-job overhead over make: {(per_job - make_per_job) * 1000:.1f} ms ({per_job / make_per_job:.0f}x)")
    print(f"worker process CPU (user+sys, its own threads only): {worker_cpu:.2f} s = "
          f"{worker_cpu / count * 1000:.1f} ms/job, {worker_cpu / wall:.0%} of one core during the run")
    if all(segments.values()):
        print("per task, from a second run traced with Celery task events (p50 / p99):")
        for label, values in segments.items():
            print(f"  {label:58}{ms(percentile(values, 50))}{ms(percentile(values, 99))}")
    return True  # no target: the figure is the point


TASK_SEGMENTS = (
    ("consumed (task-received) -> running (task-started)", "task-received", "task-started"),
    ("running -> claim() (get_run, get_jobs, decide, claim)", "task-started", "claim"),
    ("claim() -> finish() (the job)", "claim", "finish"),
    ("finish() -> task-succeeded (result stored, events)", "finish", "task-succeeded"),
)


def task_segments(result: RunResult, events: TaskEvents) -> dict[str, list[float]]:
    """Each task's life split at its events and its job's claim/finish in the store."""
    segments: dict[str, list[float]] = {label: [] for label, _, _ in TASK_SEGMENTS}
    for name, job in result.jobs.items():
        stamps = {**events.stamps(result.run_id, name), "claim": epoch(job.started_at),
                  "finish": epoch(job.finished_at)}
        for label, start, end in TASK_SEGMENTS:
            if start in stamps and end in stamps:
                segments[label].append(stamps[end] - stamps[start])
    return segments


def make_baseline(folder: Path, count: int, concurrency: int) -> float:
    folder.mkdir(parents=True)
    targets = [f"j{i:03d}" for i in range(count)]
    rules = "".join(f"{t}:\n\ttrue\n" for t in targets)
    (folder / "Makefile").write_text(f".PHONY: all {' '.join(targets)}\nall: {' '.join(targets)}\n{rules}")
    return best_of(3, lambda: subprocess.run(["make", "-s", f"-j{concurrency}", "-C", str(folder)], check=True,
                                             stdout=subprocess.DEVNULL))


# -- 5. rss ---------------------------------------------------------------------------------

def bench_rss(args: argparse.Namespace) -> bool:
    active = 4
    ok = True
    print(f"== rss: worker process tree VmRSS, idle and with {active} `sleep 5` jobs (concurrency {active})")
    executors = ["local", "docker"] if args.executor == "both" else [args.executor]
    if "docker" in executors:
        ensure_image()
    print(f"{'executor':10}{'idle':>10}{'after warm-up':>15}{f'peak, {active} jobs':>16}{'processes':>11}"
          f"{'target':>10}")
    for executor in executors:
        with ExitStack() as stack:
            cluster = Cluster.start(stack, executor, args.celery_conf)
            name = f"rss-{executor}"
            if executor == "docker":
                stack.callback(lambda: _remove_containers(name))
            worker = cluster.worker(name, active)
            time.sleep(1.0)  # let start-up settle (Celery's consumer finishes connecting)
            idle, _ = tree_rss(worker.proc.pid)
            image = IMAGE if executor == "docker" else None
            cluster.run(cluster.source("warm", independent_pipeline("warm", 1, "true", image)))
            warm, _ = tree_rss(worker.proc.pid)
            peak, processes = 0, 0
            busy = cluster.source("busy", independent_pipeline("busy", active, "sleep 5", image))
            failures: list[Exception] = []

            def run_busy() -> None:
                try:
                    cluster.run(busy)
                except Exception as exc:  # re-raised below; quiet if the bench was interrupted
                    failures.append(exc)

            running = threading.Thread(target=run_busy, daemon=True)
            running.start()
            while running.is_alive():
                rss, count = tree_rss(worker.proc.pid)
                if rss > peak:
                    peak, processes = rss, count
                time.sleep(0.2)
            if failures:
                raise failures[0]
        target = 100 * MB + 50 * MB * active
        met = idle < 100 * MB and peak < target
        ok = ok and met
        print(f"{executor:10}{idle / MB:>7.1f} MB{warm / MB:>12.1f} MB{peak / MB:>13.1f} MB{processes:>11}"
              f"{target / MB:>7.0f} MB  {verdict(met)}")
    return ok


# -- jobcost: where a job's own time goes ------------------------------------------------

def bench_jobcost(args: argparse.Namespace) -> bool:
    """run_job in this process (no Celery, one thread), with its calls timed."""
    from coordinator.frontend import load_file
    from shared.state import open_state
    from shared.state.base import JobMeta
    from shared.state.redis import run_key
    from worker import job_runner, logs, workspace
    from worker.context import WorkerContext
    from worker.executors.local import LocalExecutor

    print("== jobcost: conveyor's run_job in this process (no Celery, no second thread), per job")
    cases = {
        "chain of 40 no-op jobs": chain_pipeline(40),
        "100 independent `true` jobs": independent_pipeline("noop", 100, "true"),
        "chain of 200 no-op jobs": chain_pipeline(200),
    }
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="conveyor-bench-")))
        store = open_state(stack.enter_context(redis_server(tmp)))
        stack.callback(store.close)
        counter = iter(range(1_000_000))

        def new_run(text: str) -> tuple[str, list[str]]:
            source = tmp / "src" / str(next(counter))
            source.mkdir(parents=True)
            (source / "pipeline.yml").write_text(text)
            run_id = f"bench-{next(counter)}"
            plan = load_file(source / "pipeline.yml", {}, run_id=run_id).plan
            store.create_run(run_id, plan.pipeline, {n: JobMeta() for n in plan.jobs}, plan.to_dict(),
                             {"source": str(source)})
            return run_id, list(plan.jobs)  # plan order: dependencies first in these pipelines

        executor = LocalExecutor()
        ctx = WorkerContext(store=store, executor=executor, worker_name="bench", data_dir=tmp / "data")
        for label, text in cases.items():
            run_id, names = new_run(text)
            for name in names[:5]:  # warm-up: imports, scripts, connections
                job_runner.run_job(ctx, run_id, name)
            with ExitStack() as patches:
                timer = CallTimer(patches)
                for method in ("get_run", "get_jobs", "claim", "finish", "append_logs"):
                    timer.wrap(store, method, f"store.{method}")
                for method in ("prepare", "start", "cleanup"):
                    timer.wrap(executor, method, f"executor.{method}")
                timer.wrap(workspace, "populate", "workspace.populate")
                timer.wrap(workspace, "remove", "workspace.remove")
                timer.wrap(logs.LogSink, "close", "LogSink.close")
                timer.wrap(job_runner, "decide", "decide")
                timer.wrap(job_runner, "run_job", "run_job (total)")
                run_id, names = new_run(text)
                for name in names:
                    job_runner.run_job(ctx, run_id, name)
            jobs = len(names)
            print(f"-- {label}")
            ordered = sorted(timer.seconds.items(), key=lambda item: -sum(item[1]))
            for name, values in ordered:
                if sum(values) / jobs >= 0.0001:
                    print(f"  {name:22}{sum(values) / jobs * 1000:7.2f} ms/job  ({len(values) / jobs:.0f} call/job, "
                          f"p50 {statistics.median(values) * 1000:.2f} ms)")
        print("-- store.get_jobs() (every job start reads every job record) by run size, all jobs done:")
        for size in (40, 100, 200, 1000):
            run_id, names = new_run(independent_pipeline("size", size, "true"))
            for name in names:  # a finished job's record carries its attempt: that is what is read
                claim = store.claim(run_id, name, "bench", 30_000)
                store.finish(run_id, name, claim.token, "success", exit_code=0)
            calls, raw = [], []
            for _ in range(10):
                start = time.perf_counter()
                store.get_jobs(run_id)
                calls.append(time.perf_counter() - start)
                start = time.perf_counter()
                store.client.hgetall(run_key(run_id, "jobs"))  # the read alone, without decoding
                raw.append(time.perf_counter() - start)
            print(f"  {size:5} jobs: {statistics.median(calls) * 1000:7.2f} ms per call, of which HGETALL "
                  f"{statistics.median(raw) * 1000:.2f} ms (the rest: JSON and JobRecord decoding)")
    return True


# -- command line ---------------------------------------------------------------------------

BENCHES: dict[str, Callable[[argparse.Namespace], bool]] = {
    "hops": bench_hops,
    "makespan": bench_makespan,
    "docker": bench_docker,
    "noop100": bench_noop100,
    "rss": bench_rss,
}
# Diagnostics, not part of `all`.
EXTRA: dict[str, Callable[[argparse.Namespace], bool]] = {"jobcost": bench_jobcost}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bench", choices=[*BENCHES, "all", *EXTRA])
    parser.add_argument("--chain", type=int, default=40, help="hops: chain length (default 40)")
    parser.add_argument("--repeat", type=int, default=3, help="hops/makespan: runs (default 3)")
    parser.add_argument("--runs", type=int, default=10, help="docker: runs of each side (default 10)")
    parser.add_argument("--jobs", type=int, default=100, help="noop100: jobs (default 100)")
    parser.add_argument("--executor", choices=["local", "docker", "both"], default="both", help="rss (default both)")
    parser.add_argument("--celery-conf", action="append", default=[], metavar="KEY=JSON",
                        help="override a Celery setting in the workers and the submitter, to measure "
                             "what it costs (e.g. task_track_started=false); repeatable")
    argv = sys.argv[1:] if argv is None else argv
    # Child processes this script starts for itself; not for users.
    if argv[:1] == ["_worker"]:  # _worker OVERRIDES_JSON <conveyor worker options>
        overridden_worker_main(json.loads(argv[1]), argv[2:])
        return 0
    if argv[:1] == ["_bare-worker"]:  # _bare-worker REDIS_URL CONCURRENCY
        bare_worker_main(argv[1], int(argv[2]))
        return 0
    args = parser.parse_args(argv)
    args.celery_conf = parse_overrides(args.celery_conf)
    # SIGTERM unwinds like Ctrl-C, so every ExitStack stops what it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    names = list(BENCHES) if args.bench == "all" else [args.bench]
    if args.celery_conf:
        print(f"Celery settings overridden: {args.celery_conf}")
    print(f"{host_line()}\n")
    benches = {**BENCHES, **EXTRA}
    return run_sections({name: (lambda bench=benches[name]: bench(args)) for name in names})


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the ExitStacks have stopped everything by now
        print("\ninterrupted; every process, container and directory it started is gone", file=sys.stderr)
        sys.exit(130)
