"""Running one job attempt: decide, claim, execute the steps, record the outcome.

Called by the `conveyor.run_job` task. The state store, not Celery, is the source of
truth: a job runs only after its dependencies are terminal there, only under a live lease,
and every write after the claim is fenced by the claim's token.
"""
from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from shared import expressions
from shared.config import JobPolicy, is_root_user
from shared.plan import Job, Plan, Step
from shared.state.base import (
    CANCELLED, FAILED, PENDING, RETRYING, SKIPPED, SUCCESS, TERMINAL, Claim, JobRecord, RunRecord, StateStore, epoch_seconds,
)
from shared.logformat import job_log_context
from shared.units import format_size
from worker import metrics
from worker.context import WorkerContext
from worker import workspace as workspaces
from worker.artifacts import ArtifactFailure, archive_log, fetch_inputs, publish_outputs
from worker.retry_policy import JobFailure, next_retry, step_retry_delay
from worker.executors.contract import (
    InfrastructureError,
    JobSpec,
    ResourceLimits,
    StepHandle,
    StepOutcome,
    StepSpec,
)
from worker.logs import LogSink, LogSinkClosed
from worker.secrets import Masker, MissingSecret, load_secrets

log = logging.getLogger("conveyor.worker")

WAIT_FOR_DEPENDENCIES = 1.0  # seconds between checks when a dependency is not terminal yet
HEARTBEAT_MAX_INTERVAL = 2.0
# A job is reported finished only once its log is complete in the store (`conveyor logs`
# right after the run ends must show the last line). After a step ends, its reader still
# hands over buffered output: it is waited for as long as lines keep coming, and given up
# only after this many seconds without one (an engine log stream that never ends).
READER_IDLE_LIMIT = 30.0
# How long storing the log's last lines may be retried before the status is written anyway
# (the lease is kept meanwhile; what could not be stored stays in the full log file).
CLOSE_LOG_RETRY = 10.0
# Seconds between two measurements of a job's workspace; a measurement that took long
# (a huge tree) spaces the next ones out to ten times its duration.
WORKSPACE_CHECK_INTERVAL = 2.0
# The reason recorded for a job refused or stopped by a worker limit (the request is
# above the maximum, the workspace outgrew its size): the job's own doing, and a retry
# would only repeat it. The job's log names the limit and the setting.
LIMIT_REASON = "script_failure"


class LimitExceeded(Exception):
    """A job asks for more than this worker allows; the message names the limit and the maximum."""


def step_limits(job: Job, policy: JobPolicy) -> ResourceLimits:
    """The limits of the job's steps: its `resources:` or the worker's defaults, never above
    the worker's maxima (LimitExceeded: the job fails at once, as GitLab refuses it)."""
    asked = job.resources
    if asked.memory_bytes is not None and asked.memory_bytes > policy.memory_max_bytes:
        raise LimitExceeded(
            f"the job asks for memory {format_size(asked.memory_bytes)}, above this worker's maximum of "
            f"{format_size(policy.memory_max_bytes)} (CONVEYOR_JOB_MEMORY_MAX): lower `resources.memory`")
    if asked.cpus is not None and asked.cpus > policy.cpus_max:
        raise LimitExceeded(
            f"the job asks for {asked.cpus:g} cpus, above this worker's maximum of {policy.cpus_max:g} "
            "(CONVEYOR_JOB_CPUS_MAX): lower `resources.cpus`")
    return ResourceLimits(memory_bytes=asked.memory_bytes or policy.memory_bytes,
                          cpus=asked.cpus or policy.cpus, pids=policy.pids)


def job_spec(job: Job, run_id: str, workspace: Path, worker_name: str, executor_name: str,
             policy: JobPolicy) -> JobSpec:
    """The executor's view of the job: network, user and root filesystem within what the
    worker allows (LimitExceeded when the job asks for root where the worker forbids it)."""
    if executor_name == "local":
        # Host users are the operator's to choose, never a pipeline's.
        user = policy.local_user
    else:
        if job.user is not None and is_root_user(job.user) and not policy.allows_root:
            raise LimitExceeded(
                f"the job asks to run as root (user: {job.user}), which this worker does not allow "
                f"(CONVEYOR_JOB_USER={policy.user}): drop `user:` or name a non-root uid")
        user = job.user if job.user is not None else policy.user
    return JobSpec(run_id=run_id, job=job.name, workspace=workspace, worker_name=worker_name,
                   network=policy.network, user=user,
                   read_only_root=policy.read_only_root or bool(job.read_only_root),
                   max_file_bytes=policy.workspace_bytes)


def disk_usage(root: Path, stop_above: int | None = None) -> int:
    """Bytes the files under ``root`` take on disk (allocated blocks; hard links once,
    symlinks not followed). Stops counting once past ``stop_above``."""
    total = 0
    seen: set[tuple[int, int]] = set()
    pending = [str(root)]
    while pending:
        try:
            entries = os.scandir(pending.pop())
        except OSError:
            continue  # gone, or not ours to read
        with entries:
            for entry in entries:
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if info.st_nlink > 1 and not stat.S_ISDIR(info.st_mode):
                    if (info.st_dev, info.st_ino) in seen:
                        continue
                    seen.add((info.st_dev, info.st_ino))
                total += info.st_blocks * 512
                if stat.S_ISDIR(info.st_mode):
                    pending.append(entry.path)
        if stop_above is not None and total > stop_above:
            break
    return total


class Reschedule(Exception):
    """Run this task again after ``countdown`` seconds (the task turns it into a Celery retry)."""

    def __init__(self, countdown: float, why: str):
        super().__init__(why)
        self.countdown = countdown


@dataclass(frozen=True)
class Admitted:
    """A job this task has claimed: what its attempt (or its deployment) starts from."""

    plan: Plan
    job: Job
    claim: Claim
    run: RunRecord
    record: JobRecord  # the job as read before the claim: its earlier attempts
    records: dict[str, JobRecord]  # the job's ancestors, all terminal
    deadline: float  # the pipeline's timeout, epoch seconds


def _ancestors(plan: Plan, name: str) -> list[str]:
    seen: dict[str, None] = {}
    stack = list(plan.jobs[name].depends_on)
    while stack:
        dep = stack.pop()
        if dep not in seen:
            seen[dep] = None
            stack.extend(plan.jobs[dep].depends_on)
    return list(seen)


def decide(plan: Plan, job: Job, records: dict[str, JobRecord], run_cancelled: bool) -> str | None:
    """None when the job should run, else the skip reason (`condition_false`/`upstream_failed`).

    Status functions see every ancestor, as in GitHub Actions: a cleanup job with
    `failure()` runs when anything upstream failed, even if its direct dependency was skipped.
    """
    ancestors = _ancestors(plan, job.name)
    results = {name: (records[name].status, records[name].allow_failure) for name in ancestors}
    context = expressions.Context(
        env=job.environment,
        vars=plan.parameters,
        jobs={name: records[name].status for name in ancestors},
        pipeline={"name": plan.pipeline},
        git=getattr(plan, "trigger", None),  # the `git` root: what started the run (None: nothing did)
        dependency_results=results,
        run_cancelled=run_cancelled,
    )
    try:
        if expressions.condition_met(job.conditional, context):
            return None
    except expressions.ExpressionError as exc:
        log.warning("run job %s: conditional %r failed to evaluate: %s", job.name, job.conditional, exc.message)
    upstream_bad = any(
        status not in (SUCCESS,) and not (status == FAILED and allowed) for status, allowed in results.values()
    )
    return "upstream_failed" if upstream_bad else "condition_false"


class Attempt:
    """One claimed attempt: runs the steps under a heartbeat that can stop them."""

    def __init__(self, ctx: WorkerContext, plan: Plan, job: Job, claim: Claim, run: RunRecord,
                 deadline: float | None, sink: LogSink, workspace: Path):
        self.ctx = ctx
        self.plan = plan
        self.job = job
        self.claim = claim
        self.run = run
        self.run_id = run.run_id
        self.deadline = deadline
        self.sink = sink
        self.workspace = workspace
        self.stop_reason: str | None = None  # cancelled | timeout | lost | limit
        self.current: StepHandle | None = None
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.policy = ctx.policy  # the limits are the context's (worker/context.py)
        self.limits: ResourceLimits | None = None  # set by `perform` once the request is checked

    # -- heartbeat -----------------------------------------------------------------
    def _stop(self, reason: str) -> None:
        with self.lock:
            if self.stop_reason is None:
                self.stop_reason = reason
            handle = self.current
        if handle is not None:
            self.ctx.executor.kill(handle, "timeout" if reason == "timeout" else "cancelled")

    def workspace_over_limit(self) -> bool:
        """Measure the workspace; past the worker's limit, say so and stop the job (True)."""
        limit = self.policy.workspace_bytes
        used = disk_usage(self.workspace, stop_above=limit)
        if used <= limit:
            return False
        with self.lock:
            first = self.stop_reason is None
        if first:
            with contextlib.suppress(LogSinkClosed):
                self.sink.system(f"the workspace takes more than {format_size(limit)}, this worker's limit "
                                 "(CONVEYOR_JOB_WORKSPACE_SIZE): the job is stopped")
        self._stop("limit")
        return True

    def workspace_loop(self) -> None:
        """Measure the workspace now and then while the job runs (docs/configuration.md)."""
        pause = WORKSPACE_CHECK_INTERVAL
        while not self.done.wait(pause):
            started = time.monotonic()
            try:
                if self.workspace_over_limit():
                    return
            except Exception as exc:  # a measurement must never take the job down
                log.warning("measuring the workspace of %s/%s failed: %s", self.run_id, self.job.name, exc)
            pause = max(WORKSPACE_CHECK_INTERVAL, 10 * (time.monotonic() - started))

    def heartbeat_loop(self) -> None:
        lease_ms = int(self.ctx.lease_seconds * 1000)
        # Often enough that a cancel or the pipeline timeout stops steps within seconds,
        # whatever the lease length; a heartbeat is one small atomic script.
        interval = min(max(self.ctx.lease_seconds / 3, 0.2), HEARTBEAT_MAX_INTERVAL)
        while not self.done.wait(interval):
            try:
                answer = self.ctx.store.heartbeat(self.run_id, self.job.name, self.claim.token, lease_ms)
            except Exception as exc:  # a store hiccup: keep running, the lease has slack
                log.warning("heartbeat for %s/%s failed: %s", self.run_id, self.job.name, exc)
                continue
            if answer == "cancel":
                self._stop("cancelled")
            elif answer == "lost":
                self._stop("lost")
            if self.deadline is not None and time.time() > self.deadline:
                self.ctx.store.request_cancel(self.run_id)
                self._stop("timeout")

    # -- steps ---------------------------------------------------------------------
    def run_step(self, spec: JobSpec, step: Step, index: int, env: dict[str, str], job_ends_at: float) -> StepOutcome:
        remaining = job_ends_at - time.monotonic()
        if remaining <= 0:
            return StepOutcome(None, "timeout", 0.0)
        timeout = min(float(step.timeout), remaining)
        step_spec = StepSpec(
            index=index, name=step.name, image=step.image, script=step.script, env=env,
            working_directory=step.working_directory, timeout=timeout,
            limits=self.limits or step_limits(self.job, self.policy),
        )
        sink = self.sink
        handle = self.ctx.executor.start(spec, step_spec)
        with self.lock:
            self.current = handle
            stopping = self.stop_reason
        if stopping:
            self.ctx.executor.kill(handle, "timeout" if stopping == "timeout" else "cancelled")

        lines_read = [0]

        def pump() -> None:
            try:
                for line in self.ctx.executor.tail(handle):
                    sink.write(line.stream, line.text)
                    lines_read[0] += 1
            except LogSinkClosed:
                pass  # the job stopped waiting for this output (see below)
            except Exception as exc:  # a broken log stream: say so in the job's log
                log.warning("reading the output of %s/%s failed: %s", self.run_id, self.job.name, exc)
                with contextlib.suppress(LogSinkClosed):
                    sink.system(f"reading the output of step {step.name} failed: {exc}")

        reader = threading.Thread(target=pump, name=f"tail-{self.job.name}", daemon=True)
        reader.start()
        try:
            outcome = self.ctx.executor.wait(handle)
        finally:
            if not await_reader(reader, lambda: lines_read[0], READER_IDLE_LIMIT):
                sink.system(f"step {step.name}: no output for {READER_IDLE_LIMIT:.0f}s after it ended, "
                            "but its log stream is still open; what it may still deliver is not recorded")
            with self.lock:
                self.current = None
        return outcome

    def execute(self, spec: JobSpec, secrets: dict[str, str]) -> StepOutcome | None:
        """Run every step; None when the job succeeded, else the outcome that failed it."""
        sink = self.sink
        job_ends_at = time.monotonic() + self.job.timeout
        for index, step in enumerate(self.job.steps):
            if self.stop_reason:
                return StepOutcome(None, "timeout" if self.stop_reason == "timeout" else "cancelled", 0.0)
            sink.system(f"step {index + 1}/{len(self.job.steps)}: {step.name}")
            if step.action == "noop":
                continue
            env = {**step.environment, **secrets}
            for try_number in range(step.retry_count + 1):
                outcome = self.run_step(spec, step, index, env, job_ends_at)
                # A burst between two periodic measurements is caught here, step by step.
                if not self.stop_reason and self.workspace_over_limit():
                    return StepOutcome(outcome.exit_code, "cancelled", outcome.duration)
                if outcome.succeeded or outcome.reason in ("cancelled", "timeout") or self.stop_reason:
                    break
                if try_number < step.retry_count:
                    delay = step_retry_delay(try_number + 1, self.job.retry_policy)
                    sink.system(f"step {step.name} failed ({outcome.reason}, exit {outcome.exit_code}); "
                                f"retry {try_number + 1}/{step.retry_count} in {delay:.1f}s")
                    if _sleep_unless(lambda: bool(self.stop_reason), delay):
                        break
            if outcome.succeeded:
                continue
            sink.system(f"step {step.name} failed: {outcome.reason} (exit code {outcome.exit_code})")
            if step.continue_on_failure and outcome.reason not in ("cancelled", "timeout"):
                continue
            return outcome
        return None


    def perform(self, secrets: dict[str, str], missing: MissingSecret | None) -> JobFailure | None:
        """Prepare, run the steps, publish the artifacts; None when all of it succeeded.

        Always cleans up (the executor's leftovers, the workspace), whatever failed. Every
        failure becomes a ``JobFailure`` that says what a retry would count against.
        """
        ctx, sink = self.ctx, self.sink
        refused: LimitExceeded | None = None
        try:
            spec = job_spec(self.job, self.run_id, self.workspace, ctx.worker_name, ctx.executor.name, self.policy)
            self.limits = step_limits(self.job, self.policy)
        except LimitExceeded as exc:
            refused = exc
            spec = JobSpec(run_id=self.run_id, job=self.job.name, workspace=self.workspace,
                           worker_name=ctx.worker_name)
        try:
            sink.system(f"attempt {self.claim.attempt} on {ctx.worker_name} ({ctx.executor.name} executor)")
            if missing is not None:
                sink.system(str(missing))
                return JobFailure("infrastructure", retry="never")  # an operator must add it first
            if refused is not None:
                sink.system(f"refused: {refused}")
                return JobFailure(LIMIT_REASON, retry="never")
            if ctx.executor.name == "local":
                # Said to the pipeline's author, in the job's log: what they asked for is not applied.
                if self.job.user is not None or self.job.read_only_root:
                    sink.system("`user` and `read_only_root` apply to Docker steps; local steps run as the "
                                "user this worker's operator chose (CONVEYOR_LOCAL_USER)")
                if self.job.resources.memory_bytes is not None or self.job.resources.cpus is not None:
                    sink.system("`resources` are not enforced by the local executor: the steps run "
                                "unlimited on this host")
            _prepare_workspace(ctx, self.plan, self.job, self.run, self.workspace, sink)
            ctx.executor.prepare(spec)
            failed = self.execute(spec, secrets)
            if self.stop_reason == "limit":
                exit_code = failed.exit_code if failed is not None else None
                return JobFailure(LIMIT_REASON, exit_code, retry="never")
            if failed is not None:
                # A cancel is final; any other step failure counts against the job's retry_count.
                return JobFailure(str(failed.reason), failed.exit_code,
                                  retry="never" if failed.reason == "cancelled" else "script")
            if ctx.artifacts is not None and not self.stop_reason:
                publish_outputs(ctx.artifacts, self.plan, self.job, self.run, self.workspace, sink)
            return None
        except ArtifactFailure as exc:
            sink.system(str(exc))
            # Not retryable: an artifact path leaving the workspace, a corrupt object.
            return JobFailure(exc.reason, retry="infrastructure" if exc.retryable else "never")
        except InfrastructureError as exc:
            sink.system(f"infrastructure error: {exc}")
            return JobFailure("infrastructure", retry="infrastructure")
        except Exception as exc:  # never let one job's bug take the canvas down
            log.exception("job %s/%s crashed", self.run_id, self.job.name)
            sink.system(f"internal error: {type(exc).__name__}: {exc}")
            return JobFailure("infrastructure", retry="infrastructure")
        finally:
            try:
                ctx.executor.cleanup(spec)
            except Exception as exc:
                log.warning("cleanup of %s failed: %s", self.job.name, exc)
            workspaces.remove(self.workspace)


def await_reader(reader: threading.Thread, lines_read: Callable[[], int], idle_limit: float,
                 poll: float = 0.2) -> bool:
    """Wait until a step's log reader has handed over its last line; True when it ended.

    There is no fixed limit: a chatty step's output may take a while to drain after the
    step ended. False once `lines_read()` stayed the same for `idle_limit` seconds while
    the reader was still running.
    """
    seen, quiet_since = lines_read(), time.monotonic()
    while True:
        reader.join(timeout=poll)
        if not reader.is_alive():
            return True
        now = lines_read()
        if now != seen:
            seen, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= idle_limit:
            return False


def _sleep_unless(stop: Callable[[], bool], seconds: float) -> bool:
    """Sleep up to ``seconds``; True when ``stop`` became true meanwhile."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if stop():
            return True
        time.sleep(min(0.2, max(end - time.monotonic(), 0)))
    return stop()


def task_result(run_id: str, job: str, status: str, reason: str | None = None, exit_code: int | None = None) -> dict:
    """What a job task returns: small (the result backend stores it and Celery events carry
    its repr, cut past 1 KiB), with the status and reason Flower shows (worker/task_events.py)."""
    record: dict = {"run_id": run_id, "job": job, "status": status, "reason": reason}
    if exit_code is not None:
        record["exit_code"] = exit_code
    return record


def _recorded(store: StateStore, run_id: str, job: str, record: JobRecord | None = None) -> dict:
    """The outcome of a job this task did not run: its status as recorded now."""
    record = record or store.get_jobs(run_id, [job])[job]
    return task_result(run_id, job, record.status, record.reason, record.exit_code)


def run_job(ctx: WorkerContext, run_id: str, job_name: str) -> dict:
    """Run (or skip, or decline) one job of steps; returns a small record for the canvas.

    The `conveyor.run_job` task does the same through `admit` and dispatches deployment
    jobs to `worker.deploy_tasks` instead; this is for callers that only run steps.
    """
    with job_log_context(run_id, job_name):
        admitted = admit(ctx, run_id, job_name)
        if not isinstance(admitted, Admitted):
            return admitted
        if admitted.job.deploy is not None:
            raise ValueError(f"{job_name} is a deployment: worker.deploy_tasks starts it")
        return run_admitted(ctx, admitted)


def admit(ctx: WorkerContext, run_id: str, job_name: str) -> Admitted | dict:
    """Decide whether the job runs now, and claim it if so.

    Returns the task's result when there is nothing to run (the run is gone, the job is
    terminal or skipped, another attempt owns it), the claim otherwise. Raises Reschedule
    while a dependency is not terminal or another worker holds a live lease.
    """
    store = ctx.store
    run = store.get_run(run_id)
    if run is None:
        log.warning("run %s is unknown (expired?); dropping job %s", run_id, job_name)
        return task_result(run_id, job_name, "unknown")
    plan = ctx.plan(run_id)
    job = plan.jobs[job_name]
    ancestors = _ancestors(plan, job_name)
    records = store.get_jobs(run_id, [job_name, *ancestors])
    record = records[job_name]
    if record.status in TERMINAL:
        return _recorded(store, run_id, job_name, record)
    deadline = epoch_seconds(run.created_at) + plan.timeout
    if time.time() > deadline and not run.cancel_requested:
        # Nothing may outlive the pipeline timeout, not even a job whose upstream was lost.
        store.request_cancel(run_id)
        return _recorded(store, run_id, job_name)
    waiting = [d for d in ancestors if records[d].status not in TERMINAL]
    if waiting:
        raise Reschedule(WAIT_FOR_DEPENDENCIES, f"waiting for {', '.join(waiting[:3])}")
    if record.status == PENDING:
        reason = decide(plan, job, records, run.cancel_requested)
        if reason is not None:
            store.skip(run_id, job_name, reason)
            metrics.job_finished(SKIPPED, reason, 0.0, started=False)
            return task_result(run_id, job_name, SKIPPED, reason)
    claim = store.claim(run_id, job_name, ctx.worker_name, int(ctx.lease_seconds * 1000))
    if not isinstance(claim, Claim):
        if claim.reason == "leased":
            # Another worker holds a live lease (an early redelivery). Watch instead of
            # running: if that worker dies, its lease expires and this copy takes over.
            raise Reschedule(ctx.lease_seconds, "another attempt holds the lease")
        return _recorded(store, run_id, job_name)
    return Admitted(plan, job, claim, run, record, records, deadline)


def run_admitted(ctx: WorkerContext, admitted: Admitted) -> dict:
    """Run a claimed job's steps to its outcome (or a Reschedule for its retry)."""
    _observe_wait(admitted.job, admitted.run, admitted.records, admitted.claim)
    metrics.job_started()
    started = time.monotonic()
    result: dict = {"status": FAILED}
    try:
        result = _run_claimed(ctx, admitted)
    except Reschedule:
        result = {"status": RETRYING}
        raise
    finally:
        metrics.job_finished(result["status"], result.get("reason"), time.monotonic() - started)
    return result


def _observe_wait(job: Job, run: RunRecord, records: dict[str, JobRecord], claim: Claim) -> None:
    """Queue wait of a root job (since submission) or hop latency (since its last dependency ended)."""
    if claim.attempt != 1:
        return
    now = time.time()
    finished = [epoch_seconds(records[d].finished_at) for d in job.depends_on if records[d].finished_at]
    if finished:
        metrics.hop_latency(now - max(f for f in finished if f is not None))
    else:
        metrics.queue_wait(now - (epoch_seconds(run.created_at) or now))


def _run_claimed(ctx: WorkerContext, admitted: Admitted) -> dict:
    plan, job, claim, run, record = admitted.plan, admitted.job, admitted.claim, admitted.run, admitted.record
    run_id = run.run_id
    workspace = workspaces.workspace_path(ctx.data_dir, run_id, job.name)
    full_log = ctx.data_dir / "logs" / run_id / f"{workspace.name}.{claim.attempt}.log"
    full_log.parent.mkdir(parents=True, exist_ok=True)
    try:
        secrets = load_secrets(job.secrets)
        missing = None
    except MissingSecret as exc:
        secrets, missing = {}, exc
    sink = LogSink(ctx.store, run_id, job.name, full_log, Masker(secrets.values()),
                   file_cap_bytes=ctx.policy.log_bytes)
    attempt = Attempt(ctx, plan, job, claim, run, admitted.deadline, sink, workspace)
    heart = threading.Thread(target=attempt.heartbeat_loop, name=f"heartbeat-{job.name}", daemon=True)
    heart.start()
    # Its own thread: measuring a huge workspace must never delay a heartbeat.
    threading.Thread(target=attempt.workspace_loop, name=f"workspace-{job.name}", daemon=True).start()
    # The lease is kept until the outcome is written: uploading artifacts and the log, or
    # removing containers from a struggling engine, can outlast it, and an expired lease
    # would hand the job to another worker and throw this attempt's result away.
    try:
        return _record_outcome(attempt, record, attempt.perform(secrets, missing))
    finally:
        attempt.done.set()
        heart.join(timeout=5)
        sink.close()  # already closed on every normal path; this stops its thread after a crash


def _record_outcome(attempt: Attempt, record: JobRecord, failure: JobFailure | None) -> dict:
    """Write the attempt's outcome (success, retrying, failed, cancelled) and say it.

    ``record`` is the job as read before this attempt was claimed (its earlier attempts
    decide the retry); the log is complete in the store before the status is written.
    """
    ctx, job, run, sink, claim = attempt.ctx, attempt.job, attempt.run, attempt.sink, attempt.claim
    run_id, store = run.run_id, ctx.store
    if attempt.stop_reason == "lost":
        sink.system("lease lost: a newer attempt owns this job; this attempt's result is discarded")
        sink.close()
        return task_result(run_id, job.name, "lost")
    if failure is not None and attempt.stop_reason in ("cancelled", "timeout"):
        # Stopped from outside (cancel, the pipeline's timeout): that is the reason, and final.
        failure = JobFailure(attempt.stop_reason, failure.exit_code, retry="never")
    if failure is None:
        sink.system("job succeeded")
        _close_log(ctx, attempt.plan, job, run, sink)
        store.finish(run_id, job.name, claim.token, SUCCESS, exit_code=0)
        return task_result(run_id, job.name, SUCCESS)
    delay = next_retry(failure, record.attempts, job.retry_count, job.retry_policy)
    if delay is not None:
        sink.system(f"job failed ({failure.reason}); retrying in {delay:.1f}s")
        _close_log(ctx, attempt.plan, job, run, sink)
        if store.finish(run_id, job.name, claim.token, RETRYING, exit_code=failure.exit_code,
                        reason=failure.reason, retry_delay=delay):
            raise Reschedule(delay, f"retry after {failure.reason}")
        return task_result(run_id, job.name, "lost")
    status = CANCELLED if failure.reason == "cancelled" else FAILED
    exit_text = f" (exit code {failure.exit_code})" if failure.exit_code is not None else ""
    sink.system(f"job {status}: {failure.reason}{exit_text}")
    _close_log(ctx, attempt.plan, job, run, sink)
    store.finish(run_id, job.name, claim.token, status, exit_code=failure.exit_code, reason=failure.reason)
    return task_result(run_id, job.name, status, failure.reason, failure.exit_code)


def _prepare_workspace(ctx: WorkerContext, plan: Plan, job: Job, run: RunRecord, workspace: Path,
                       sink: LogSink) -> None:
    """A fresh workspace holding the run's source and the dependencies' artifacts."""
    workspaces.remove(workspace)
    if ctx.artifacts is not None:
        if not run.meta.get("source_manifest") and run.meta.get("source"):
            workspaces.populate(workspace, Path(run.meta["source"]), exclude=ctx.data_dir)
        fetch_inputs(ctx.artifacts, plan, job, run, workspace, sink)
    else:
        source = Path(run.meta["source"]) if run.meta.get("source") else None
        workspaces.populate(workspace, source, exclude=ctx.data_dir)


def _close_log(ctx: WorkerContext, plan: Plan, job: Job, run: RunRecord, sink: LogSink) -> None:
    """End the log and keep the full file in the artifact store; called before the job's
    status is written, so a job seen finished has its last line readable (`close` sends
    synchronously, retrying a failing store for a while)."""
    summary = sink.close(retry_for=CLOSE_LOG_RETRY)
    if ctx.artifacts is not None:
        archive_log(ctx.artifacts, plan, job, run, summary.full_log)
