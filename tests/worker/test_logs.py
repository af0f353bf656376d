"""LogSink against a real SQLite state store: ordering, live flushing, the cap, masking, failures."""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path

import pytest

from shared.state import JobMeta, open_state
from worker.logs import LogSink, LogSummary, human_size
from worker.secrets import Masker

RUN, JOB = "run-1", "build"
LINE_RE = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (stdout|stderr|system) (.*)")


@pytest.fixture
def store(tmp_path):
    state = open_state("sqlite:///" + str(tmp_path / "state.db"))
    state.create_run(RUN, "pipe", {JOB: JobMeta(), "other": JobMeta()}, {}, {})
    yield state
    state.close()


def stored(store, job: str = JOB) -> list[tuple[str, str]]:
    """Every entry the store holds for the job, in order."""
    entries, cursor = [], None
    while True:
        batch, cursor = store.read_logs(RUN, job, after=cursor, count=1000)
        if not batch:
            return entries
        entries += [(e.stream, e.text) for e in batch]


def file_lines(path: Path) -> list[tuple[str, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    parsed = [LINE_RE.fullmatch(line) for line in lines]
    assert all(parsed), f"malformed full-log lines: {[l for l, p in zip(lines, parsed) if not p][:3]}"
    return [(m.group(2), m.group(3)) for m in parsed]


def sink(store, tmp_path, secrets=(), **kwargs) -> LogSink:
    return LogSink(store, RUN, JOB, tmp_path / "logs" / "build.log", Masker(secrets), **kwargs)


def test_lines_keep_their_order_and_streams_stay_apart(store, tmp_path):
    written = [("stdout" if i % 3 else "stderr", f"line {i}") for i in range(50)]
    with sink(store, tmp_path) as s:
        for stream, text in written:
            s.write(stream, text)
        s.system("step 1 finished")
    expected = written + [("system", "step 1 finished")]
    assert stored(store) == expected
    assert [t for st, t in stored(store) if st == "stderr"] == [t for st, t in written if st == "stderr"]
    assert stored(store, "other") == []
    assert file_lines(tmp_path / "logs" / "build.log") == expected


def test_concurrent_writers_lose_nothing(store, tmp_path):
    count = 3000
    s = sink(store, tmp_path, batch_lines=64)

    def pump(stream: str) -> None:
        for i in range(count):
            s.write(stream, f"{stream} {i}")

    threads = [threading.Thread(target=pump, args=(name,)) for name in ("stdout", "stderr")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    summary = s.close()
    entries = stored(store)
    for stream in ("stdout", "stderr"):
        assert [t for st, t in entries if st == stream] == [f"{stream} {i}" for i in range(count)]
    assert summary.lines == 2 * count
    assert sorted(file_lines(s.full_log)) == sorted(entries)


def test_a_line_is_readable_before_close(store, tmp_path):
    s = sink(store, tmp_path)
    try:
        s.write("stdout", "hello, follower")
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline and not stored(store):
            time.sleep(0.01)
        assert stored(store) == [("stdout", "hello, follower")]
    finally:
        s.close()


def test_a_full_batch_is_sent_without_waiting_for_the_interval(store, tmp_path):
    s = sink(store, tmp_path, flush_interval=30, batch_lines=10)
    try:
        for i in range(10):
            s.write("stdout", str(i))
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and len(stored(store)) < 10:
            time.sleep(0.01)
        assert len(stored(store)) == 10
    finally:
        s.close()


def test_cap_keeps_head_marker_and_tail(store, tmp_path):
    # Each line is 9 characters + newline = 10 bytes; the head and the tail get 500 each.
    lines = [f"line {i:04d}" for i in range(300)]
    s = sink(store, tmp_path, cap_bytes=1000)
    for text in lines:
        s.write("stdout", text)
    summary = s.close()

    entries = stored(store)
    notice = f"log exceeds 1000 bytes: the middle is left out here; the full log is kept at {s.full_log}"
    assert entries == (
        [("stdout", t) for t in lines[:50]]
        + [("system", notice)]
        + [("system", "[... 200 lines (2000 bytes) omitted ...]")]
        + [("stdout", t) for t in lines[-50:]]
    )
    assert (summary.lines, summary.bytes) == (300, 3000)
    assert (summary.omitted_lines, summary.omitted_bytes) == (200, 2000)
    assert summary.stored_bytes == sum(len(t.encode()) + 1 for _, t in entries)
    assert summary.complete
    # The file is never cut.
    assert file_lines(s.full_log) == [("stdout", t) for t in lines]


def test_head_notice_is_sent_live_when_the_head_fills(store, tmp_path):
    s = sink(store, tmp_path, cap_bytes=100)
    try:
        for i in range(20):
            s.write("stderr", f"err {i:05d}")  # 10 bytes each
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline and len(stored(store)) < 6:
            time.sleep(0.01)
        entries = stored(store)
        assert entries[:5] == [("stderr", f"err {i:05d}") for i in range(5)]
        assert entries[5][0] == "system" and entries[5][1].startswith("log exceeds 100 bytes")
        assert len(entries) == 6  # the tail waits for close
    finally:
        s.close()


def test_a_log_under_the_cap_gets_no_marker(store, tmp_path):
    with sink(store, tmp_path, cap_bytes=1000) as s:
        for i in range(50):
            s.write("stdout", f"line {i:04d}")  # exactly 500 bytes: the head, full
    assert len(stored(store)) == 50
    assert all(stream == "stdout" for stream, _ in stored(store))


def test_secrets_never_reach_the_store_or_the_file(store, tmp_path):
    secret = "hunter2-very-secret"
    s = sink(store, tmp_path, secrets=[secret], cap_bytes=400)
    s.write("stdout", f"token={secret}")
    s.write("stderr", f"curl -H 'Authorization: {secret}'")
    s.system(f"running with {secret}")
    for i in range(100):  # push some into the tail and some into the omitted middle
        s.write("stdout", f"{i} {secret}")
    s.close()
    texts = [t for _, t in stored(store)]
    assert texts[0] == "token=****"
    assert all(secret not in t for t in texts)
    content = s.full_log.read_text()
    assert secret not in content
    assert content.count("****") == 103


def test_full_log_format_and_summary(store, tmp_path):
    s = sink(store, tmp_path)
    s.write("stdout", "héllo")  # 6 bytes in UTF-8, + newline
    s.write("stderr", "two\nlines")
    s.system("done")
    summary = s.close()
    assert file_lines(s.full_log) == [
        ("stdout", "héllo"), ("stderr", "two"), ("stderr", "lines"), ("system", "done"),
    ]
    assert summary == LogSummary(
        lines=4, bytes=7 + 4 + 6 + 5, stored_bytes=22, omitted_lines=0, omitted_bytes=0,
        full_log=s.full_log,
    )
    assert s.close() is summary  # idempotent


def test_write_after_close_is_an_error(store, tmp_path):
    s = sink(store, tmp_path)
    s.close()
    with pytest.raises(ValueError, match="closed"):
        s.write("stdout", "late")


class FlakyStore:
    """Wraps a real store; its append_logs fails `failures` times before working."""

    def __init__(self, store, failures: int) -> None:
        self.store, self.failures, self.calls = store, failures, 0

    def append_logs(self, run_id, job, entries):
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("store unreachable")
        self.store.append_logs(run_id, job, entries)


def test_store_errors_are_retried_in_order(store, tmp_path, caplog):
    flaky = FlakyStore(store, failures=3)
    s = LogSink(flaky, RUN, JOB, tmp_path / "b.log", Masker([]), flush_interval=0.01, batch_lines=5)
    with caplog.at_level(logging.WARNING, logger="worker.logs"):
        for i in range(40):
            s.write("stdout", str(i))
            time.sleep(0.001)
        summary = s.close()
    assert stored(store) == [("stdout", str(i)) for i in range(40)]
    assert summary.store_errors == 3 and summary.unsent_lines == 0 and summary.complete
    assert sum("will retry" in r.message for r in caplog.records) == 1


def test_a_dead_store_does_not_crash_the_job(store, tmp_path, caplog):
    dead = FlakyStore(store, failures=10**9)
    s = LogSink(dead, RUN, JOB, tmp_path / "b.log", Masker([]), flush_interval=0.01)
    for i in range(20):
        s.write("stdout", str(i))
    summary = s.close()
    assert summary.unsent_lines == 20 and not summary.complete
    assert summary.stored_bytes == 0 and summary.store_errors >= 1
    assert len(file_lines(s.full_log)) == 20
    assert any("could not be stored" in r.message and str(s.full_log) in r.message for r in caplog.records)


def test_an_unknown_job_is_reported_not_raised(store, tmp_path):
    s = LogSink(store, RUN, "no-such-job", tmp_path / "x.log", Masker([]))
    s.write("stdout", "x")
    assert s.close().unsent_lines == 1


@pytest.mark.parametrize(
    "n, text", [(4 * 1024 * 1024, "4 MiB"), (1536 * 1024, "1.5 MiB"), (512 * 1024, "512 KiB"), (1000, "1000 bytes")]
)
def test_human_size(n, text):
    assert human_size(n) == text


# -- lines cut into pieces (LinePiece) ----------------------------------------------------


def joined_stdout(entries: list[tuple[str, str]]) -> str:
    return "".join(text for stream, text in entries if stream == "stdout")


def test_a_secret_straddling_the_line_cut_is_masked_at_every_position(store, tmp_path):
    """Every offset of the secret against the splitter's cut: store and file never hold it."""
    from worker.executors.support import LineSplitter

    secret = "gh0_T0kenValue-42"  # 17 characters, cut every 8
    width = 8
    for offset in range(2 * width + 1):
        line = "x" * offset + secret + "y" * (offset % 5)
        log = tmp_path / "logs" / f"{offset}.log"
        s = LogSink(store, RUN, JOB, log, Masker([secret]))
        splitter = LineSplitter(width)
        for text in splitter.feed(line.encode() + b"\nnext line\n") + splitter.flush():
            s.write("stdout", text)
        s.close()
        lines = [text for stream, text in file_lines(log)]
        assert "".join(lines[:-1]) == "x" * offset + "****" + "y" * (offset % 5), offset
        assert lines[-1] == "next line"
        for piece in lines:
            for size in range(4, len(secret) + 1):  # no 4-character fragment of it either
                assert all(secret[i:i + size] not in piece for i in range(len(secret) - size + 1)), (offset, piece)
    assert secret not in joined_stdout(stored(store))
    assert "****" in joined_stdout(stored(store))


def test_pieces_are_masked_as_one_line_in_the_store_and_the_file(store, tmp_path):
    from worker.executors.support import LinePiece

    secret = "abcdefghij"
    with sink(store, tmp_path, secrets=[secret]) as s:
        s.write("stdout", LinePiece("start abcde"))
        s.write("stderr", "an unrelated stderr line")  # another stream in between
        s.write("stdout", LinePiece("fghij middle ab"))
        s.write("stdout", "cdefghij end")
    stdout = [t for st, t in stored(store) if st == "stdout"]
    assert "".join(stdout) == "start **** middle **** end"
    fragments = {secret[i:i + 3] for i in range(len(secret) - 2)}
    assert not [t for t in stdout if any(f in t for f in fragments)], stdout
    assert "".join(t for st, t in file_lines(s.full_log) if st == "stdout") == "start **** middle **** end"
    assert ("stderr", "an unrelated stderr line") in stored(store)


def test_an_explicit_continues_flag_works_like_a_piece(store, tmp_path):
    with sink(store, tmp_path, secrets=["0123456789"]) as s:
        s.write("stdout", "id=01234", continues=True)
        s.write("stdout", "56789;", continues=False)
    assert joined_stdout(stored(store)) == "id=****;"


def test_a_line_left_open_at_close_is_written_masked(store, tmp_path):
    """A reader that died mid-line: what was held back is written at close, not lost."""
    from worker.executors.support import LinePiece

    s = sink(store, tmp_path, secrets=["topsecret"])
    s.write("stdout", LinePiece("key topsecret and more"))
    s.close()
    assert joined_stdout(stored(store)) == "key **** and more"
    assert "".join(t for st, t in file_lines(s.full_log) if st == "stdout") == "key **** and more"


def test_a_secret_is_not_cut_by_the_cap(store, tmp_path):
    """The head/tail cap keeps or drops whole entries, and entries are masked before it."""
    from worker.executors.support import LineSplitter

    secret = "Zq9-L0ng-S3cr3t-vALUE-Zq9"
    splitter = LineSplitter(10)
    s = sink(store, tmp_path, secrets=[secret], cap_bytes=120)
    line = ("." * 7 + secret) * 12
    for text in splitter.feed(line.encode() + b"\n") + splitter.flush():
        s.write("stdout", text)
    summary = s.close()
    assert summary.omitted_lines > 0
    texts = [t for stream, t in stored(store) if stream == "stdout"]
    for text in texts:
        assert not any(secret[i:i + 5] in text for i in range(len(secret) - 4)), text
    assert "".join(t for st, t in file_lines(s.full_log) if st == "stdout") == ("." * 7 + "****") * 12
