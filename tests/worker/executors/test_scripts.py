"""Step scripts, and the small shared pieces both backends rely on (log lines, specs)."""

from __future__ import annotations

import shlex
import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.executors.contract import JobSpec, ResourceLimits, StepSpec

from worker.executors.support import LinePiece, LineSplitter, resolve_working_directory
from worker.executors.scripts import build_script, echo_text, write_script

text_without_nul = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)))


def run_script(lines: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run the script the way the local executor does; output decoded, newlines untouched."""
    path = write_script(tmp_path, 0, lines)
    done = subprocess.run(
        ["/bin/sh", "-e", str(path)], capture_output=True, cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"}, timeout=10,
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


# -- scripts ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def script_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("scripts")


@settings(max_examples=30, deadline=None)
@given(data=text_without_nul)
def test_any_text_is_echoed_and_printed_verbatim(data, script_dir):
    command = f"printf '%s\\n' {shlex.quote(data)}"
    done = run_script([command], script_dir)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{echo_text(command)}\n{data}\n"


def test_first_failing_line_stops_with_its_status(tmp_path):
    done = run_script(["echo one", "exit 7", "echo three"], tmp_path)
    assert done.returncode == 7
    assert done.stdout == "$ echo one\none\n$ exit 7\n"


def test_a_trailing_backslash_does_not_swallow_the_next_line(tmp_path):
    done = run_script(["echo a \\", "echo b"], tmp_path)
    assert done.stdout == "$ echo a \\\na\n$ echo b\nb\n"


def test_multi_line_commands_are_echoed_like_a_shell_continuation():
    assert echo_text("for i in 1 2\ndo echo $i\ndone") == "$ for i in 1 2\n> do echo $i\n> done"


def test_nul_bytes_are_refused():
    with pytest.raises(ValueError, match="line 2"):
        build_script(["true", "echo \0"])


def test_script_file_is_readable_by_anyone_and_writable_by_its_owner_only(tmp_path):
    path = write_script(tmp_path, 4, ["true"])
    assert path.name == "step-004.sh"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


# -- log lines ----------------------------------------------------------------------------

def split_all(data: bytes, cuts: list[int], max_chars: int) -> list[str]:
    splitter = LineSplitter(max_chars)
    lines: list[str] = []
    start = 0
    for cut in sorted(cuts) + [len(data)]:
        lines += splitter.feed(data[start:cut])
        start = cut
    return lines + splitter.flush()


@settings(max_examples=100, deadline=None)
@given(
    data=st.binary(max_size=200),
    cuts=st.lists(st.integers(0, 200), max_size=8),
    max_chars=st.integers(1, 20),
)
def test_chunking_never_changes_the_lines(data, cuts, max_chars):
    cuts = [c for c in cuts if c <= len(data)]
    text = data.decode("utf-8", errors="replace")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    expected = [
        line[i : i + max_chars] for line in lines for i in range(0, max(len(line), 1), max_chars)
    ]
    assert split_all(data, cuts, max_chars) == expected


@settings(max_examples=100, deadline=None)
@given(
    data=st.binary(max_size=200),
    cuts=st.lists(st.integers(0, 200), max_size=8),
    max_chars=st.integers(1, 20),
)
def test_every_chunk_but_a_lines_last_is_marked_as_continuing(data, cuts, max_chars):
    """LogSink masks a cut line as one; it knows the cuts by the LinePiece type."""
    cuts = [c for c in cuts if c <= len(data)]
    text = data.decode("utf-8", errors="replace")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    expected = [
        i + max_chars < len(line) for line in lines for i in range(0, max(len(line), 1), max_chars)
    ]
    assert [isinstance(chunk, LinePiece) for chunk in split_all(data, cuts, max_chars)] == expected


def test_a_character_split_across_chunks_stays_whole():
    assert split_all("é\n".encode(), [1], 100) == ["é"]


def test_invalid_utf8_is_replaced_and_a_partial_last_line_flushed():
    assert split_all(b"ok\n\xffbad", [], 100) == ["ok", "\ufffdbad"]


# -- specs --------------------------------------------------------------------------------

def test_step_env_is_read_only_and_string_only():
    step = StepSpec(0, "s", "img", ["true"], env={"A": "1"})
    assert step.script == ("true",)
    with pytest.raises(TypeError):
        step.env["B"] = "2"  # type: ignore[index]
    with pytest.raises(TypeError):
        StepSpec(0, "s", "img", ("true",), env={"A": 1})  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        StepSpec(0, "s", "img", ("true",), env={"A=B": "1"})


@pytest.mark.parametrize(
    "fields", [{"pull_policy": "sometimes"}, {"kill_grace": -1}, {"worker_name": ""}]
)
def test_invalid_job_specs_are_refused(fields, tmp_path):
    base = {"run_id": "r", "job": "j", "workspace": tmp_path, "worker_name": "w"}
    with pytest.raises(ValueError):
        JobSpec(**{**base, **fields})


def test_limits_must_be_positive():
    with pytest.raises(ValueError):
        ResourceLimits(memory_bytes=0)


@pytest.mark.parametrize("path", ["../x", "/etc", "a/../../x"])
def test_working_directory_may_not_leave_the_workspace(path, tmp_path):
    with pytest.raises(ValueError):
        resolve_working_directory(tmp_path, path)


def test_working_directory_through_a_symlink_out_is_refused(tmp_path):
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "out").symlink_to(tmp_path)
    with pytest.raises(ValueError):
        resolve_working_directory(tmp_path / "ws", "out")
    assert resolve_working_directory(tmp_path / "ws", "./sub") == (tmp_path / "ws" / "sub").resolve()
