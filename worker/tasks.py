"""Celery task definitions. Arguments are the run id and job name only: Flower shows
task kwargs, and secrets never travel through the broker.

`conveyor.run_job` dispatches: a job of steps to the job runner, a deployment job to the
deployment starter (`worker.deploy_tasks`); how its outcome shows in Flower is
`worker.task_events`.
"""
from __future__ import annotations

import logging

from celery import Celery

from shared.celery_app import RUN_JOB_TASK, settings_of
from shared.logformat import job_log_context
from worker import deploy_tasks, job_runner
from worker.context import WorkerContext, process_context, worker_name
from worker.task_events import JobRequest, remember_outcome

log = logging.getLogger("conveyor.worker")


def dispatch(app: Celery, ctx: WorkerContext, run_id: str, job: str) -> dict:
    """Admit the job, then run its steps or start its deployment; the task's result."""
    with job_log_context(run_id, job):
        admitted = job_runner.admit(ctx, run_id, job)
        if not isinstance(admitted, job_runner.Admitted):
            return admitted
        if admitted.job.deploy is not None:
            # A deployment is a state machine advanced by ticks on the deploy queue; this
            # task only starts it (dependents wait for the job to be terminal in the store).
            return deploy_tasks.start_deployment(app, ctx, admitted)
        return job_runner.run_admitted(ctx, admitted)


def register(app: Celery) -> None:
    settings = settings_of(app)
    if not settings.embedded:
        from celery.signals import worker_ready

        @worker_ready.connect(weak=False)
        def start_collector(**_: object) -> None:
            from worker.artifact_gc import start_periodic_gc

            start_periodic_gc(settings, worker_name(settings))

    @app.task(name=RUN_JOB_TASK, bind=True, max_retries=None, acks_late=True, Request=JobRequest)
    def run_job(self, run_id: str, job: str) -> dict:
        try:
            outcome = dispatch(self.app, process_context(settings), run_id, job)
        except job_runner.Reschedule as again:
            raise self.retry(countdown=again.countdown, max_retries=None)
        remember_outcome(self.request.id, outcome)
        return outcome

    deploy_tasks.register(app, settings)
