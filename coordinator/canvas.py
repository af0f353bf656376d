"""Turn a plan's series-parallel structure into one Celery canvas.

Series become chains, parallels become groups; a group followed by more work becomes a
chord. Signatures are immutable (`si`): job tasks read their inputs from the state store,
never from upstream return values, and never raise for a job failure, so a failed job does
not break the canvas (no ChordError); each job decides from its dependencies' recorded
statuses whether it runs or is skipped.
"""
from __future__ import annotations

from typing import Any, Mapping

from celery import Celery, chain, group
from celery.canvas import Signature

from shared.celery_app import DEPLOY_QUEUE, JOBS_QUEUE, RUN_JOB_TASK
from shared.plan import Plan


def job_signature(app: Celery, plan: Plan, run_id: str, job: str) -> Signature:
    queue = DEPLOY_QUEUE if plan.jobs[job].deploy is not None else JOBS_QUEUE
    return app.signature(RUN_JOB_TASK, kwargs={"run_id": run_id, "job": job}, immutable=True, queue=queue)


def build_canvas(app: Celery, plan: Plan, run_id: str) -> Signature:
    def build(node: Mapping[str, Any]) -> Signature:
        if "job" in node:
            return job_signature(app, plan, run_id, node["job"])
        parts = [build(part) for part in node.get("series") or node.get("parallel") or ()]
        if len(parts) == 1:
            return parts[0]
        return chain(*parts) if "series" in node else group(*parts)

    return build(plan.structure)
