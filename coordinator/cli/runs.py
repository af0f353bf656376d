"""`conveyor run`, `submit`, `status`, `logs`, `cancel` and `runs`."""
from __future__ import annotations

import json
import sys
from typing import NoReturn

import click

from coordinator.cli.options import (
    EXIT_UNKNOWN_RUN, cli_settings, open_cli_store, open_run_store, parse_vars, run_id_argument, var_option,
)
from coordinator.terminal import clean


def _compile(file: str, parameters: dict[str, str]):
    """Compile once, for a new run id; print every diagnostic; exit 2 when invalid."""
    from coordinator.submit import compile_run

    run_id, result = compile_run(file, parameters)
    for diagnostic in result.diagnostics:
        click.echo(clean(str(diagnostic)), err=True)  # they quote the pipeline's text
    if not result.ok:
        sys.exit(2)
    return run_id, result.plan


def _submit(submit_fn, *args):
    """Submit, turning a failure to store the source into a one-line error (exit 1)."""
    from coordinator.submit import SubmitError

    try:
        return submit_fn(*args)
    except SubmitError as exc:
        raise click.ClickException(str(exc)) from None


EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command stopped by Ctrl-C


def _finish(status: str) -> NoReturn:
    sys.exit(0 if status == "success" else 1)


def _follow_submitted(store, run_id: str, no_live: bool = False) -> NoReturn:
    """Follow a run the workers carry and exit with its outcome; Ctrl-C only stops following."""
    from coordinator.follow import follow

    try:
        status = follow(store, run_id, live=False if no_live else None)
    except KeyboardInterrupt:
        click.echo(f"\nstopped following; the run goes on. `conveyor cancel {run_id}` stops it.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    _finish(status)


source_option = click.option("--source", type=click.Path(file_okay=False, exists=True),
                             help="Directory whose copy is each job's workspace (default: the pipeline file's folder).")


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@var_option
@source_option
@click.option("--executor", type=click.Choice(["docker", "local"]), help="Where steps run (default: docker if an engine answers).")
@click.option("--concurrency", type=click.IntRange(1, 256), default=4, show_default=True, help="Jobs at once (embedded mode).")
@click.option("--no-live", is_flag=True, help="Plain line output even on a terminal.")
def run(file: str, variables: tuple[str, ...], source: str | None, executor: str | None, concurrency: int, no_live: bool) -> None:
    """Run a pipeline to the end, streaming its logs (embedded unless CONVEYOR_BROKER_URL is set)."""
    parameters = parse_vars(variables)
    run_id, plan = _compile(file, parameters)
    settings = cli_settings(executor)
    from coordinator.follow import follow
    from coordinator.submit import submit
    from shared.celery_app import create_app

    app = create_app(settings)
    store = open_cli_store(settings)
    if not settings.embedded:
        submission = _submit(submit, app, store, run_id, plan, file, parameters, source, settings)
        click.echo(f"run {submission.run_id} submitted", err=True)
        _follow_submitted(store, submission.run_id, no_live)
    from coordinator.embedded import embedded_worker
    from worker import tasks

    tasks.register(app)
    status: str | None = None
    with embedded_worker(app, concurrency):
        submission = _submit(submit, app, store, run_id, plan, file, parameters, source, settings)
        click.echo(f"run {submission.run_id} (embedded, state in {settings.data_dir})", err=True)
        try:
            status = follow(store, submission.run_id, live=False if no_live else None)
        except KeyboardInterrupt:
            # The jobs run in this process: cancel them rather than leave them behind.
            click.echo("\ncancelling…", err=True)
            store.request_cancel(submission.run_id)
            try:
                status = follow(store, submission.run_id, live=False, logs=False)
            except KeyboardInterrupt:
                click.echo("stopped waiting; stopping the embedded worker (running jobs are being cancelled)", err=True)
    if status is None:
        sys.exit(EXIT_INTERRUPTED)
    _finish(status)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@var_option
@source_option
@click.option("--wait", is_flag=True, help="Follow the run like `conveyor run`.")
def submit(file: str, variables: tuple[str, ...], source: str | None, wait: bool) -> None:
    """Submit a run to the configured broker and print its id."""
    parameters = parse_vars(variables)
    settings = cli_settings()
    if settings.embedded:
        raise click.UsageError("submit needs CONVEYOR_BROKER_URL (a Redis broker); `conveyor run` works without one")
    from coordinator.submit import submit as submit_run
    from shared.celery_app import create_app

    run_id, plan = _compile(file, parameters)
    store = open_cli_store(settings)
    submission = _submit(submit_run, create_app(settings), store, run_id, plan, file, parameters, source, settings)
    click.echo(submission.run_id)
    if wait:
        _follow_submitted(store, submission.run_id)


@click.command()
@run_id_argument
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def status(run_id: str, fmt: str) -> None:
    """Run and job states."""
    from coordinator import status_view

    settings, store = open_run_store(run_id)
    if fmt == "json":
        from coordinator.artifact_view import members_by_job
        from shared.artifacts import open_store
        from shared.artifacts.index import open_index

        artifact_store = open_store(settings.effective_artifacts_url, endpoint_url=settings.s3_endpoint_url)
        index = open_index(settings.effective_state_url)
        from deploy.view import deployment_extras

        view = status_view.status_json(store, run_id, artifacts=members_by_job(artifact_store, index),
                                       extras=deployment_extras(store))
        click.echo(json.dumps(view, indent=2))
    else:
        from deploy.view import deployment_extras, summary

        click.echo(status_view.status_text(store, run_id))
        extras = deployment_extras(store)
        for job in store.get_jobs(run_id):
            view = extras(run_id, job).get("deployment")
            if view:
                click.echo(clean(f"deployment {job}: {summary(view)}"))


@click.command()
@run_id_argument
@click.argument("job", required=False)
@click.option("-f", "--follow", "follow_", is_flag=True, help="Keep printing new lines until the job or run ends.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one object per line with ts, run_id, job, stream and message.")
def logs(run_id: str, job: str | None, follow_: bool, fmt: str) -> None:
    """Job logs (all jobs in plan order, or one).

    On a terminal the jobs' colours are kept (unless NO_COLOR is set); every other
    control sequence a job printed is left out. --format json gives the lines as stored.
    """
    from coordinator.follow import follow_logs

    _, store = open_run_store(run_id)
    if job is not None and job not in store.get_jobs(run_id):
        click.echo(f"error: run '{run_id}' has no job '{clean(job)}'", err=True)
        sys.exit(EXIT_UNKNOWN_RUN)
    try:
        follow_logs(store, run_id, job, follow=follow_, as_json=fmt == "json")
    except KeyboardInterrupt:
        # Ctrl-C is how `logs -f` ends; what was printed is the answer, not an abort.
        sys.exit(EXIT_INTERRUPTED)


@click.command()
@run_id_argument
def cancel(run_id: str) -> None:
    """Stop running jobs (within 10 s) and cancel the rest."""
    _, store = open_run_store(run_id)
    running = store.request_cancel(run_id)
    click.echo(f"run {run_id}: cancel requested" + (f"; stopping {clean(', '.join(running))}" if running else ""))


@click.command()
@click.option("--limit", type=click.IntRange(1, 10000), default=20, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def runs(limit: int, fmt: str) -> None:
    """Recent runs, newest first."""
    from coordinator import status_view

    store = open_cli_store(cli_settings())
    if fmt == "json":
        click.echo(json.dumps(status_view.runs_json(store, limit), indent=2))
    else:
        click.echo(status_view.runs_text(store, limit))
