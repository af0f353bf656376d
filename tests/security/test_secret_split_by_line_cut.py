"""A secret printed once on a long line must not leak where the executors cut that line.

Executors cut a line longer than 16 KiB (DEFAULT_MAX_LINE_CHARS) into pieces. The attack: a
job prints one long line (a minified JSON holding a token) arranged so that the cut falls
inside the token. Each piece alone holds only part of it, so masking piece by piece lets
the whole token through in two halves that a reader joins up.

- unit: the real LineSplitter (16 KiB cut) feeding a LogSink, the token at every offset
  across the cut (hypothesis): neither the stored log nor the full log file (which is what
  gets archived) holds the token or any 6-character fragment of it; the cap (4 MiB head
  and tail) keeps or drops whole, already masked entries;
- slow: a real worker (local executor) and Redis: a job prints the token in the middle of
  a 40 KiB line; `conveyor logs`, the full log under the data directory and
  `conveyor artifacts get RUN JOB --log` never show it.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cluster import running_cluster
from worker.executors.support import DEFAULT_MAX_LINE_CHARS, LineSplitter
from worker.logs import LogSink
from worker.secrets import Masker

TOKEN = "ghp_T0kEnSpl1tByTh3LineCut_9f8e7d6c5b4a"


class ListStore:
    """Just what LogSink needs of a state store: every appended entry, in order."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str]] = []

    def append_logs(self, run_id: str, job: str, entries) -> None:
        self.entries.extend(entries)


def fragments(secret: str, size: int = 6) -> set[str]:
    return {secret[i:i + size] for i in range(len(secret) - size + 1)}


def run_line_through_sink(tmp_path: Path, line: bytes, cap_bytes: int = 4 * 1024 * 1024) -> tuple[ListStore, Path]:
    store = ListStore()
    full_log = tmp_path / "job.log"
    full_log.unlink(missing_ok=True)
    sink = LogSink(store, "run-1", "job", full_log, Masker([TOKEN]), cap_bytes=cap_bytes)
    splitter = LineSplitter()  # the executors' own cut
    # Delivered in odd-sized chunks, as a pipe does.
    for start in range(0, len(line), 7001):
        for text in splitter.feed(line[start:start + 7001]):
            sink.write("stdout", text)
    for text in splitter.flush():
        sink.write("stdout", text)
    sink.close()
    return store, full_log


def assert_no_trace(text: str) -> None:
    assert TOKEN not in text
    leaked = [f for f in fragments(TOKEN) if f in text]
    assert not leaked, f"fragments of the token leaked: {leaked[:3]}"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(overhang=st.integers(min_value=1, max_value=len(TOKEN) - 1), cut=st.integers(min_value=1, max_value=2))
def test_a_token_straddling_the_16k_cut_never_reaches_the_log(tmp_path: Path, overhang: int, cut: int) -> None:
    # A minified JSON document whose token starts `overhang` characters before a cut.
    head, middle = '{"pad":"', '","token":"'
    pad = cut * DEFAULT_MAX_LINE_CHARS - overhang - len(head) - len(middle)
    line = head + "a" * pad + middle + TOKEN + '","more":"' + "b" * 30000 + '"}'
    start = line.index(TOKEN)
    assert start < cut * DEFAULT_MAX_LINE_CHARS < start + len(TOKEN)
    store, full_log = run_line_through_sink(tmp_path, line.encode() + b"\n")
    stored = [text for stream, text in store.entries if stream == "stdout"]
    assert len(stored) >= 3  # the line really was cut
    for text in stored:
        assert_no_trace(text)
    assert "".join(stored) == line.replace(TOKEN, "****")  # joined back up, as a reader would
    content = full_log.read_text()
    assert_no_trace(content)
    assert_no_trace("".join(re.findall(r"^\S+ stdout (.*)$", content, re.M)))


def test_the_cap_does_not_cut_a_token_in_half(tmp_path: Path) -> None:
    """Tokens at every cut of a line far over a (small) cap: head, marker, tail all clean."""
    unit = "x" * (DEFAULT_MAX_LINE_CHARS - 7) + TOKEN  # shifts the token across each cut
    line = (unit * 12 + "\n").encode()
    store, full_log = run_line_through_sink(tmp_path, line, cap_bytes=64 * 1024)
    texts = [text for _, text in store.entries]
    assert any(text.startswith("[... ") and "omitted" in text for text in texts)
    for text in texts:
        assert_no_trace(text)
    assert_no_trace(full_log.read_text())


# -- end to end ---------------------------------------------------------------------------


EMIT = """
import os, sys
token = os.environ["API_TOKEN"]  # the job sees the secret under its own name
before = int(sys.argv[1])  # characters of the line before the token
line = '{"p":"' + "a" * (before - 6) + token
sys.stdout.write(line + "b" * (40960 - len(line) - 2) + '"}\\n')
"""


@pytest.mark.services
def test_a_token_in_the_middle_of_a_40k_line_stays_masked_everywhere(tmp_path: Path) -> None:
    with running_cluster(tmp_path, "local") as cluster:
        cluster.worker("w1", CONVEYOR_SECRET_API_TOKEN=TOKEN)
        # 5 characters of the token before the first 16 KiB cut, the rest after it.
        pipeline = cluster.pipeline(f"""
            name: leak
            jobs:
              print:
                secrets: [API_TOKEN]
                steps:
                  - name: json
                    script: ["python3 emit.py {DEFAULT_MAX_LINE_CHARS - 5}"]
        """)
        (pipeline.parent / "emit.py").write_text(EMIT)
        run_id = cluster.submit(pipeline)
        status = cluster.wait(run_id, timeout=120)
        assert status["status"] == "success", cluster.logs(run_id)

        shown = cluster.logs(run_id, "print") + cluster.logs(run_id)
        assert "a" * 1000 in shown and "****" in shown  # the line is there, masked
        assert_no_trace(shown)

        logs_dir = tmp_path / "data" / "logs" / run_id
        files = list(logs_dir.glob("*.log"))
        assert files, f"no full log under {logs_dir}"
        for file in files:
            assert "****" in file.read_text()
            assert_no_trace(file.read_text())

        out = tmp_path / "fetched"
        fetched = cluster.cli("artifacts", "get", run_id, "print", "--log", "-o", str(out))
        assert fetched.returncode == 0, fetched.stderr
        archived = [p.read_text() for p in out.iterdir()]
        assert archived and "****" in archived[0]
        for text in archived:
            assert_no_trace(text)
