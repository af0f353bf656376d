"""A run id from the command line is checked before anything is built from it.

Attack: `conveyor status '../../etc'` (or any command taking RUN) with a run id that is a
path, or that carries escape sequences. Run ids end up in workspace, log and artifact
paths and in key names; before, the store's own check raised from deep inside with a
traceback. Now every command taking RUN refuses it first: exit 3, one line on stderr,
nothing created.
"""
from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from coordinator.cli import COMMANDS, cli
from coordinator.cli.options import _run_id_callback

# Every command that takes a run id, with what else it needs.
RUN_COMMANDS = [
    ["status", "{run}"],
    ["status", "{run}", "--format", "json"],
    ["logs", "{run}"],
    ["logs", "{run}", "build", "-f"],
    ["cancel", "{run}"],
    ["artifacts", "ls", "{run}"],
    ["artifacts", "get", "{run}", "build", "--log"],
    ["approve", "{run}", "go-live"],
    ["reject", "{run}", "go-live"],
    ["abort", "{run}", "release"],
    ["rollback", "{run}", "release"],
]
BAD_IDS = ["../../etc", "/etc/passwd", "..", "a/../../b", "", " x", "x\x1b]0;pwned\x07", "x" * 200]


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = tmp_path / "data"
    monkeypatch.setenv("CONVEYOR_DATA_DIR", str(data))
    monkeypatch.delenv("CONVEYOR_BROKER_URL", raising=False)
    monkeypatch.delenv("CONVEYOR_STATE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    return data


def _commands(group: click.Group, ctx: click.Context):
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            yield from _commands(command, ctx)
        elif command is not None:
            yield command


def test_every_command_taking_a_run_checks_it_when_parsing() -> None:
    ctx = click.Context(cli)
    taking_run = [c for c in _commands(cli, ctx) if any(p.name == "run_id" for p in c.params)]
    assert len(taking_run) >= 9, [c.name for c in taking_run]
    for command in taking_run:
        param = next(p for p in command.params if p.name == "run_id")
        assert param.callback is _run_id_callback, f"`{command.name}` takes RUN without checking it"
    assert len(COMMANDS) > 0


@pytest.mark.parametrize("args", RUN_COMMANDS, ids=lambda a: " ".join(a[:2]))
@pytest.mark.parametrize("bad", BAD_IDS, ids=range(len(BAD_IDS)))
def test_a_bad_run_id_is_refused_in_one_line_before_anything_is_built(data_dir: Path, tmp_path: Path,
                                                                      args: list[str], bad: str) -> None:
    result = CliRunner().invoke(cli, [a.replace("{run}", bad) for a in args])
    assert result.exit_code == 3, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no run '") and "not a run id" in lines[0], lines
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "Traceback" not in result.output
    assert not data_dir.exists()  # no store opened, no directory made
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_well_formed_unknown_run_is_still_exit_3(data_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["status", "20260101-000000-abcdef"])
    assert result.exit_code == 3 and result.output.strip() == "error: unknown run '20260101-000000-abcdef'"
