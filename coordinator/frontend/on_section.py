"""The pipeline's `on:` (which events start it), checked when the pipeline is loaded.

The rules are the trigger logic's own: `coordinator.triggers.filters.parse_on`, the
parser the server uses when it decides whether an event starts a run. This module only
turns its `OnError` into diagnostics at the entry's `file:line:col`, with a hint, so the
front end and the server can never disagree on what a valid `on:` is. Cron expressions
and time zones are checked here too (parse_on parses them), so a schedule that can never
fire, or names a zone that does not exist, fails `conveyor validate`, not the scheduler.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Mapping
from zoneinfo import available_timezones

from coordinator.frontend.diagnostics import Diagnostics
from coordinator.frontend.schema import field_path
from coordinator.frontend.yaml_source import Path, SourceMap
from coordinator.triggers.filters import OnConfig, OnError, parse_on
from shared.suggest import did_you_mean

CRON_HINT = 'five fields: minute hour day-of-month month day-of-week, such as "0 3 * * 1-5"'
BOOLEAN_HINT = "use true or false: YAML 1.2 reads yes, no, on and off as text"


def check_on(data: Any, source: SourceMap, out: Diagnostics) -> OnConfig | None:
    """The `OnConfig` of the pipeline's `on:` (the "no `on:`" default when absent), or
    None when `on:` is invalid; each problem is added to `out`."""
    value = data.get("on") if isinstance(data, dict) else None
    text_keys_only = _without_non_text_keys(value)
    try:
        on = parse_on(text_keys_only)
    except OnError as first:
        for problem in _every_problem(text_keys_only, first):
            _report(problem, text_keys_only, source, out)
        return None
    # A key such as `true:` was reported by the schema stage ("quote it"); `on:` is invalid.
    return on if text_keys_only is value else None


def _every_problem(value: Any, first: OnError) -> list[OnError]:
    """parse_on stops at the first problem; the events of `on:` (and the entries of
    `schedule`) are checked independently of each other, so parsing them one at a time
    finds a problem in each, and the diagnostics cover the whole section in one pass."""
    if not isinstance(value, Mapping):
        return [first]
    problems: list[OnError] = []
    for key, entry in value.items():
        if key == "schedule" and isinstance(entry, list):
            for index, item in enumerate(entry):
                problem = _problem({key: [item]})
                if problem is not None:
                    problems.append(_renumbered(problem, index))
        else:
            problem = _problem({key: entry})
            if problem is not None:
                problems.append(problem)
    return problems or [first]


def _renumbered(problem: OnError, index: int) -> OnError:
    """A problem of the one-entry schedule ("on", "schedule", 0, ...) as one of entry `index`."""
    path = problem.path[:2] + (index,) + problem.path[3:]
    return OnError(path, problem.message, problem.allowed)


def _problem(value: Mapping[str, Any]) -> OnError | None:
    try:
        parse_on(value)
    except OnError as problem:
        return problem
    return None


def _report(problem: OnError, value: Any, source: SourceMap, out: Diagnostics) -> None:
    path: Path = tuple(problem.path)
    if problem.allowed:
        # Worded as every other unknown field of the pipeline (schema.py).
        name, owner = str(path[-1]), field_path(path[:-1])
        hint = did_you_mean(name, problem.allowed) or f"allowed here: {', '.join(problem.allowed)}"
        out.error(source.key(path) or source.nearest(path), f"unknown field '{name}' in {owner}", hint)
        return
    out.error(source.nearest(path), f"{field_path(path)}: {problem.message}", _hint(path, _at(value, path[1:])))


def _hint(path: Path, bad: Any) -> str | None:
    last = path[-1]
    if last == "cron":
        return CRON_HINT if isinstance(bad, str) else 'quote it: cron: "0 3 * * 1-5"'
    if last == "timezone" and isinstance(bad, str):
        return did_you_mean(bad, _zone_names())
    if last == "api" and isinstance(bad, str):
        return BOOLEAN_HINT
    return None


@lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    # Read from disk once, and only when a time zone is wrong.
    return frozenset(available_timezones())


def _at(value: Any, path: Path) -> Any:
    """The value at `path` inside `value`, or None when there is none."""
    for part in path:
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
            value = value[part]
        else:
            return None
    return value


def _without_non_text_keys(value: Any) -> Any:
    """`value` itself when every mapping key in it is text, else a copy without the others
    (the schema stage reports them), so the rest of `on:` is still checked."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if any(not isinstance(key, str) for key in node):
                return _text_keys_copy(value)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return value


def _text_keys_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _text_keys_copy(v) for k, v in value.items() if isinstance(k, str)}
    if isinstance(value, list):
        return [_text_keys_copy(v) for v in value]
    return value
