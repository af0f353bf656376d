"""Watching a run as it happens: its log lines, its job transitions, and a summary at the end.

`follow` is what `conveyor run` and `submit --wait` show; `follow_logs` is `conveyor logs`.
Both only read the state store (per-job log cursors and the run's event stream), so they
work the same in embedded and distributed mode, any number of them can watch one run, and
one started late replays what it missed before catching up.

Log lines read `JOB | text`; `!` instead of `|` marks stderr, and `[label] |` any other
stream label a worker uses. Job names are padded so the text column lines up.

Everything shown passes through coordinator/terminal.py: job names, reasons, worker names
and log lines are written by pipelines and jobs, and must not drive the operator's
terminal. A job's colours are kept only on a terminal with colour enabled.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, TextIO

from coordinator.status_view import (
    NONE,
    SUMMARY_HEADERS,
    dependencies,
    duration_text,
    job_levels,
    job_seconds,
    ordered_jobs,
    plan_of,
    status_label,
    summary_row,
    text_table,
    waiting_reasons,
)
from coordinator.terminal import clean, clean_log_line, colour_enabled
from shared.state import Event, JobRecord, LogEntry, StateStore, UnknownJob, UnknownRun
from shared.state.base import RETRYING, RUNNING, TERMINAL, epoch_seconds

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

LOG_BATCH = 1000
MAX_PREFIX = 24  # long matrix names would push every line's text too far right
LIVE_REFRESH_PER_SECOND = 4  # enough for a seconds countdown, cheap for a big DAG

STATUS_STYLES = {
    "pending": "dim",
    "running": "bold cyan",
    "retrying": "bold magenta",
    "success": "bold green",
    "failed": "bold red",
    "skipped": "dim",
    "cancelled": "yellow",
}
STATUS_ICONS = {
    "pending": "·",
    "running": "▶",
    "retrying": "↻",
    "success": "✓",
    "failed": "✗",
    "skipped": "-",
    "cancelled": "⊘",
}
JOB_COLOURS = ("cyan", "magenta", "blue", "green", "yellow", "bright_cyan", "bright_magenta", "bright_blue")


# -- log lines ------------------------------------------------------------------------------


def log_lines(text: str) -> list[str]:
    """A stored log entry as display lines.

    Workers store one line per entry, but a chunk may still carry newlines. A carriage
    return (progress bars) keeps only what a terminal would finally show.
    """
    if text.endswith("\n"):
        text = text[:-1]
    lines = []
    for line in text.split("\n"):
        if "\r" in line:
            shown = [part for part in line.split("\r") if part]
            line = shown[-1] if shown else ""
        lines.append(line)
    return lines


def strip_control(line: str) -> str:
    """A log line without colour codes or other control characters, for output that is not a terminal."""
    return clean_log_line(line, colour=False)


def stream_marker(stream: str) -> str:
    """`|` for stdout, `!` for stderr, `[label] |` for any other stream."""
    if stream == "stdout":
        return "|"
    if stream == "stderr":
        return "!"
    return f"[{clean(stream)}] |"


def prefix_width(names: Iterable[str]) -> int:
    """How wide the job-name column of log lines is (names as shown, cleaned)."""
    return min(max((len(clean(n)) for n in names), default=0), MAX_PREFIX)


class LogCursors:
    """Where each job's log was last read up to, so that every line is shown exactly once."""

    def __init__(self, store: StateStore, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self._after: dict[str, str] = {}

    def batches(self, job: str, block_ms: int = 0) -> Iterator[list[LogEntry]]:
        """The job's new entries in batches until none are left; waits up to `block_ms` once."""
        while True:
            entries, cursor = self.store.read_logs(
                self.run_id, job, after=self._after.get(job), count=LOG_BATCH, block_ms=block_ms
            )
            self._after[job] = cursor
            if entries:
                yield entries
            if len(entries) < LOG_BATCH:
                return
            block_ms = 0


# -- conveyor logs --------------------------------------------------------------------------


def follow_logs(
    store: StateStore,
    run_id: str,
    job: str | None = None,
    follow: bool = False,
    out: TextIO | None = None,
    *,
    poll_ms: int = 200,
    as_json: bool = False,
    colour: bool | None = None,
) -> None:
    """`conveyor logs RUN [JOB] [-f]`: print the stored log lines, then with `follow` new ones.

    With a job, its output is printed as the job wrote it (no prefix), so it can be piped
    on; without one, every job's lines in plan order, each prefixed `JOB |` (`JOB !` for
    stderr). `follow` keeps printing until the job (or, without a job, the run) is
    terminal; a `retrying` job is still followed. `out` defaults to sys.stdout at call
    time. `as_json` prints one JSON object per line instead, for log shippers:
    `{"ts", "run_id", "job", "stream", "message"}`, exactly as stored. Text output is made
    safe for a terminal (coordinator/terminal.py); `colour` keeps the jobs' SGR colours
    (default: `out` is a terminal and NO_COLOR is unset). Raises UnknownRun, or UnknownJob
    for a job the run does not have.
    """
    out = out if out is not None else sys.stdout
    colour = colour_enabled(out) if colour is None else colour
    jobs = ordered_jobs(store, run_id)
    if job is not None and job not in jobs:
        raise UnknownJob(f"{run_id}: {job}")
    names = [job] if job is not None else list(jobs)
    width = prefix_width(names)
    cursors = LogCursors(store, run_id)

    def drain(name: str, block_ms: int = 0) -> bool:
        printed = False
        shown = clean(name)
        for entries in cursors.batches(name, block_ms):
            for entry in entries:
                if as_json:
                    out.writelines(json.dumps({"ts": entry.timestamp, "run_id": run_id, "job": name,
                                               "stream": entry.stream, "message": line}) + "\n"
                                   for line in log_lines(entry.text))
                elif job is not None:
                    out.writelines(clean_log_line(line, colour) + "\n" for line in log_lines(entry.text))
                else:
                    marker = stream_marker(entry.stream)
                    out.writelines(f"{shown:<{width}} {marker} {clean_log_line(line, colour)}\n"
                                   for line in log_lines(entry.text))
            out.flush()  # a `-f` piped into another program must not sit in a buffer
            printed = True
        return printed

    for name in names:  # what is stored already: job after job, not interleaved
        drain(name)
    if not follow:
        return
    while True:
        # Read the status before draining: whatever the job wrote before it became
        # terminal is then already stored, so this drain is the last one needed.
        finished = _ended(store, run_id, job)
        if job is not None:
            drain(job, block_ms=0 if finished else poll_ms)
        else:
            printed = [drain(name) for name in names]
            if not any(printed) and not finished:
                time.sleep(poll_ms / 1000)
        if finished:
            return


def _ended(store: StateStore, run_id: str, job: str | None) -> bool:
    if job is not None:
        record = store.get_jobs(run_id).get(job)
        return record is None or record.status in TERMINAL
    run = store.get_run(run_id)
    if run is None:
        raise UnknownRun(run_id)
    return run.status != RUNNING


# -- follow: the live view ------------------------------------------------------------------


def _styled(status: str, text: str | None = None) -> "Text":
    from rich.text import Text

    return Text(clean(text if text is not None else status), style=STATUS_STYLES.get(status, ""))


class DagView:
    """The rich renderable pinned under the logs: the DAG level by level, one row per job.

    It is rendered afresh on every Live refresh, so durations and retry countdowns tick
    between state changes; `update` swaps in new records in one assignment, which keeps
    the refresh thread from ever seeing half an update.
    """

    def __init__(self, run_id: str, pipeline: str, created_at: str, plan: Mapping[str, Any],
                 deployment: Callable[[str], str | None] | None = None,
                 waiting: Callable[[Mapping[str, JobRecord]], Mapping[str, str]] | None = None) -> None:
        self.run_id = run_id
        self.pipeline = pipeline
        self.created = epoch_seconds(created_at) or time.time()
        self.plan = plan
        self.deployment = deployment  # job -> one line of weights, gate and analysis
        # jobs -> why the jobs no live worker can take wait (status_view.waiting_reasons)
        self.waiting = waiting
        self._waiting: Mapping[str, str] = {}
        self._state: tuple[str, dict[str, JobRecord]] = (RUNNING, {})

    def update(self, status: str, jobs: dict[str, JobRecord]) -> None:
        self._state = (status, jobs)

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        status, jobs = self._state
        now = time.time()
        self._waiting = self.waiting(jobs) if self.waiting is not None else {}
        done = sum(job.status in TERMINAL for job in jobs.values())
        title = Text.assemble(
            (clean(f"run {self.run_id}"), "bold"),
            f" · {clean(self.pipeline)} · ",
            _styled(status),
            f" · {duration_text(now - self.created)} · {done}/{len(jobs)} jobs done",
        )
        table = Table.grid(padding=(0, 1))
        for column in ("level", "icon", "job", "status", "duration", "attempt", "detail"):
            table.add_column(column, no_wrap=column != "detail", style="dim" if column == "level" else None)
        for index, level in enumerate(job_levels(self.plan, jobs)):
            for position, name in enumerate(level):
                job = jobs[name]
                # Text, not str: a str cell is read as rich markup, and `[link=...]` in a
                # matrix value would become a hyperlink.
                table.add_row(
                    f"L{index}" if position == 0 else "",
                    _styled(job.status, STATUS_ICONS.get(job.status, "?")),
                    Text(clean(name)),
                    _styled(job.status, clean(status_label(job, now))),
                    duration_text(job_seconds(job, now)) if job.started_at else "",
                    f"#{job.attempt}" if job.attempt else "",
                    Text(clean(self._detail(name, job, now)), style="dim"),
                )
        return Group(title, table)

    def _detail(self, name: str, job: JobRecord, now: float) -> str:
        if name in self._waiting:
            return self._waiting[name]  # `waiting for a worker with labels gpu`
        if job.status == "pending":
            after = dependencies(self.plan, name)
            return "after " + ", ".join(after) if after else ""
        parts = [job.reason] if job.reason else []
        if job.status != RUNNING and job.exit_code is not None:
            parts.append(f"exit {job.exit_code}")
        if job.status == RUNNING and self.deployment is not None and self.plan["jobs"].get(name, {}).get("deploy"):
            line = self.deployment(name)
            if line:
                return line
        if job.status == RUNNING and job.worker:
            parts.append(f"on {job.worker}")
        return ", ".join(parts)


def _deployment_lines(store: StateStore, run_id: str, every_s: float = 1.0) -> Callable[[str], str | None]:
    """A deployment job's one-line summary, read from the store at most once a second per job
    (the live view refreshes several times a second)."""
    cache: dict[str, tuple[float, str | None]] = {}

    def line(job: str) -> str | None:
        now = time.monotonic()
        if job not in cache or now - cache[job][0] > every_s:
            from deploy.view import deployment_view, summary

            try:
                view = deployment_view(store, run_id, job)
                cache[job] = (now, summary(view) if view else None)
            except Exception:  # the view must keep rendering whatever the store does
                cache[job] = (now, cache.get(job, (0.0, None))[1])
        return cache[job][1]

    return line


def _waiting_lines(store: StateStore, run_id: str, plan: Mapping[str, Any], created_at: str,
                   every_s: float = 1.0) -> Callable[[Mapping[str, JobRecord]], Mapping[str, str]]:
    """Why the jobs no live worker can take wait, read at most once a second."""
    cache: list[Any] = [0.0, {}]

    def reasons(jobs: Mapping[str, JobRecord]) -> Mapping[str, str]:
        now = time.monotonic()
        if now - cache[0] > every_s:
            cache[:] = [now, waiting_reasons(store, plan, jobs, created_at)]
        return {name: text for name, text in cache[1].items() if name in jobs and jobs[name].status != RUNNING
                and jobs[name].status not in TERMINAL}

    return reasons


# -- follow: the loop -----------------------------------------------------------------------


class _Follower:
    """The state of one `follow`: cursors, the latest job records, and what to print."""

    def __init__(
        self, store: StateStore, run_id: str, console: "Console", *, live: bool, logs: bool, job: str | None
    ) -> None:
        run = store.get_run(run_id)
        if run is None:
            raise UnknownRun(run_id)
        self.store, self.run_id, self.console = store, run_id, console
        self.live, self.logs, self.only = live, logs, job
        self.plan = plan_of(store, run_id)
        self.jobs = ordered_jobs(store, run_id)
        if job is not None and job not in self.jobs:
            raise UnknownJob(f"{run_id}: {job}")
        self.status = run.status
        self.final: str | None = None
        self.cursors = LogCursors(store, run_id)
        self.after_event: str | None = None
        # Jobs that have output to tail: claimed at least once and not yet drained after ending.
        self.claimed = {name for name, record in self.jobs.items() if record.attempt > 0}
        self.drained: set[str] = set()
        self.width = prefix_width([job] if job is not None else self.jobs)
        self.colours = {name: JOB_COLOURS[i % len(JOB_COLOURS)] for i, name in enumerate(self.jobs)}
        # The jobs' own colours, on a terminal that shows colour (rich reads NO_COLOR).
        self.job_colour = console.is_terminal and not console.no_color
        deploys = any((spec or {}).get("deploy") for spec in self.plan.get("jobs", {}).values())
        self.view = DagView(run_id, run.pipeline, run.created_at, self.plan,
                            _deployment_lines(store, run_id) if deploys else None,
                            _waiting_lines(store, run_id, self.plan, run.created_at) if live else None)
        self.view.update(self.status, self.jobs)

    # -- the loop

    def run(self, poll_ms: int, stop: threading.Event | None) -> str:
        busy = True
        while True:
            if stop is not None and stop.is_set():
                return self._current_status()
            # Waiting on the event stream wakes up at once for a transition; logs are
            # looked at every `poll_ms` at the latest.
            events = self._read_events(0 if busy else poll_ms)
            self._apply(events)
            printed = self._print_logs(self._tailed())
            if self.final is None and not events and not printed:
                self._check_run()
            if self.final is not None:
                self._print_logs(self._tailed(everything=True))
                self.status = self.final
                self.view.update(self.status, self.jobs)
                return self.final
            busy = bool(events or printed)

    def _current_status(self) -> str:
        run = self.store.get_run(self.run_id)
        if run is None:
            raise UnknownRun(self.run_id)
        return run.status

    def _check_run(self) -> None:
        """A safety net for events this follower never got (a trimmed stream): ask the run."""
        status = self._current_status()
        if status != RUNNING:
            self._apply(self._read_events(0))
            self.final = self.final or status

    def _read_events(self, block_ms: int) -> list[Event]:
        events, self.after_event = self.store.events(self.run_id, after=self.after_event, block_ms=block_ms)
        return events

    def _apply(self, events: list[Event]) -> None:
        job_events = [ev for ev in events if ev.job is not None]
        if job_events:
            self.jobs = ordered_jobs(self.store, self.run_id)
        for ev in events:
            if ev.job is None:
                self.final = self.status = ev.to_status
                continue
            if ev.to_status == RUNNING:
                self.claimed.add(ev.job)
            elif ev.job in self.claimed:
                # The job's output so far belongs before the line saying how it ended.
                self._print_logs([ev.job])
                if ev.to_status in TERMINAL:
                    self.drained.add(ev.job)
            if not self.live:
                self._print(self._transition(ev))
        if job_events:
            self.view.update(self.status, self.jobs)

    def _tailed(self, everything: bool = False) -> list[str]:
        names = [self.only] if self.only is not None else list(self.jobs)
        return [n for n in names if n in self.claimed and (everything or n not in self.drained)]

    # -- output

    def _print(self, text: "Text") -> None:
        # soft_wrap: a long log line stays one line when piped, and a terminal wraps it itself.
        self.console.print(text, soft_wrap=True, highlight=False)

    def _print_logs(self, names: list[str]) -> bool:
        if not self.logs:
            return False
        printed = False
        for name in names:
            if self.only is not None and name != self.only:
                continue
            for entries in self.cursors.batches(name):
                if self.console.is_terminal:
                    self._print(self._styled_batch(name, entries))
                else:
                    # Nothing to style when piped, and rich costs ~50 µs a line: a chatty
                    # job would fall behind. print() writes at once, so the order holds.
                    shown = clean(name)
                    self.console.file.write("".join(
                        f"{shown:<{self.width}} {stream_marker(entry.stream)} {strip_control(line)}\n"
                        for entry in entries
                        for line in log_lines(entry.text)
                    ))
                    self.console.file.flush()
                printed = True
        return printed

    def _styled_batch(self, name: str, entries: list[LogEntry]) -> "Text":
        """One Text per batch, since printing line by line is slow for a chatty job."""
        from rich.text import Text

        text = Text()
        shown = clean(name)
        for entry in entries:
            marker = stream_marker(entry.stream)
            for line in log_lines(entry.text):
                if text:
                    text.append("\n")
                text.append(f"{shown:<{self.width}} ", style=self.colours.get(name, ""))
                text.append(marker, style="bold red" if entry.stream == "stderr" else "dim")
                text.append(" ")
                safe = clean_log_line(line, self.job_colour)
                if "\x1b" in safe:
                    # Only SGR is left: the job's own colours, which rich re-emits as styles.
                    text.append_text(Text.from_ansi(safe))
                else:
                    text.append(safe)
        return text

    def _transition(self, ev: Event) -> "Text":
        from rich.text import Text

        assert ev.job is not None
        record = self.jobs.get(ev.job)
        attempt = None
        if record is not None and ev.attempt:
            attempt = next((a for a in record.attempts if a.number == ev.attempt), None)
        details = []
        if ev.to_status == RUNNING:
            details.append(f"attempt {ev.attempt}")
            if attempt is not None:
                details.append(f"on {attempt.worker}")
            if ev.reason == "worker_lost":
                details.append("previous worker lost")
        else:
            if ev.reason:
                details.append(ev.reason)
            if attempt is not None and attempt.exit_code is not None and ev.from_status == RUNNING:
                details.append(f"exit {attempt.exit_code}")
            if ev.to_status == RETRYING and attempt is not None and attempt.retry_delay is not None:
                details.append(f"retry in {duration_text(attempt.retry_delay)}")
        clock = datetime.fromtimestamp(epoch_seconds(ev.at) or time.time()).strftime("%H:%M:%S")
        text = Text(f"[{clock}] ", style="dim")
        text.append(f"{clean(ev.job)}: ")
        text.append_text(_styled(ev.to_status))
        if details:
            text.append(clean(f" ({', '.join(details)})"))
        return text

    def print_summary(self) -> None:
        from rich.text import Text

        self.jobs = ordered_jobs(self.store, self.run_id)
        now = time.time()
        rows = [summary_row(name, job, now) for name, job in self.jobs.items()]
        if self.console.is_terminal:
            from rich.table import Table

            table = Table(*(h.lower() for h in SUMMARY_HEADERS), box=None, header_style="bold")
            for row, job in zip(rows, self.jobs.values()):
                # Text cells: a str would be read as rich markup (summary_row cleaned them).
                table.add_row(Text(row[0]), _styled(job.status, row[1]), *(Text(cell) for cell in row[2:]))
            self.console.print(table)
        else:
            self._print(Text(text_table(SUMMARY_HEADERS, rows)))
        run = self.store.get_run(self.run_id)
        took = NONE
        if run is not None:
            end = epoch_seconds(run.finished_at) or now
            took = duration_text(end - (epoch_seconds(run.created_at) or end))
        line = Text(clean(f"run {self.run_id}: "))
        line.append_text(_styled(self.status))
        line.append(f" in {took}" if run is not None and run.finished_at else f" after {took}")
        self._print(line)


def follow(
    store: StateStore,
    run_id: str,
    *,
    console: "Console | None" = None,
    live: bool | None = None,
    logs: bool = True,
    job: str | None = None,
    poll_ms: int = 200,
    stop: threading.Event | None = None,
) -> str:
    """Follow a run until it ends (or `stop` is set); returns the run's status at that point.

    Prints every log line of every job (or only of `job`) as it arrives, `JOB | text`
    (`JOB ! text` for stderr). With `live` (the default on a terminal) a view of the DAG
    is pinned below the logs: each job's state, duration, attempt and retry countdown;
    without it, one timestamped line per job transition. Ends with a summary table (job,
    status, reason, attempts, duration, worker) and the run's outcome. A follower started
    late replays the transitions and logs it missed. Raises UnknownRun / UnknownJob.
    """
    from rich.console import Console

    console = console if console is not None else Console()
    live = console.is_terminal if live is None else live
    follower = _Follower(store, run_id, console, live=live, logs=logs, job=job)
    if live:
        from rich.live import Live

        # transient: the summary replaces the view instead of repeating it underneath.
        with Live(
            follower.view,
            console=console,
            refresh_per_second=LIVE_REFRESH_PER_SECOND,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        ):
            status = follower.run(poll_ms, stop)
    else:
        status = follower.run(poll_ms, stop)
    follower.status = status
    follower.print_summary()
    return status
