"""The state scripts spell no status, reason or refusal themselves: every such name reaches
Lua as a local generated from Python (shared/state/redis.py `lua_names`), so renaming or
adding one in base.py cannot leave a script behind. Fast: reads files, needs no Redis."""
from __future__ import annotations

import itertools
import re
from importlib import resources
from pathlib import Path

import pytest

from shared.state import redis as state_redis
from shared.state.base import (
    HEARTBEAT_RESULTS,
    JOB_STATUSES,
    REASONS,
    REFUSALS,
    TERMINAL,
    run_counters,
    run_outcome,
)

# A generated local's name: its group, then the value in capitals.
GENERATED_LOCAL = re.compile(r"\b(?:STATUS|REASON|REFUSED|HEARTBEAT|REPLY|ERR|FIELD)_[A-Z0-9_]+\b")
QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"")


def lua_files(package: str) -> list[Path]:
    return sorted(Path(str(resources.files(package).joinpath("lua"))).glob("*.lua"))


def code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, code) with `--` comments removed: comments may name what they mean."""
    return [(number, re.sub(r"--.*$", "", line)) for number, line in enumerate(path.read_text().splitlines(), 1)]


def spelt_names(path: Path, names: set[str]) -> list[str]:
    """`file:line: 'name'` for every quoted literal in the script that is one of `names`."""
    found = []
    for number, code in code_lines(path):
        for match in QUOTED.finditer(code):
            literal = match.group(1) if match.group(1) is not None else match.group(2)
            if literal in names:
                found.append(f"{path.name}:{number}: {match.group(0)}")
    return found


def unknown_locals(path: Path, defined: set[str]) -> list[str]:
    """`file:line: NAME` for every generated-looking local the header does not define."""
    return [f"{path.name}:{number}: {name}" for number, code in code_lines(path)
            for name in GENERATED_LOCAL.findall(code) if name not in defined]


def python_names() -> set[str]:
    """Every name Lua must not spell: the state machine's, and the script protocol's."""
    return set(JOB_STATUSES | REASONS | REFUSALS | HEARTBEAT_RESULTS) | set(state_redis.lua_names().values())


STATE_SCRIPTS = lua_files("shared.state")


def test_there_are_scripts_to_check() -> None:
    assert {p.name for p in STATE_SCRIPTS} >= {"_prelude.lua", "claim.lua", "finish.lua", "cancel.lua"}


@pytest.mark.parametrize("script", STATE_SCRIPTS, ids=lambda p: p.name)
def test_a_state_script_spells_no_name_python_owns(script: Path) -> None:
    assert spelt_names(script, python_names()) == []


@pytest.mark.parametrize("script", STATE_SCRIPTS, ids=lambda p: p.name)
def test_every_generated_name_a_state_script_uses_is_generated(script: Path) -> None:
    # Redis would refuse a misspelt one only when the line runs; this finds it now.
    assert unknown_locals(script, set(state_redis.lua_names())) == []


def test_the_checks_catch_what_they_look_for(tmp_path: Path) -> None:
    # The two checks above pass on silence, so show they are not silent on a bad script.
    bad = tmp_path / "bad.lua"
    bad.write_text("-- 'worker_lost' in a comment is fine\n"
                   "if job.status == 'running' then return {\"refused\", REFUSED_LEASD} end\n")
    assert spelt_names(bad, python_names()) == ["bad.lua:2: 'running'", 'bad.lua:2: "refused"']
    assert unknown_locals(bad, set(state_redis.lua_names())) == ["bad.lua:2: REFUSED_LEASD"]


def test_the_header_defines_every_name_once_with_its_python_value() -> None:
    header = state_redis._machine_header()
    for local, value in state_redis.lua_names().items():
        assert header.count(f"local {local} = ") == 1
        assert f"local {local} = '{value}'\n" in header
    # Every group Python owns is there in full.
    values = set(state_redis.lua_names().values())
    assert JOB_STATUSES | REASONS | REFUSALS | HEARTBEAT_RESULTS <= values


def test_run_outcome_looks_at_the_counters_only_through_zero_or_not() -> None:
    # The scripts get run_outcome as a table keyed by failed > 0, cancelled > 0 and
    # cancel_requested; a rule that counted further would need more than that table.
    for failed, cancelled, requested in itertools.product(range(4), range(4), (False, True)):
        assert run_outcome(failed, cancelled, requested) == run_outcome(min(failed, 1), min(cancelled, 1), requested)


def test_run_counters_only_count_terminal_jobs_into_the_two_counters() -> None:
    # The scripts get run_counters for terminal statuses only (jobs are counted when they end).
    for status in TERMINAL:
        for allow_failure in (False, True):
            assert set(run_counters(status, allow_failure)) <= {0, 1}
