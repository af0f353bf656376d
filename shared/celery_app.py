"""The one Celery application, configured identically for every worker and submitter.

Settings that make long jobs safe on Redis (see Celery's "Redis caveats"): late acks with
prefetch 1 so a dead worker's job is redelivered rather than lost; a visibility timeout
longer than the longest allowed job so a live job is not handed to a second worker (the
lease in the state store makes that harmless when it happens anyway); results kept longer
than the longest pipeline so chord counters never expire mid-run.
"""
from __future__ import annotations

from celery import Celery
from kombu import Queue

from shared.config import RESULT_EXPIRES, Settings

JOBS_QUEUE = "jobs"
DEPLOY_QUEUE = "deploy"
RUN_JOB_TASK = "conveyor.run_job"
DEPLOY_TICK_TASK = "conveyor.deploy_tick"


def broker_url(settings: Settings) -> str:
    return settings.broker_url or "memory://"


def create_app(settings: Settings) -> Celery:
    app = Celery("conveyor", broker=broker_url(settings), backend=settings.effective_result_backend)
    transport_options: dict = {"visibility_timeout": settings.visibility_timeout}
    if settings.embedded:
        # In-process memory transport polls; keep hops short.
        transport_options["polling_interval"] = 0.01
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport_options,
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout},
        result_expires=RESULT_EXPIRES,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_connection_retry_on_startup=True,
        task_queues=(Queue(JOBS_QUEUE), Queue(DEPLOY_QUEUE)),
        task_default_queue=JOBS_QUEUE,
        task_routes={RUN_JOB_TASK: {"queue": JOBS_QUEUE}, DEPLOY_TICK_TASK: {"queue": DEPLOY_QUEUE}},
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # Flower shows task names and kwargs (run id, job name: never secrets) from worker
        # events, so workers send them from the start. No "sent" events and no STARTED
        # results: the state store tells when a job started, and each costs a Redis write
        # on every hop.
        worker_send_task_events=True,
        worker_hijack_root_logger=False,
        redis_socket_keepalive=True,
    )
    app.conf.conveyor_settings = settings
    return app
