"""Turn a plan's series-parallel structure into one Celery canvas.

Series become chains, parallels become groups; a group followed by more work becomes a
chord. Signatures are immutable (`si`): job tasks read their inputs from the state store,
never from upstream return values, and never raise for a job failure, so a failed job does
not break the canvas (no ChordError); each job decides from its dependencies' recorded
statuses whether it runs or is skipped.

The submitter never waits for results (it follows the run in the state store), so
`send_canvas` lets go of the results Celery watches for it: see `release_results`.
"""
from __future__ import annotations

from typing import Any, Mapping

from celery import Celery, chain, group
from celery.canvas import Signature
from celery.result import AsyncResult, ResultBase, ResultSet

from shared import worker_labels
from shared.celery_app import RUN_JOB_TASK, settings_of
from shared.plan import Plan


def job_queue(app: Celery, plan: Plan, job: str) -> str:
    """The queue of a job's task: `deploy` for a deployment, `jobs.labels.<labels>` for a job
    with `runs_on` (shared/worker_labels.py), else `jobs`. The embedded worker of `conveyor
    run` consumes `jobs` and `deploy` only and is every label at once: `runs_on` is ignored."""
    spec = plan.jobs[job]
    try:
        embedded = settings_of(app).embedded
    except KeyError:  # an app create_app did not make (tests): route as a cluster would
        embedded = False
    runs_on = () if embedded else spec.runs_on
    return worker_labels.job_queue(runs_on, spec.deploy is not None)


def job_signature(app: Celery, plan: Plan, run_id: str, job: str) -> Signature:
    return app.signature(RUN_JOB_TASK, kwargs={"run_id": run_id, "job": job}, immutable=True,
                         queue=job_queue(app, plan, job))


def build_canvas(app: Celery, plan: Plan, run_id: str) -> Signature:
    def build(node: Mapping[str, Any]) -> Signature:
        if "job" in node:
            return job_signature(app, plan, run_id, node["job"])
        parts = [build(part) for part in node.get("series") or node.get("parallel") or ()]
        if len(parts) == 1:
            return parts[0]
        return chain(*parts) if "series" in node else group(*parts)

    return build(plan.structure)


def send_canvas(app: Celery, plan: Plan, run_id: str) -> None:
    """Send the run's canvas to the broker, keeping nothing of it in this process."""
    release_results(app, build_canvas(app, plan, run_id).apply_async())


def release_results(app: Celery, result: ResultBase | None) -> None:
    """Stop this process watching every result of a sent canvas.

    Sending a group (or chord) makes Celery wait for its members' results in the
    sender: each is registered with the result backend, which keeps it alive and, on
    Redis, subscribes to its pub/sub channel. Left there until the interpreter exits,
    their `__del__` unsubscribes while Python is shutting down, which fails with
    "Exception ignored in: AsyncResult.__del__ ... ImportError: sys.meta_path is None".
    Unsubscribing here, while the process is alive, leaves nothing to do at exit.

    Celery may register several result objects for one task (a chord freezes its header
    more than once), and only the returned graph's are reachable here: so every task id
    is also unsubscribed as such, which turns the others' late `__del__` into a no-op.
    """
    backend = app.backend
    consumer = getattr(backend, "result_consumer", None)  # async backends (Redis) only
    for node in _async_results(result):
        backend.remove_pending_result(node)
        if consumer is not None:
            consumer.cancel_for(node.id)


def _async_results(result: ResultBase | None) -> list[AsyncResult]:
    """Every task result in a sent canvas' result graph (group members, parents)."""
    found: list[AsyncResult] = []
    seen: set[int] = set()
    stack: list[Any] = [result]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, ResultSet):  # a group's results (GroupResult)
            stack.extend(node.results)
        elif isinstance(node, AsyncResult):
            found.append(node)
        stack.append(getattr(node, "parent", None))
    return found
