"""What a worker process holds for all its jobs, and the one instance each process has.

The context is built on first use, in the process that runs the tasks (after a fork,
never before one): the state store's connections, the executor and the artifact store
must not be shared across processes. Its job limits (`policy`) are the context's own, so
two contexts in one process can run jobs under different limits.
"""
from __future__ import annotations

import os
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.config import JobPolicy, Settings, job_policy
from shared.plan import Plan
from shared.state import open_state
from shared.state.base import StateStore
from worker.artifacts import ArtifactAccess
from worker.executors import select_executor
from worker.executors.contract import Executor

if TYPE_CHECKING:
    from deploy.engine import DeployRuntime

# A run's plan never changes; this many stay parsed per process.
PLAN_CACHE_SIZE = 32


def default_policy() -> JobPolicy:
    """The job limits of a context given none: the defaults for one job at a time."""
    return job_policy(Settings(), concurrency=1)


@dataclass
class WorkerContext:
    """The state store, executor, artifact store, identity and job limits every job of a
    worker uses."""

    store: StateStore
    executor: Executor
    worker_name: str
    data_dir: Path
    lease_seconds: float = 30.0
    plans: dict[str, Plan] = field(default_factory=dict)
    artifacts: ArtifactAccess | None = None  # None: no artifact store (sources copied from a path)
    # Deploy targets of this worker's operator (conveyor.toml [environments.NAME]), and
    # whether a pipeline may bring its own (Settings.accepts_pipeline_environments).
    environments: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    pipeline_environments: bool = True
    # The deployment engine's runtime over this context's stores (worker.deploy_tasks
    # creates it on the first deployment job or tick).
    deployments: DeployRuntime | None = None
    # The limits of every job run with this context: the operator's settings over this
    # host's share for the worker's concurrency (`shared.config.job_policy`, set by
    # `worker.main.start_worker` and by `conveyor run`).
    policy: JobPolicy = field(default_factory=default_policy)

    def plan(self, run_id: str) -> Plan:
        """The run's plan, parsed once per process (a run's plan never changes)."""
        if run_id not in self.plans:
            if len(self.plans) >= PLAN_CACHE_SIZE:
                self.plans.clear()
            self.plans[run_id] = Plan.from_dict(self.store.get_plan(run_id))
        return self.plans[run_id]


def worker_name(settings: Settings) -> str:
    """This worker's name: `--name` (passed on as CONVEYOR_WORKER_NAME), else conveyor@HOST.

    It labels the containers and marks the processes of the worker's steps, so a
    restarted worker of the same name finds what its previous life left.
    """
    return os.environ.get("CONVEYOR_WORKER_NAME") or f"conveyor@{socket.gethostname()}"


def open_context(settings: Settings, policy: JobPolicy | None = None) -> WorkerContext:
    """A new context from the settings (opens the store, picks and connects the executor);
    its jobs run under ``policy`` (None: the defaults for one job at a time)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return WorkerContext(
        artifacts=ArtifactAccess(
            artifacts_url=settings.effective_artifacts_url,
            state_url=settings.effective_state_url,
            s3_endpoint_url=settings.s3_endpoint_url,
            expire_in_s=settings.artifacts_expire_in,
        ),
        store=open_state(settings.effective_state_url),
        executor=select_executor(settings.executor, settings.data_dir),
        worker_name=worker_name(settings),
        data_dir=settings.data_dir,
        lease_seconds=settings.lease_seconds,
        environments=settings.environments,
        pipeline_environments=settings.accepts_pipeline_environments,
        policy=policy if policy is not None else default_policy(),
    )


_process_context: WorkerContext | None = None
_process_context_lock = threading.Lock()


def process_context(settings: Settings, policy: JobPolicy | None = None) -> WorkerContext:
    """This process's context, created on first use (after fork, not before).

    ``policy``: the job limits of the process's jobs, given by whoever starts the worker
    (`worker.main.start_worker`, `conveyor run`) before the first job; None keeps the
    context's (the defaults for one job at a time if it is new)."""
    global _process_context
    with _process_context_lock:
        if _process_context is None:
            _process_context = open_context(settings, policy)
        elif policy is not None:
            _process_context.policy = policy
        return _process_context
