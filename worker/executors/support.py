"""What the executor backends share: the log line splitter and pump, the per-job
directories and the working-directory check. The contract itself is in ``contract.py``."""

from __future__ import annotations

import codecs
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

from worker.executors.contract import InfrastructureError, JobSpec, LogLine, Stream

# Long enough for any human-readable line, short enough that one runaway line (a minified
# bundle, a progress bar without newlines) cannot hold the whole log hostage in memory.
DEFAULT_MAX_LINE_CHARS = 16 * 1024


def resolve_working_directory(workspace: Path, working_directory: str) -> Path:
    """The host path of a step's working directory; ValueError when it leaves the workspace.

    The pipeline validator rejects escaping paths already; this is the executor not
    trusting its input, since the path decides what a step may write on the host.
    """
    relative = PurePosixPath(working_directory or ".")
    if relative.is_absolute() or ".." in relative.parts:
        raise ValueError(
            f"working_directory {working_directory!r} must be relative and stay inside the workspace"
        )
    root = workspace.resolve()
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        # A symlink inside the workspace pointing out of it.
        raise ValueError(f"working_directory {working_directory!r} leaves the workspace")
    return target


class LinePiece(str):
    """A piece of a line cut at ``max_chars`` whose line goes on in the next text of the
    same stream (another piece, or the line's last part as a plain ``str``).

    A ``str`` subclass, so it travels unchanged through ``LogLine.text`` and the job
    runner to ``LogSink.write``, which masks the pieces of one line as one: a secret
    straddling a cut must not reach the log half in one piece and half in the next.
    """

    __slots__ = ()


class LineSplitter:
    """Turns a stream of byte chunks into text lines.

    Lines end at ``\n`` only; ``\r`` is kept as text (progress bars use it mid-line).
    Invalid UTF-8 is replaced, a character split across chunks is kept whole, a line
    longer than ``max_chars`` is cut into chunks of that size (never dropped), and the
    partial last line comes out on ``flush``. Every chunk but the last of a cut line is
    a ``LinePiece``.
    """

    def __init__(self, max_chars: int = DEFAULT_MAX_LINE_CHARS) -> None:
        if max_chars < 1:
            raise ValueError("max_chars must be >= 1")
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._max = max_chars

    def feed(self, data: bytes) -> list[str]:
        """The complete lines ``data`` finishes."""
        self._buffer += self._decoder.decode(data)
        return self._take(final=False)

    def flush(self) -> list[str]:
        """Whatever is left, as a last line (empty list when nothing is)."""
        self._buffer += self._decoder.decode(b"", final=True)
        return self._take(final=True)

    def _take(self, final: bool) -> list[str]:
        lines: list[str] = []
        *complete, rest = self._buffer.split("\n")
        for line in complete:
            lines.extend(self._chunks(line))
        # Strictly longer: a line of exactly max_chars may still get its newline next.
        while len(rest) > self._max:
            lines.append(LinePiece(rest[: self._max]))
            rest = rest[self._max :]
        if final and rest:
            lines.append(rest)
            rest = ""
        self._buffer = rest
        return lines

    def _chunks(self, line: str) -> list[str]:
        if len(line) <= self._max:
            return [line]
        chunks: list[str] = [LinePiece(line[i : i + self._max]) for i in range(0, len(line), self._max)]
        chunks[-1] = str(chunks[-1])  # the line ends here
        return chunks


_DONE = object()


class LogPump:
    """Reads byte streams in background threads and hands out their lines as they come.

    One thread per stream keeps stdout and stderr apart and in order each, without one
    full pipe blocking the other. Register every source with ``add`` before reading
    ``lines``; a single consumer reads them.
    """

    def __init__(self, max_line_chars: int = DEFAULT_MAX_LINE_CHARS) -> None:
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._sources = 0
        self._max = max_line_chars

    def add(self, stream: Stream, chunks: Iterable[bytes]) -> None:
        """Start reading ``chunks`` (e.g. a pipe or an engine log stream) as ``stream``."""
        self._sources += 1
        thread = threading.Thread(
            target=self._pump, args=(stream, chunks), name=f"conveyor-log-{stream}", daemon=True
        )
        thread.start()

    def _pump(self, stream: Stream, chunks: Iterable[bytes]) -> None:
        splitter = LineSplitter(self._max)
        try:
            for chunk in chunks:
                for text in splitter.feed(chunk):
                    self._queue.put(LogLine(stream, text))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer thread below
            self._queue.put(exc)
        finally:
            for text in splitter.flush():
                self._queue.put(LogLine(stream, text))
            self._queue.put(_DONE)

    def lines(self) -> Iterator[LogLine]:
        """Every line of every source; ends when all sources have ended."""
        pending = self._sources
        error: Exception | None = None
        while pending:
            item = self._queue.get()
            if item is _DONE:
                pending -= 1
            elif isinstance(item, Exception):
                error = item
            else:
                yield item  # type: ignore[misc]
        if error is not None:
            raise InfrastructureError(f"log stream failed: {error}") from error


class JobDirectories:
    """The per-job host directories of one executor: ``scripts/`` and ``home/``.

    They live outside the workspace, so a script never ends up in an artifact, and are
    world-readable (0755) so a step running as a non-root ``user`` can read its script.
    """

    def __init__(self, root: Path | None = None) -> None:
        self._root = root
        self._dirs: dict[tuple[str, str], Path] = {}
        self._lock = threading.Lock()

    def ensure(self, job: JobSpec) -> Path:
        """The job's directory, created on first use."""
        key = (job.run_id, job.job)
        with self._lock:
            path = self._dirs.get(key)
            if path is None:
                if self._root is not None:
                    self._root.mkdir(parents=True, exist_ok=True)
                path = Path(tempfile.mkdtemp(prefix="conveyor-job-", dir=self._root))
                for sub in ("scripts", "home"):
                    (path / sub).mkdir()
                for directory in (path, path / "scripts", path / "home"):
                    os.chmod(directory, 0o755)
                self._dirs[key] = path
            return path

    def remove(self, job: JobSpec) -> None:
        """Delete the job's directory, if any."""
        with self._lock:
            path = self._dirs.pop((job.run_id, job.job), None)
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)

