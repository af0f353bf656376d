"""The log sink of one job attempt: masked lines to a full log file and, capped, to the state store.

Executors hand the worker one line at a time from a stdout and a stderr reader thread.
`LogSink.write` masks each line, appends it to the full log file on disk at once, and
queues it for the state store, which a background thread feeds every `flush_interval`
(so `conveyor logs -f` sees a line within ~100 ms). The store copy is capped: the first
`cap_bytes/2` are sent as they come, then only a bounded tail is kept and sent at
`close`, after a marker saying how much was left out. The file is never cut.

A line longer than the executors' cut (16 KiB) arrives in pieces (`LinePiece`); the sink
masks the pieces of one line as one (`LineMasker`), so a secret straddling a cut is
masked too, in the store, the full log file and the archived copy of that file.
See docs/logs-and-secrets.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from shared.state.base import StateStore, iso_ms
from shared.units import MIB, format_size, human_size
from worker.executors.support import LinePiece
from worker.secrets import LineMasker, Masker

log = logging.getLogger(__name__)

SYSTEM = "system"


# A store that keeps failing is retried less and less often, up to this many seconds
# apart, so an outage is not hammered 20 times a second by every running job.
MAX_RETRY_INTERVAL = 2.0
# At close the job is over and its status is about to be written; a few quick retries
# ride out a blip without holding the job up for long when the store is really down.
# A caller that must not report the job finished before its log is stored asks for
# more with `close(retry_for=...)`.
CLOSE_ATTEMPTS = 3
CLOSE_RETRY_DELAY = 0.1


class CappedFile:
    """The full log file, cut at ``limit`` bytes with one marker line: a step printing
    without end must not fill the worker's disk through its log.

    LogSink writes through it when given ``file_cap_bytes``; the state store's copy has its
    own cap (``cap_bytes``). What is cut is counted in a last line at close.
    """

    def __init__(self, inner: IO[str], limit: int, already: int = 0) -> None:
        self._inner = inner
        self._limit = limit
        self._written = already
        self._cut_lines = 0
        self._cut_bytes = 0

    def write(self, text: str) -> int:
        size = len(text.encode("utf-8", "replace"))
        if self._cut_lines:
            self._cut_lines += 1
            self._cut_bytes += size
            return len(text)
        if self._written + size > self._limit:
            self._cut_lines, self._cut_bytes = 1, size
            self._inner.write(f"{_file_stamp()} system full log truncated: it reached this worker's limit of "
                              f"{format_size(self._limit)} (CONVEYOR_JOB_LOG_SIZE); later lines are not "
                              "in this file\n")
            return len(text)
        self._written += size
        return self._inner.write(text)

    def close(self) -> None:
        if self._cut_lines:
            self._inner.write(f"{_file_stamp()} system [... {self._cut_lines} lines ({self._cut_bytes} bytes) "
                              "not written to this file ...]\n")
        self._inner.close()

    def __getattr__(self, name: str):
        return getattr(self._inner, name)



def _file_stamp() -> str:
    return iso_ms(int(time.time() * 1000)) or ""


class LogSinkClosed(ValueError):
    """A line was written to a sink that is already closed."""


@dataclass(frozen=True)
class LogSummary:
    """What happened to a job's log.

    `lines`/`bytes` count everything written (bytes are UTF-8 text plus one newline per
    line); `stored_bytes` what reached the state store, cap markers included;
    `omitted_*` what the cap left out of the store (it is all in `full_log`).
    `unsent_lines` were meant for the store but never got there (it kept failing);
    `store_errors` counts failed store calls, `file_errors` failed writes to `full_log`.
    """

    lines: int
    bytes: int
    stored_bytes: int
    omitted_lines: int
    omitted_bytes: int
    full_log: Path
    unsent_lines: int = 0
    store_errors: int = 0
    file_errors: int = 0

    @property
    def complete(self) -> bool:
        """True when the store holds every line except those the cap left out on purpose."""
        return self.unsent_lines == 0


class _Stamps:
    """ISO-8601 UTC timestamps with milliseconds, as `iso_ms` writes them, but cheap.

    Formatting a datetime per line was the sink's biggest cost; the date-and-seconds
    part changes once a second, so it is formatted once a second. Used under the lock.
    """

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        ms = int(time.time() * 1000)
        second, millis = divmod(ms, 1000)
        if second != self._second:
            self._second = second
            self._prefix = (iso_ms(second * 1000) or "")[:-5]  # drop ".000Z"
        return f"{self._prefix}.{millis:03d}Z"


def _size(text: str) -> int:
    return len(text.encode("utf-8")) + 1


def _clean(text: str) -> str:
    """`text` made encodable as UTF-8: a lone surrogate would make every store write fail."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


@dataclass
class _OpenLine:
    """A line of one stream that arrived in part: its masker and whether any of it was recorded."""

    masker: LineMasker
    shown: bool = False


class LogSink:
    """Where the output of one job attempt goes; safe to call from several threads.

    `store.append_logs(run_id, job, ...)` receives `(stream, text)` entries in the order
    they were written; `full_log` gets every line as `<iso-ts> <stream> <text>`.
    Use it as a context manager, or call `close()` once the readers are done.
    """

    def __init__(
        self,
        store: StateStore,
        run_id: str,
        job: str,
        full_log: Path,
        masker: Masker,
        cap_bytes: int = 4 * MIB,
        flush_interval: float = 0.05,
        batch_lines: int = 500,
        file_cap_bytes: int | None = None,
    ) -> None:
        if cap_bytes < 2:
            raise ValueError(f"cap_bytes must be at least 2, got {cap_bytes!r}")
        if flush_interval <= 0 or batch_lines < 1:
            raise ValueError("flush_interval must be positive and batch_lines at least 1")
        self._store = store
        self._run_id = run_id
        self._job = job
        self._full_log = Path(full_log)
        self._masker = masker
        self._cap = cap_bytes
        self._head_cap = cap_bytes // 2
        self._tail_cap = cap_bytes - self._head_cap
        self._interval = flush_interval
        self._batch = batch_lines

        self._cond = threading.Condition()
        self._pending: list[tuple[str, str]] = []  # for the store, in write order
        self._tail: deque[tuple[str, str, int]] = deque()  # (stream, text, size) once the head is full
        self._tail_bytes = 0
        self._head_bytes = 0
        self._head_full = False
        self._lines = self._bytes = self._stored_bytes = 0
        self._omitted_lines = self._omitted_bytes = 0
        self._unsent_lines = self._store_errors = self._file_errors = 0
        self._failing = False
        self._closing = False
        self._summary: LogSummary | None = None
        self._stamps = _Stamps()
        self._close_lock = threading.Lock()  # two closers must not both flush the tail
        # Lines that arrived in part (a LinePiece) and wait for the rest, per stream.
        # Taken before `_cond`, never after it.
        self._open_lines: dict[str, _OpenLine] = {}
        self._open_lock = threading.Lock()

        self._full_log.parent.mkdir(parents=True, exist_ok=True)
        # Appending: a caller that reuses a path for a retried attempt keeps both.
        # Line-buffered, so the file is current while the job runs and a dying worker
        # loses nothing already written.
        self._file: IO[str] | CappedFile = open(
            self._full_log, "a", encoding="utf-8", errors="replace", buffering=1
        )
        if file_cap_bytes is not None:
            # The worker's log-size limit (CONVEYOR_JOB_LOG_SIZE); a retried attempt
            # appending to one file counts what is there already.
            self._file = CappedFile(self._file, file_cap_bytes, self._full_log.stat().st_size)
        self._flusher = threading.Thread(
            target=self._run_flusher, name=f"log-flusher-{run_id}-{job}", daemon=True
        )
        self._flusher.start()

    def __enter__(self) -> LogSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def full_log(self) -> Path:
        """The file holding every line of this log."""
        return self._full_log

    def write(self, stream: str, text: str, continues: bool | None = None) -> None:
        """Record one line of `stream` output (no trailing newline), masked.

        Text with embedded newlines is recorded as several lines of the same stream,
        so the full log file stays one line per entry. `continues` says the line goes on
        in the next write to the same stream (default: whether `text` is a `LinePiece`,
        as the executors cut long lines); the pieces are masked as one line, so up to
        the longest secret's length minus one is held back until the next piece.
        """
        if continues is None:
            continues = isinstance(text, LinePiece)
        text = _clean(text)
        with self._open_lock:
            if continues or stream in self._open_lines:
                self._write_piece(stream, text, continues)
                return
        masked = self._masker.mask(text)
        if masked.endswith("\n"):
            masked = masked[:-1]
        self._record_all(stream, masked.split("\n"))

    def _write_piece(self, stream: str, text: str, continues: bool) -> None:
        """Part of a line that arrives in pieces; runs under `_open_lock`."""
        line = self._open_lines.get(stream)
        if line is None:
            line = self._open_lines[stream] = _OpenLine(self._masker.stream())
        if continues and "\n" in text:
            # Lines that end inside this piece are complete; what follows the last
            # newline starts the next open line.
            done, _, text = text.rpartition("\n")
            self._end_line(stream, line, done)
            line = self._open_lines[stream] = _OpenLine(self._masker.stream())
        if not continues:
            self._end_line(stream, line, text)
            return
        masked = line.masker.feed(text)
        if masked:
            line.shown = True
            self._record_all(stream, [masked])

    def _end_line(self, stream: str, line: _OpenLine, text: str) -> None:
        """The last part of an open line (under `_open_lock`)."""
        del self._open_lines[stream]
        masked = line.masker.feed(text, final=True)
        if masked.endswith("\n"):
            masked = masked[:-1]
        if masked or not line.shown:  # an empty end of a line already shown adds nothing
            self._record_all(stream, masked.split("\n"))

    def _record_all(self, stream: str, lines: list[str], closing: bool = False) -> None:
        with self._cond:
            if self._closing and not closing:
                raise LogSinkClosed(f"write to a closed log sink ({self._run_id}/{self._job})")
            stamp = self._stamps.now()
            for line in lines:
                self._record(stream, line, stamp)
            if len(self._pending) >= self._batch:
                self._cond.notify()

    def system(self, text: str) -> None:
        """Record one of Conveyor's own messages (stream `system`), masked like output."""
        self.write(SYSTEM, text)

    def close(self, retry_for: float = 0.0) -> LogSummary:
        """Send everything still buffered (tail and cap marker included) and stop the flusher.

        When it returns, every line is in the store (`summary.complete`) or never will be:
        the send is synchronous. A failing store is tried `CLOSE_ATTEMPTS` times, and
        again until `retry_for` seconds have passed. Never raises for store trouble: what
        could not be stored is counted in the summary and logged; it is all in the full
        log file. Calling it again returns the same summary.
        """
        with self._close_lock:
            if self._summary is None:
                self._summary = self._close(retry_for)
            return self._summary

    def _close(self, retry_for: float) -> LogSummary:
        with self._open_lock:
            with self._cond:
                self._closing = True
                self._cond.notify()
            # A line whose last piece never came (its reader died): what is held back
            # is the end of a line, masked as such.
            for stream, line in list(self._open_lines.items()):
                del self._open_lines[stream]
                masked = line.masker.feed("", final=True)
                if masked or not line.shown:
                    self._record_all(stream, masked.split("\n"), closing=True)
        self._flusher.join()
        # The flusher is gone: nothing else touches the buffers from here on.
        if self._head_full:
            self._pending.append(
                (SYSTEM, f"[... {self._omitted_lines} lines ({self._omitted_bytes} bytes) omitted ...]")
            )
            self._pending.extend((stream, text) for stream, text, _ in self._tail)
            self._tail.clear()
        give_up_at = time.monotonic() + retry_for
        attempt = 1
        while not self._flush():
            remaining = give_up_at - time.monotonic()
            if attempt >= CLOSE_ATTEMPTS and remaining <= 0:
                break
            delay = min(CLOSE_RETRY_DELAY * attempt, MAX_RETRY_INTERVAL)
            time.sleep(delay if attempt < CLOSE_ATTEMPTS else min(delay, remaining))
            attempt += 1
        if self._pending:
            self._unsent_lines += len(self._pending)
            log.error(
                "logs of %s/%s: %d lines could not be stored; the full log is at %s",
                self._run_id, self._job, len(self._pending), self._full_log,
            )
            self._pending.clear()
        try:
            self._file.close()
        except OSError:
            self._file_errors += 1
        return LogSummary(
            lines=self._lines,
            bytes=self._bytes,
            stored_bytes=self._stored_bytes,
            omitted_lines=self._omitted_lines,
            omitted_bytes=self._omitted_bytes,
            full_log=self._full_log,
            unsent_lines=self._unsent_lines,
            store_errors=self._store_errors,
            file_errors=self._file_errors,
        )

    # -- internals; `_record` runs under the lock ------------------------------------

    def _record(self, stream: str, text: str, stamp: str) -> None:
        size = _size(text)
        self._lines += 1
        self._bytes += size
        try:
            self._file.write(f"{stamp} {stream} {text}\n")
        except OSError as exc:
            # Disk full or gone: keep the job running and the store copy flowing.
            if self._file_errors == 0:
                log.error("cannot write full log %s: %s", self._full_log, exc)
            self._file_errors += 1
        if not self._head_full:
            if self._head_bytes + size <= self._head_cap:
                self._head_bytes += size
                self._pending.append((stream, text))
                return
            self._head_full = True
            self._pending.append(
                (
                    SYSTEM,
                    f"log exceeds {human_size(self._cap)}: the middle is left out here; "
                    f"the full log is kept at {self._full_log}",
                )
            )
        self._tail.append((stream, text, size))
        self._tail_bytes += size
        while self._tail_bytes > self._tail_cap:
            _, _, dropped = self._tail.popleft()
            self._tail_bytes -= dropped
            self._omitted_lines += 1
            self._omitted_bytes += dropped

    def _run_flusher(self) -> None:
        wait = self._interval
        while True:
            with self._cond:
                if self._failing:
                    # Backing off: only close cuts the wait short.
                    self._cond.wait_for(lambda: self._closing, timeout=wait)
                else:
                    self._cond.wait_for(
                        lambda: self._closing or len(self._pending) >= self._batch, timeout=wait
                    )
                closing = self._closing
            if closing:
                return  # close() does the last flush, with retries
            wait = self._interval if self._flush() else min(wait * 2, MAX_RETRY_INTERVAL)

    def _flush(self) -> bool:
        """Send the pending entries in batches; True when none are left.

        Only the flusher thread (or close, after joining it) calls this, so batches go
        out one at a time, in order. Entries are taken from the front of the queue only
        once stored, so a failed batch is retried first next time.
        """
        while True:
            with self._cond:
                batch = self._pending[: self._batch]
            if not batch:
                return True
            try:
                self._store.append_logs(self._run_id, self._job, batch)
            except Exception as exc:  # noqa: BLE001 - any store failure must not kill the job
                with self._cond:
                    self._store_errors += 1
                    if not self._failing:
                        log.warning(
                            "cannot store logs of %s/%s (will retry): %s: %s",
                            self._run_id, self._job, type(exc).__name__, exc,
                        )
                    self._failing = True
                return False
            with self._cond:
                del self._pending[: len(batch)]
                self._stored_bytes += sum(_size(text) for _, text in batch)
                if self._failing:
                    log.info("storing logs of %s/%s again", self._run_id, self._job)
                self._failing = False
