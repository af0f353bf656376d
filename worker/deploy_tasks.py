"""Deployment jobs on the workers: the start hook, the tick task, and the watchdog.

`start_deployment` runs inside the job task right after the claim: it creates the
deployment record (once: a redelivered job finds it and only makes sure it ticks) and
returns at once; dependents wait for the job to be terminal in the state store. From
then on the deployment lives in ticks on the `deploy` queue (deploy/engine.py).

The watchdog exists because Celery would redeliver a tick whose worker died holding
it only after the visibility timeout (hours): every worker consuming `deploy` looks for
active deployments whose next tick is overdue and re-enqueues it. Duplicates are
harmless: a tick carries the record's sequence number, a stale one drops itself, and
ticks of one deployment are serialised by a short lock.
"""
from __future__ import annotations

import logging
import threading

from celery import Celery, signals

from deploy import engine
from deploy.config import DeployConfigError, load_config
from deploy.record import TERMINAL
from deploy.store import DeployStore, deploy_store_for
from shared.celery_app import DEPLOY_QUEUE, DEPLOY_TICK_TASK
from shared.config import Settings
from shared.state.base import FAILED, epoch_seconds
from worker.context import WorkerContext, process_context
from worker.job_runner import Admitted, task_result
from worker.metrics import deployment_transition

log = logging.getLogger("conveyor.deploy")

WATCHDOG_PERIOD_S = 2.0
OVERDUE_GRACE_MS = 5_000
OVERDUE_BUMP_MS = 10_000

# Guards the lazy creation of a context's deployment runtime (several job threads).
_runtime_lock = threading.Lock()


def enqueue_tick(app: Celery, run_id: str, job: str, seq: int, countdown: float = 0.0) -> None:
    """Send one tick to the `deploy` queue (run id, job, sequence number: no secrets)."""
    app.send_task(DEPLOY_TICK_TASK, args=[run_id, job, seq], countdown=max(countdown, 0.0) or None,
                  queue=DEPLOY_QUEUE)


def runtime(app: Celery, ctx: WorkerContext) -> engine.DeployRuntime:
    """The deployment engine's runtime of this worker context, created on first use: the
    context's state store, a deployment store beside it, ticks sent through ``app``."""
    with _runtime_lock:
        if ctx.deployments is None:
            ctx.deployments = engine.DeployRuntime(
                state=ctx.store,
                deploys=deploy_store_for(ctx.store),
                enqueue=lambda run_id, job, seq, countdown: enqueue_tick(app, run_id, job, seq, countdown),
                worker_name=ctx.worker_name,
                lease_ms=max(int(ctx.lease_seconds * 1000), engine.MIN_LEASE_MS),
                on_transition=deployment_transition,
            )
        return ctx.deployments


def start_deployment(app: Celery, ctx: WorkerContext, admitted: Admitted) -> dict:
    """Create (or find) the job's deployment and enqueue its first tick; returns immediately."""
    store, plan, job, claim, run = ctx.store, admitted.plan, admitted.job, admitted.claim, admitted.run
    assert job.deploy is not None, "start_deployment is for deployment jobs"
    try:
        config = load_config(job.deploy, plan.environments, operator=ctx.environments,
                             pipeline_allowed=ctx.pipeline_environments)
    except (DeployConfigError, KeyError, TypeError, ValueError) as exc:
        reason = "script_failure"  # the pipeline's deploy block is wrong: retrying will not help
        store.append_logs(run.run_id, job.name, [("system", f"deploy: cannot run this deployment: {exc}")])
        store.finish(run.run_id, job.name, claim.token, FAILED, reason=reason)
        return task_result(run.run_id, job.name, FAILED, reason)
    created = epoch_seconds(run.created_at)
    deadline_ms = int((created + plan.timeout) * 1000) if created is not None else None
    rec = engine.begin(runtime(app, ctx), run.run_id, job.name, claim.token, config, run.meta.get("source"),
                       deadline_ms)
    status = "running" if rec["state"] not in TERMINAL else rec["state"]
    return task_result(run.run_id, job.name, status)


class Watchdog(threading.Thread):
    """Re-enqueues the tick of every active deployment whose next tick is overdue."""

    def __init__(self, deploys: DeployStore, app: Celery) -> None:
        super().__init__(name="conveyor-deploy-watchdog", daemon=True)
        self.deploys = deploys
        self.app = app
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(WATCHDOG_PERIOD_S):
            try:
                self.sweep()
            except Exception as exc:  # the store may be briefly unreachable; try again next period
                log.warning("deploy watchdog: %s", exc)

    def sweep(self) -> int:
        """One pass; returns how many ticks it re-enqueued."""
        count = 0
        for run_id, job in self.deploys.overdue(engine.now_ms(), OVERDUE_GRACE_MS, OVERDUE_BUMP_MS):
            loaded = self.deploys.load(run_id, job)
            if loaded is None or loaded[0]["state"] in TERMINAL:
                continue
            log.warning("deployment %s/%s: tick %s is overdue; re-enqueueing it", run_id, job, loaded[0]["seq"])
            enqueue_tick(self.app, run_id, job, loaded[0]["seq"])
            count += 1
        return count


def register(app: Celery, settings: Settings) -> None:
    """Register the tick task; start a watchdog in each worker process that consumes `deploy`."""

    @app.task(name=DEPLOY_TICK_TASK, bind=True, max_retries=None, acks_late=True, ignore_result=True)
    def deploy_tick(self, run_id: str, job: str, seq: int) -> str:
        outcome = engine.tick(runtime(app, process_context(settings)), run_id, job, seq)
        log.debug("deploy tick %s/%s #%s: %s", run_id, job, seq, outcome)
        return outcome

    watchdogs: list[Watchdog] = []

    def start_watchdog(sender: object = None, **_: object) -> None:
        if getattr(sender, "app", None) is not app:
            return
        consuming = getattr(app.amqp.queues, "consume_from", None) or app.amqp.queues
        if DEPLOY_QUEUE not in consuming:
            return
        watchdog = Watchdog(deploy_store_for(process_context(settings).store), app)
        watchdog.start()
        watchdogs.append(watchdog)

    def stop_watchdog(**_: object) -> None:
        for watchdog in watchdogs:
            watchdog.stopped.set()

    signals.worker_init.connect(start_watchdog, weak=False)
    signals.worker_shutdown.connect(stop_watchdog, weak=False)
