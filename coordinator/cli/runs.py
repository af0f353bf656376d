"""`conveyor run`, `submit`, `status`, `logs`, `cancel` and `runs`."""
from __future__ import annotations

import contextlib
import json
import sys
from typing import NoReturn

import click

from coordinator.cli.options import (
    EXIT_UNKNOWN_RUN, api_client, api_failure, api_mode, cli_settings, open_cli_store, open_run_store, parse_vars,
    run_id_argument, var_option,
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
@click.argument("file", type=click.Path(dir_okay=False), required=False)
@var_option
@source_option
@click.option("--wait", is_flag=True, help="Follow the run like `conveyor run`.")
@click.option("--repository", metavar="NAME",
              help="Through the server (CONVEYOR_SERVER_URL): a repository configured there, instead of FILE.")
@click.option("--ref", metavar="REF", help="Through the server: the branch or tag to run (default: the "
                                           "repository's default branch).")
def submit(file: str | None, variables: tuple[str, ...], source: str | None, wait: bool, repository: str | None,
           ref: str | None) -> None:
    """Submit a run to the configured broker and print its id.

    With CONVEYOR_SERVER_URL set, the server starts a run of one of its configured
    repositories instead: `conveyor submit --repository NAME [--ref REF]`.
    """
    parameters = parse_vars(variables)
    if api_mode():
        if file is not None or source is not None:
            raise click.UsageError("with CONVEYOR_SERVER_URL, submit starts a run of a repository the server knows: "
                                   "use --repository NAME [--ref REF] (a local FILE or --source cannot be sent)")
        if not repository:
            raise click.UsageError("with CONVEYOR_SERVER_URL, submit needs --repository NAME [--ref REF]")
        _submit_via_api(repository, ref or "", parameters, wait)
        return
    if repository is not None or ref is not None:
        raise click.UsageError("--repository and --ref go through the server: set CONVEYOR_SERVER_URL and "
                               "CONVEYOR_TOKEN (or give a pipeline FILE)")
    if file is None:
        raise click.UsageError("Missing argument 'FILE'.")
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

    client = api_client()
    if client is not None:
        _status_via_api(client, run_id, fmt)
        return
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

    client = api_client()
    if client is None:
        _, store = open_run_store(run_id)
        if job is not None and job not in store.get_jobs(run_id):
            click.echo(f"error: run '{run_id}' has no job '{clean(job)}'", err=True)
            sys.exit(EXIT_UNKNOWN_RUN)
    try:
        if client is not None:
            _logs_via_api(client, run_id, job, follow_, fmt == "json")
        else:
            follow_logs(store, run_id, job, follow=follow_, as_json=fmt == "json")
    except KeyboardInterrupt:
        # Ctrl-C is how `logs -f` ends; what was printed is the answer, not an abort.
        sys.exit(EXIT_INTERRUPTED)


@click.command()
@run_id_argument
def cancel(run_id: str) -> None:
    """Stop running jobs (within 10 s) and cancel the rest."""
    client = api_client()
    if client is not None:
        running = _call(lambda: client.cancel(run_id), run_id).get("stopping") or []
    else:
        _, store = open_run_store(run_id)
        running = store.request_cancel(run_id)
    click.echo(f"run {run_id}: cancel requested" + (f"; stopping {clean(', '.join(running))}" if running else ""))


@click.command()
@click.option("--limit", type=click.IntRange(1, 10000), default=20, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def runs(limit: int, fmt: str) -> None:
    """Recent runs, newest first."""
    from coordinator import status_view

    client = api_client()
    if client is not None:
        _runs_via_api(client, limit, fmt)
        return
    store = open_cli_store(cli_settings())
    if fmt == "json":
        click.echo(json.dumps(status_view.runs_json(store, limit), indent=2))
    else:
        click.echo(status_view.runs_text(store, limit))


# -- through the server (CONVEYOR_SERVER_URL) -------------------------------------------------
# The same output as above, from the API's answers: the run JSON is `status --format json`,
# log lines come from the followed-log stream (which carries each line's stream and time).

STREAM_RETRIES = 5  # reconnections of a followed stream in a row without a new line
# What `status --format json` and `runs --format json` show; the server adds more (the
# trigger, its own notes), which the direct mode has never printed.
STATUS_KEYS = ("run_id", "pipeline", "status", "created_at", "finished_at", "cancel_requested", "jobs")
RUNS_KEYS = ("run_id", "pipeline", "status", "created_at", "finished_at")


def _call(action, run_id: str | None = None):
    """``action()``, turning an API failure into the CLI's error line and exit code."""
    from coordinator.api_client import ApiClientError

    try:
        return action()
    except ApiClientError as exc:
        api_failure(exc, run_id)


def _submit_via_api(repository: str, ref: str, parameters: dict[str, str], wait: bool) -> None:
    from coordinator.api_client import ApiClientError

    client = api_client()
    assert client is not None  # api_mode() was checked
    try:
        run_id = client.trigger(repository, ref, parameters)
    except ApiClientError as exc:
        if exc.status == 422:
            # What `submit FILE` prints for an invalid pipeline: each diagnostic, exit 2.
            lines = [_diagnostic_text(d) for d in exc.diagnostics] or exc.message.splitlines()
            for line in lines:
                click.echo(clean(line), err=True)
            sys.exit(2)
        api_failure(exc)
    click.echo(run_id)
    if wait:
        try:
            _logs_via_api(client, run_id, None, True, False)
        except KeyboardInterrupt:
            click.echo(f"\nstopped following; the run goes on. `conveyor cancel {run_id}` stops it.", err=True)
            sys.exit(EXIT_INTERRUPTED)
        status = _call(lambda: client.run(run_id), run_id).get("status", "")
        click.echo(clean(f"run {run_id}: {status}"), err=True)
        _finish(status)


def _diagnostic_text(item) -> str:
    """A diagnostic as `file:line:col: severity: message (hint)`, from the API's item or line."""
    if not isinstance(item, dict):
        return str(item)
    text = f"{item.get('file', '?')}:{item.get('line', '?')}:{item.get('col', '?')}: " \
           f"{item.get('severity', 'error')}: {item.get('message', '')}"
    return text + (f" ({item['hint']})" if item.get("hint") else "")


def _status_via_api(client, run_id: str, fmt: str) -> None:
    answer = _call(lambda: client.run(run_id), run_id)
    view = {key: answer[key] for key in STATUS_KEYS if key in answer}
    if fmt == "json":
        click.echo(json.dumps(view, indent=2))
        return
    from deploy.view import summary

    from coordinator.status_view import render_status

    click.echo(render_status(view))
    for name, job in view.get("jobs", {}).items():
        if job.get("deployment"):
            click.echo(clean(f"deployment {name}: {summary(job['deployment'])}"))


def _runs_via_api(client, limit: int, fmt: str) -> None:
    items = [{key: item[key] for key in RUNS_KEYS if key in item} for item in _call(lambda: client.runs(limit))]
    if fmt == "json":
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo("no runs")
        return
    import time

    from coordinator.status_view import duration_text, text_table
    from shared.state.base import epoch_seconds

    now = time.time()
    rows = []
    for item in items:
        end = epoch_seconds(item.get("finished_at"))
        seconds = (end if end is not None else now) - (epoch_seconds(item.get("created_at")) or now)
        rows.append([item["run_id"], item["pipeline"], item["status"], item["created_at"], duration_text(seconds)])
    click.echo(text_table(("RUN", "PIPELINE", "STATUS", "CREATED", "DURATION"), rows))


class _LogPrinter:
    """Prints log entries as `follow_logs` does: bare for one job, `JOB |` prefixed for
    several, or one JSON object per line; safe to call from several threads."""

    def __init__(self, run_id: str, job: str | None, names: list[str], as_json: bool) -> None:
        import threading

        from coordinator.follow import prefix_width
        from coordinator.terminal import colour_enabled

        self.run_id, self.job, self.as_json = run_id, job, as_json
        self.width = prefix_width(names)
        self.colour = colour_enabled(sys.stdout)
        self.lock = threading.Lock()

    def __call__(self, name: str, entry: dict) -> None:
        from coordinator.follow import log_lines, stream_marker
        from coordinator.terminal import clean_log_line

        stream, text, at = str(entry.get("stream", "stdout")), str(entry.get("text", "")), entry.get("at")
        if self.as_json:
            out = [json.dumps({"ts": at, "run_id": self.run_id, "job": name, "stream": stream, "message": line}) + "\n"
                   for line in log_lines(text)]
        elif self.job is not None:
            out = [clean_log_line(line, self.colour) + "\n" for line in log_lines(text)]
        else:
            shown, marker = clean(name), stream_marker(stream)
            out = [f"{shown:<{self.width}} {marker} {clean_log_line(line, self.colour)}\n" for line in log_lines(text)]
        with self.lock:
            sys.stdout.writelines(out)
            sys.stdout.flush()  # a `-f` piped into another program must not sit in a buffer


def _logs_via_api(client, run_id: str, job: str | None, follow_: bool, as_json: bool) -> None:
    import threading

    from shared.state.base import TERMINAL

    jobs = _call(lambda: client.run(run_id), run_id).get("jobs", {})  # in plan order
    if job is not None and job not in jobs:
        click.echo(f"error: run '{run_id}' has no job '{clean(job)}'", err=True)
        sys.exit(EXIT_UNKNOWN_RUN)
    names = [job] if job is not None else list(jobs)
    show = _LogPrinter(run_id, job, names, as_json)
    printed: dict[str, int] = {}
    for name in names:  # what is stored already: job after job, not interleaved
        ended = jobs[name].get("status") in TERMINAL
        printed[name] = _stored_lines(client, run_id, name, show, ended)
    open_jobs = [name for name in names if jobs[name].get("status") not in TERMINAL]
    if not follow_ or not open_jobs:
        return
    if len(open_jobs) == 1:
        _call(lambda: _follow_job(client, run_id, open_jobs[0], printed[open_jobs[0]], show), run_id)
        return
    # Several jobs at once: one stream each (the server polls; no job waits for another).
    failures: list[BaseException] = []

    def follow_one(name: str) -> None:
        try:
            _follow_job(client, run_id, name, printed[name], show)
        except BaseException as exc:  # reported from the main thread
            failures.append(exc)

    threads = [threading.Thread(target=follow_one, args=(name,), daemon=True) for name in open_jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(timeout=0.5)  # short joins: Ctrl-C reaches the main thread
    if failures:
        from coordinator.api_client import ApiClientError

        if isinstance(failures[0], ApiClientError):
            api_failure(failures[0], run_id)
        raise failures[0]


def _stored_lines(client, run_id: str, name: str, show, ended: bool) -> int:
    """Print the job's stored lines; how many entries were printed.

    The followed-log stream carries each entry's stream and time, but only ends when the
    job does. For a job still going, the text log says how much is stored now (each entry
    is its text and a newline), and the stream is read up to that much.
    """
    from coordinator.api_client import ApiClientError

    limit = None if ended else len(_call(lambda: client.job_log(run_id, name), run_id))
    if limit == 0:
        return 0
    count = consumed = 0
    try:
        with contextlib.closing(client.follow_log(run_id, name)) as events:
            for event in events:
                if event.event == "end":
                    break
                if event.event != "line" or not isinstance(event.data, dict):
                    continue
                show(name, event.data)
                count += 1
                consumed += len(str(event.data.get("text", ""))) + 1
                if limit is not None and consumed >= limit:
                    break
    except ApiClientError as exc:
        api_failure(exc, run_id)
    return count


def _follow_job(client, run_id: str, name: str, printed: int, show) -> None:
    """Print the job's new lines until it ends; a dropped or long-silent stream is reopened
    and the lines already printed are skipped (a job's log only grows)."""
    import time

    from coordinator.api_client import ApiClientError

    retries = 0
    while True:
        count = 0
        try:
            with contextlib.closing(client.follow_log(run_id, name)) as events:
                for event in events:
                    if event.event == "end":
                        return
                    if event.event != "line" or not isinstance(event.data, dict):
                        continue
                    count += 1
                    if count > printed:
                        show(name, event.data)
                        printed, retries = count, 0
        except ApiClientError as exc:
            if exc.code == "idle":
                continue  # a quiet job: open the stream again (it replays, the printed lines are skipped)
            if exc.code not in ("interrupted", "unreachable"):
                raise
        retries += 1  # the stream ended without its `end` event, or the server is restarting
        if retries > STREAM_RETRIES:
            raise ApiClientError(0, "interrupted", f"the log stream of {name} kept breaking; "
                                                   f"`conveyor logs {run_id} {name}` shows what is stored")
        time.sleep(min(2.0 ** retries / 4, 5.0))
