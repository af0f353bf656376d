"""The artifact index scripts spell no name Python owns (their reply tags, and any status or
reason of the state store): each reaches Lua as a generated local, like the state scripts'.
Fast: reads files, needs no Redis."""
from __future__ import annotations

from pathlib import Path

import pytest

from shared.artifacts.index import redis as index_redis
from tests.shared.state.test_lua_names import lua_files, python_names, spelt_names, unknown_locals

INDEX_SCRIPTS = lua_files("shared.artifacts.index")


def test_there_are_scripts_to_check() -> None:
    assert {p.name for p in INDEX_SCRIPTS} >= {"_prelude.lua", "reserve.lua", "delete.lua"}


@pytest.mark.parametrize("script", INDEX_SCRIPTS, ids=lambda p: p.name)
def test_an_index_script_spells_no_name_python_owns(script: Path) -> None:
    assert spelt_names(script, python_names() | set(index_redis.lua_names().values())) == []


@pytest.mark.parametrize("script", INDEX_SCRIPTS, ids=lambda p: p.name)
def test_every_generated_name_an_index_script_uses_is_generated(script: Path) -> None:
    assert unknown_locals(script, set(index_redis.lua_names())) == []


@pytest.mark.parametrize("name", sorted(index_redis._SCRIPTS))
def test_every_index_script_gets_the_generated_names(name: str) -> None:
    text = index_redis.script_text(name)
    for local, value in index_redis.lua_names().items():
        assert f"local {local} = '{value}'\n" in text
