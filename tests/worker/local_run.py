"""Run a pipeline's jobs in this process through the real job runner: a SQLite state
store, the local executor and a filesystem artifact store under a temp dir. For tests of
what a job does to its workspace and artifacts, without Celery or services."""
from __future__ import annotations

import textwrap
from pathlib import Path

from shared.state import JobMeta, StateStore, open_state
from worker.artifacts import ArtifactAccess
from worker.executors.local import LocalExecutor
from worker.job_runner import Reschedule, WorkerContext, run_job


def start_local_run(tmp_path: Path, pipeline: str, run_id: str) -> tuple[StateStore, WorkerContext]:
    """The run of ``pipeline`` (YAML, dedented) recorded, and a worker context to run its jobs."""
    from coordinator.frontend import load_text

    result = load_text(textwrap.dedent(pipeline), "p.yml", parameters={}, run_id=run_id)
    assert result.ok, result.diagnostics
    state_url = "sqlite:///" + str(tmp_path / "state.db")
    store = open_state(state_url)
    store.create_run(run_id, result.plan.pipeline, {name: JobMeta() for name in result.plan.jobs},
                     result.plan.to_dict(), {})
    ctx = WorkerContext(
        store=store, executor=LocalExecutor(scripts_root=tmp_path / "jobs"), worker_name="w1",
        data_dir=tmp_path / "data", lease_seconds=3,
        artifacts=ArtifactAccess(artifacts_url=f"file://{tmp_path / 'artifacts'}", state_url=state_url),
    )
    return store, ctx


def run_until_done(ctx: WorkerContext, run_id: str, job: str) -> dict:
    """Run ``job`` to its end (a reschedule, e.g. waiting for a dependency's record, is retried)."""
    for _ in range(10):
        try:
            return run_job(ctx, run_id, job)
        except Reschedule:
            continue
    raise AssertionError(f"{job} still rescheduling")


def job_log(store: StateStore, run_id: str, job: str) -> str:
    entries, _ = store.read_logs(run_id, job, after=None, count=100_000)
    return "\n".join(entry.text for entry in entries)
