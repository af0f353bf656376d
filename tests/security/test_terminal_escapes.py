"""Escape sequences written by a pipeline or a job never reach the operator's terminal.

Attack: a matrix value (so the job's name) and the job's output carry an OSC window title
(`ESC ] 0 ; pwned BEL`), a clear screen (`ESC [ 2 J`), an OSC 8 hyperlink
(`ESC ] 8 ;; http://evil ESC \\`) and a C1 CSI (`\\x9b`); the worker name and the
pipeline name (anyone with the Redis password writes those) carry them too, and a job
name carries rich markup (`[link=...]`). `conveyor status`, `logs`, `logs RUN JOB`,
`runs`, `cancel`, `artifacts ls` and the live view print none of them; `--format json`
still gives the exact stored text (JSON escapes it).

Fast: a SQLite data directory filled as a worker would, the CLI in-process and `follow`
on a pipe and on a (forced) terminal. Slow: `conveyor run` end to end with the local
executor, its piped live output, then the CLI in subprocesses.
"""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from coordinator.cli import cli
from coordinator.follow import follow
from shared.state import JobMeta, open_state

ROOT = Path(__file__).resolve().parents[2]
TITLE, CLEAR, LINK, C1 = "\x1b]0;pwned\x07", "\x1b[2J", "\x1b]8;;http://evil\x1b\\", "\x9b"
PAYLOAD = f"a{TITLE}b{CLEAR}c{LINK}d{C1}2Je"
JOB = f"show[V={PAYLOAD}]"
MARKUP_JOB = "mark[V=[link=http://evil]x[/link]]"
RUN = "20261203-120000-e5ca9e"
# What may never be printed: C0 but tab and newline, DEL, C1 (ESC is C0).
UNSAFE = {chr(c) for c in [*range(0x00, 0x09), *range(0x0b, 0x20), *range(0x7f, 0xa0)]}


def assert_inert(output: str, where: str) -> None:
    found = sorted({f"U+{ord(c):04X}" for c in output if c in UNSAFE})
    assert not found, f"{where} printed control characters {found}:\n{output!r}"


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data directory holding one finished run, stored as a (hostile) worker would."""
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("CONVEYOR_DATA_DIR", str(data))
    monkeypatch.delenv("CONVEYOR_BROKER_URL", raising=False)
    monkeypatch.delenv("CONVEYOR_STATE_URL", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    store = open_state(f"sqlite:///{data / 'state.db'}")
    plan = {"levels": [[JOB, MARKUP_JOB]], "jobs": {JOB: {"depends_on": []}, MARKUP_JOB: {"depends_on": []}}}
    store.create_run(RUN, f"esc{TITLE}", {JOB: JobMeta(), MARKUP_JOB: JobMeta()}, plan, {})
    for name in (JOB, MARKUP_JOB):
        claim = store.claim(RUN, name, f"w1{CLEAR}{LINK}", 60_000)
        store.append_logs(RUN, name, [
            ("stdout", f"out {TITLE} {CLEAR} {LINK} {C1}2J \x1b[31mred\x1b[0m end"),
            ("stderr", f"err{C1}31m{TITLE}"),
            (f"sys{TITLE}", "a stream label is text too"),
        ])
        store.finish(RUN, name, claim.token, "failed", exit_code=1, reason="script_failure")
    store.close()
    return data


def cli_output(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_status_logs_runs_cancel_print_nothing_a_terminal_obeys(data_dir: Path) -> None:
    for args in (["status", RUN], ["logs", RUN], ["logs", RUN, JOB], ["logs", RUN, MARKUP_JOB], ["runs"],
                 ["cancel", RUN], ["artifacts", "ls", RUN]):
        code, output = cli_output(*args)
        assert code == 0, (args, output)
        assert_inert(output, " ".join(a.encode("unicode_escape").decode() for a in args))
    _, status = cli_output("status", RUN)
    assert "show[V=abcde]" in status  # the name is there, minus its sequences
    _, logs = cli_output("logs", RUN, JOB)
    assert logs.splitlines()[0] == "out     red end"  # the text is there, minus its sequences
    assert "http://evil" not in logs and "pwned" not in logs


def test_json_output_stays_exact(data_dir: Path) -> None:
    code, output = cli_output("status", RUN, "--format", "json")
    assert code == 0
    status = json.loads(output)
    assert JOB in status["jobs"] and status["pipeline"] == f"esc{TITLE}"
    assert "\x1b" not in output  # escaped by JSON, not printed
    code, output = cli_output("logs", RUN, JOB, "--format", "json")
    assert json.loads(output.splitlines()[0])["message"].startswith(f"out {TITLE} {CLEAR}")


def test_the_live_view_piped_prints_nothing_a_terminal_obeys(data_dir: Path) -> None:
    store = open_state(f"sqlite:///{data_dir / 'state.db'}")
    console = Console(file=io.StringIO(), width=200)
    assert follow(store, RUN, console=console, poll_ms=10) == "failed"
    output = console.file.getvalue()
    assert_inert(output, "follow (piped)")
    assert re.search(r"^show\[V=abcde\] +\| out     red end$", output, re.M), output


def test_the_live_view_on_a_terminal_keeps_colour_and_nothing_else(data_dir: Path) -> None:
    store = open_state(f"sqlite:///{data_dir / 'state.db'}")
    console = Console(file=io.StringIO(), width=200, force_terminal=True, color_system="standard")
    follow(store, RUN, console=console, poll_ms=10, live=False)
    output = console.file.getvalue()
    for sequence in (TITLE, CLEAR, LINK, C1, "\x1b]"):  # "\x1b]": no OSC at all, so no hyperlink
        assert sequence not in output, repr(sequence)
    assert "\x1b[31mred" in output  # the job's colour, re-emitted by rich
    assert "[link=http://evil]x[/link]" in output  # markup in a name is shown, not obeyed


# -- end to end ----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_hostile_pipeline_run_end_to_end(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    pipeline = tmp_path / "src" / "p.yml"
    # YAML double quotes: \e is ESC, \a BEL, \x9b the C1 CSI.
    pipeline.write_text(textwrap.dedent(r"""
        name: esc
        jobs:
          show:
            matrix:
              V: ["a\e]0;pwned\ab\e[2Jc\e]8;;http://evil\e\\d\x9b2Je"]
            steps:
              - name: print
                script:
                  - "printf 'out \\033]0;pwned\\007 \\033[2J \\033]8;;http://evil\\033\\\\ \\302\\2332J end\\n'"
    """).lstrip())
    env = {**os.environ, "CONVEYOR_DATA_DIR": str(tmp_path / "data")}
    for name in ("CONVEYOR_BROKER_URL", "CONVEYOR_STATE_URL", "NO_COLOR"):
        env.pop(name, None)

    def conveyor(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "coordinator", *args], env=env, cwd=ROOT,
                              capture_output=True, timeout=180)

    run = conveyor("run", str(pipeline), "--executor", "local")
    shown = run.stdout.decode("utf-8")
    assert run.returncode == 0, shown + run.stderr.decode()
    assert_inert(shown, "conveyor run (piped live output)")
    assert "show[V=abcde] | out     end" in shown
    run_id = json.loads(conveyor("runs", "--format", "json").stdout)[0]["run_id"]
    for args in (["status", run_id], ["logs", run_id], ["logs", run_id, f"show[V={PAYLOAD}]"], ["runs"]):
        result = conveyor(*args)
        assert result.returncode == 0, result.stderr
        assert_inert(result.stdout.decode("utf-8") + result.stderr.decode("utf-8"), args[0])
    status = json.loads(conveyor("status", run_id, "--format", "json").stdout)
    assert f"show[V={PAYLOAD}]" in status["jobs"]  # the exact name, through JSON
