"""Limits are the operator's: a job gets them by default and may ask only within them.

Attacks, each shown stopped:
- a pipeline asks for more memory (or CPUs) than the worker allows → the job fails at once,
  its log naming the limit, the maximum and the setting; no step starts;
- a pipeline asks to run as root on a worker whose operator set a non-root user → refused;
- a job without `resources:` → still limited: memory = host/concurrency, all CPUs, 1024
  pids, as the container's cgroup shows (Docker);
- a fork bomb → contained by the pids limit: the step never holds more processes than
  the limit, the host keeps forking, and the step ends at its timeout (Docker);
- a memory hog with no `resources:` → OOM-killed by the default limit (Docker);
- filling the disk through /workspace, many small files → stopped by the workspace size
  check, the job failed saying why (fast, and on Docker); one big file → stopped by the
  kernel at the workspace size (fsize ulimit, Docker);
- printing without end → the full log on disk stops at its size with a marker line.
"""
from __future__ import annotations

import os
import textwrap
import threading
import time
from pathlib import Path

import pytest

from coordinator.frontend import load_text
from shared.config import GIB, MIB, JobPolicy, Settings, job_policy
from shared.state import JobMeta, open_state
from shared.state.base import StateStore
from worker import job_runner
from worker.context import WorkerContext
from worker.executors.fake import FakeExecutor
from worker.job_runner import LimitExceeded, Reschedule, run_job

RUN = "20261203-130000-limits"


def start(tmp_path: Path, pipeline: str, source_files: dict[str, int] | None = None) -> StateStore:
    result = load_text(textwrap.dedent(pipeline), "p.yml", parameters={}, run_id=RUN)
    assert result.ok, result.diagnostics
    store = open_state("sqlite:///" + str(tmp_path / "state.db"))
    source = tmp_path / "src"
    source.mkdir()
    for name, size in (source_files or {}).items():
        (source / name).write_bytes(os.urandom(size))  # random: really on disk, not sparse
    store.create_run(RUN, result.plan.pipeline, {name: JobMeta() for name in result.plan.jobs},
                     result.plan.to_dict(), {"source": str(source)})
    return store


def run_to_the_end(ctx: WorkerContext, job: str) -> dict:
    for _ in range(10):
        try:
            return run_job(ctx, RUN, job)
        except Reschedule:
            continue
    raise AssertionError(f"{job} still rescheduling")


def log_of(store: StateStore, job: str) -> str:
    entries, _ = store.read_logs(RUN, job, after=None, count=100_000)
    return "\n".join(entry.text for entry in entries)


def record(store: StateStore, job: str):
    return store.get_jobs(RUN, [job])[job]


def policy(**changes) -> JobPolicy:
    base = job_policy(Settings(), concurrency=2, memory=8 * GIB, cpus=2.0)
    return JobPolicy(**{**base.__dict__, **changes})


def fake_context(store: StateStore, executor, tmp_path: Path, limits: JobPolicy | None = None) -> WorkerContext:
    """A context whose jobs run under ``limits`` (the context's own; None: the defaults)."""
    extra = {} if limits is None else {"policy": limits}
    return WorkerContext(store=store, executor=executor, worker_name="w1", data_dir=tmp_path / "data",
                         lease_seconds=0.6, **extra)


# -- fast: the job runner's decisions, with the fake executor -----------------------------

def test_asking_above_the_maximum_fails_at_once_naming_the_limit(tmp_path) -> None:
    strict = policy(memory_max_bytes=1 * GIB, cpus_max=2.0)
    store = start(tmp_path, """
        name: greedy
        jobs:
          big: {resources: {memory: 64g}, steps: [{name: s, script: [x]}]}
          cpu: {resources: {cpus: 16}, steps: [{name: s, script: [x]}]}
    """)
    executor = FakeExecutor()
    for job, wording in (("big", "64.0 GiB, above this worker's maximum of 1.0 GiB (CONVEYOR_JOB_MEMORY_MAX)"),
                         ("cpu", "16 cpus, above this worker's maximum of 2 (CONVEYOR_JOB_CPUS_MAX)")):
        result = run_to_the_end(fake_context(store, executor, tmp_path, strict), job)
        assert result["status"] == "failed"
        assert record(store, job).attempts[-1].reason == job_runner.LIMIT_REASON
        assert record(store, job).attempt == 1  # not retried: it would ask again
        assert wording in log_of(store, job)
    assert not [call for call in executor.calls if call[0] == "start"], "a step ran despite the refusal"


def test_two_contexts_in_one_process_keep_their_own_limits(tmp_path) -> None:
    store = start(tmp_path, """
        name: two
        jobs:
          a: {resources: {memory: 2g}, steps: [{name: s, script: [x]}]}
          b: {resources: {memory: 2g}, steps: [{name: s, script: [x]}]}
    """)
    strict = fake_context(store, FakeExecutor(), tmp_path, policy(memory_max_bytes=1 * GIB))
    roomy = fake_context(store, FakeExecutor(), tmp_path, policy(memory_max_bytes=4 * GIB))
    assert run_to_the_end(strict, "a")["status"] == "failed"
    assert run_to_the_end(roomy, "b")["status"] == "success"
    assert "above this worker's maximum of 1.0 GiB" in log_of(store, "a")
    assert ("start", "b", "s") in roomy.executor.calls
    assert not [call for call in strict.executor.calls if call[0] == "start"]
    assert strict.policy.memory_max_bytes == 1 * GIB  # neither changed the other


def test_asking_within_the_maximum_runs_with_what_was_asked(tmp_path) -> None:
    job = load_text("name: p\njobs:\n  a: {resources: {memory: 512m, cpus: 0.5}, steps: [{name: s, script: [x]}]}\n",
                    "p.yml", parameters={}, run_id=RUN).plan.jobs["a"]
    limited = job_runner.step_limits(job, policy(memory_max_bytes=1 * GIB))
    assert (limited.memory_bytes, limited.cpus, limited.pids) == (512 * MIB, 0.5, 1024)
    bare = load_text("name: p\njobs:\n  a: {steps: [{name: s, script: [x]}]}\n", "p.yml", parameters={},
                     run_id=RUN).plan.jobs["a"]
    defaults = job_runner.step_limits(bare, policy())
    assert (defaults.memory_bytes, defaults.cpus, defaults.pids) == (4 * GIB, 2.0, 1024)


def test_root_is_refused_where_the_operator_set_a_non_root_user(tmp_path) -> None:
    plan = load_text(textwrap.dedent("""
        name: p
        jobs:
          root: {user: "0:0", steps: [{name: s, script: [x]}]}
          other: {user: 2000, read_only_root: true, steps: [{name: s, script: [x]}]}
          plain: {steps: [{name: s, script: [x]}]}
    """), "p.yml", parameters={}, run_id=RUN).plan
    strict = policy(user="1000:1000")
    with pytest.raises(LimitExceeded, match="CONVEYOR_JOB_USER=1000:1000"):
        job_runner.job_spec(plan.jobs["root"], RUN, tmp_path, "w", "docker", strict)
    other = job_runner.job_spec(plan.jobs["other"], RUN, tmp_path, "w", "docker", strict)
    assert (other.user, other.read_only_root) == ("2000", True)
    plain = job_runner.job_spec(plan.jobs["plain"], RUN, tmp_path, "w", "docker", strict)
    assert (plain.user, plain.read_only_root, plain.network) == ("1000:1000", False, "isolated")
    # The worker's read-only root cannot be turned off by a job; its network is the worker's.
    forced = job_runner.job_spec(plan.jobs["other"], RUN, tmp_path, "w", "docker",
                                 policy(read_only_root=True, network="none"))
    assert (forced.read_only_root, forced.network) == (True, "none")
    # A pipeline never picks the host user of local steps: that is CONVEYOR_LOCAL_USER's.
    local = job_runner.job_spec(plan.jobs["root"], RUN, tmp_path, "w", "local", policy(local_user="nobody"))
    assert local.user == "nobody"


def test_filling_the_workspace_stops_the_job_and_says_why(tmp_path) -> None:
    # The source alone is 3 MiB; the step "runs" 30 s: the periodic check must stop it.
    store = start(tmp_path, """
        name: filler
        jobs:
          fill: {steps: [{name: s, script: [x], environment: {FAKE_SLEEP: "30"}}]}
    """, source_files={"blob": 3 * MIB})
    began = time.monotonic()
    result = run_to_the_end(fake_context(store, FakeExecutor(), tmp_path, policy(workspace_bytes=1 * MIB)), "fill")
    assert time.monotonic() - began < 15
    assert result["status"] == "failed"
    assert record(store, "fill").attempts[-1].reason == job_runner.LIMIT_REASON
    assert "more than 1.0 MiB, this worker's limit (CONVEYOR_JOB_WORKSPACE_SIZE)" in log_of(store, "fill")


def test_endless_output_stops_growing_the_full_log_with_a_marker(tmp_path) -> None:
    lines = "\\n".join(f"line {n:06d} " + "x" * 90 for n in range(5000))  # ~500 KiB
    store = start(tmp_path, f"""
        name: chatty
        jobs:
          talk: {{steps: [{{name: s, script: [x], environment: {{FAKE_OUTPUT: "{lines}"}}}}]}}
    """)
    result = run_to_the_end(fake_context(store, FakeExecutor(), tmp_path, policy(log_bytes=64 * 1024)), "talk")
    assert result["status"] == "success"
    [full_log] = (tmp_path / "data" / "logs" / RUN).glob("*.log")
    text = full_log.read_text()
    assert full_log.stat().st_size < 64 * 1024 + 1024  # the limit and the marker lines
    assert "full log truncated: it reached this worker's limit of 64.0 KiB (CONVEYOR_JOB_LOG_SIZE)" in text
    assert "line 004999" not in text and "not written to this file" in text


def test_the_local_executor_tells_the_job_what_it_does_not_apply(tmp_path) -> None:
    from worker.executors.local import LocalExecutor

    store = start(tmp_path, """
        name: local
        jobs:
          asks: {resources: {memory: 1g}, user: "1000", steps: [{name: s, script: ["true"]}]}
          plain: {steps: [{name: s, script: ["true"]}]}
    """)
    ctx = fake_context(store, LocalExecutor(scripts_root=tmp_path / "jobs"), tmp_path, policy())
    assert run_to_the_end(ctx, "asks")["status"] == "success"
    assert run_to_the_end(ctx, "plain")["status"] == "success"
    assert "`resources` are not enforced by the local executor" in log_of(store, "asks")
    assert "CONVEYOR_LOCAL_USER" in log_of(store, "asks")
    assert "not enforced" not in log_of(store, "plain")


def test_disk_usage_counts_allocated_blocks_and_hard_links_once(tmp_path) -> None:
    (tmp_path / "a").write_bytes(os.urandom(256 * 1024))
    os.link(tmp_path / "a", tmp_path / "b")
    (tmp_path / "sparse").touch()
    os.truncate(tmp_path / "sparse", 1 * GIB)  # a size, no disk
    (tmp_path / "link").symlink_to("/usr")  # never followed
    used = job_runner.disk_usage(tmp_path)
    assert 256 * 1024 <= used < 400 * 1024


# -- slow: real Docker ---------------------------------------------------------------------

def docker_context(store: StateStore, tmp_path: Path, docker_client, limits: JobPolicy) -> WorkerContext:
    from worker.executors.docker import DockerExecutor

    return WorkerContext(store=store, executor=DockerExecutor(docker_client, scripts_root=tmp_path / "jobs"),
                         worker_name=f"limits-{os.getpid()}", data_dir=tmp_path / "data", lease_seconds=3,
                         policy=limits)


def _cgroup_memory_line() -> str:
    # cgroup v2 file, else v1's
    return "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes"


def test_a_job_without_resources_is_limited_by_default(tmp_path, docker_client, busybox_image) -> None:
    default = job_policy(Settings(), concurrency=4)
    store = start(tmp_path, f"""
        name: bare
        jobs:
          bare:
            image: {busybox_image}
            steps:
              - name: show
                script:
                  - "{_cgroup_memory_line()}"
                  - "cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max"
    """)
    result = run_to_the_end(docker_context(store, tmp_path, docker_client, default), "bare")
    log = log_of(store, "bare")
    assert result["status"] == "success", log
    numbers = [int(line) for line in log.splitlines() if line.strip().isdigit()]
    memory, pids = numbers
    assert abs(memory - default.memory_bytes) < 4096  # the kernel rounds down to a page
    assert memory < 9 * GIB  # never unlimited
    assert pids == 1024


def test_a_memory_hog_without_resources_meets_the_default_limit(tmp_path, docker_client, busybox_image) -> None:
    store = start(tmp_path, f"""
        name: hog
        jobs:
          hog:
            image: {busybox_image}
            steps: [{{name: eat, script: ["dd if=/dev/zero of=/dev/null bs=256M count=1"]}}]
    """)
    result = run_to_the_end(docker_context(store, tmp_path, docker_client, policy(memory_bytes=32 * MIB)), "hog")
    assert (result["status"], result["reason"]) == ("failed", "oom")


def _load() -> float:
    return os.getloadavg()[0]


@pytest.mark.slow
def test_a_fork_bomb_stays_inside_the_pids_limit(tmp_path, docker_client, busybox_image) -> None:
    """The bomb runs for 8 s under the job runner's limits (pids 64, half a CPU here, to be
    kind to a shared machine), its shell kept alive by a loop of builtins (it cannot fork
    any more); a monitor reads the container's pid count from the engine."""
    from tests.worker.executors.contract_suite import drive
    from worker.executors.contract import JobSpec, StepSpec
    from worker.executors.docker import DockerExecutor

    bare = load_text("name: p\njobs:\n  a: {steps: [{name: s, script: [x]}]}\n", "p.yml", parameters={},
                     run_id=RUN).plan.jobs["a"]
    limits = job_runner.step_limits(bare, policy(pids=64, cpus=0.5))
    executor = DockerExecutor(docker_client, scripts_root=tmp_path / "jobs")
    (tmp_path / "ws").mkdir()
    job = JobSpec(run_id=RUN, job="bomb", workspace=tmp_path / "ws", worker_name=f"bomb-{os.getpid()}",
                  kill_grace=1)
    step = StepSpec(0, "bomb", busybox_image, ("bomb() { bomb | bomb & }; bomb", "while :; do :; done"), timeout=8.0, limits=limits)
    peak = [0]
    forks_ok = [True]
    load_before = _load()

    def watch(handle, lines) -> None:
        while not handle.finished.is_set():
            if handle.container_id:
                try:
                    stats = docker_client.api.stats(handle.container_id, stream=False, one_shot=True)
                    peak[0] = max(peak[0], int((stats.get("pids_stats") or {}).get("current") or 0))
                except Exception:  # noqa: BLE001 - the container may be gone at the end
                    pass
            forks_ok[0] &= os.system("true") == 0  # the host still forks
            time.sleep(0.2)

    executor.prepare(job)
    try:
        result = drive(executor, job, step, during=watch)
    finally:
        executor.cleanup(job)
    load_after = _load()
    print(f"fork bomb: peak pids {peak[0]} (limit 64); 1-min load {load_before:.2f} -> {load_after:.2f}")
    assert result.outcome.reason == "timeout"  # it ran, contained, until stopped
    assert 8 <= peak[0] <= 64, peak[0]  # it really forked, and never past the limit
    assert forks_ok[0]


@pytest.mark.slow
def test_filling_the_disk_through_the_workspace_is_stopped(tmp_path, docker_client, busybox_image) -> None:
    store = start(tmp_path, f"""
        name: fill
        jobs:
          small-files:
            image: {busybox_image}
            timeout: 120
            steps:
              - name: fill
                script: ["i=0; while true; do head -c 1048576 /dev/urandom > f$i; i=$((i+1)); sleep 0.05; done"]
          one-file:
            image: {busybox_image}
            steps:
              - name: fill
                script: ["head -c 104857600 /dev/zero > big"]
    """)
    ctx = docker_context(store, tmp_path, docker_client, policy(workspace_bytes=24 * MIB))
    began = time.monotonic()
    result = run_to_the_end(ctx, "small-files")
    took = time.monotonic() - began
    log = log_of(store, "small-files")
    assert result["status"] == "failed" and took < 60, log
    assert "this worker's limit (CONVEYOR_JOB_WORKSPACE_SIZE)" in log
    # One file past the size is stopped by the kernel at once (SIGXFSZ: 128 + 25).
    result = run_to_the_end(ctx, "one-file")
    assert (result["status"], result.get("exit_code")) == ("failed", 153), log_of(store, "one-file")
