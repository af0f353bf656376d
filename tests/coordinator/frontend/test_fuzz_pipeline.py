"""Fuzzing the whole front end: every input ends in a plan or `file:line:col: error:` lines,
never a traceback and never a hang."""
from __future__ import annotations

import re
import time
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.frontend import load_text

EXAMPLES = [p.read_text() for p in sorted((Path(__file__).resolve().parents[3] / "examples").glob("*.yml"))]
LINE = re.compile(r"^fuzz\.yml:\d+:\d+: (error|warning): .+")
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(text: str | bytes) -> None:
    start = time.monotonic()
    result = load_text(text, "fuzz.yml")
    assert time.monotonic() - start < 5
    for diagnostic in result.diagnostics:
        assert LINE.match(str(diagnostic)), str(diagnostic)
        assert diagnostic.position.line >= 1 and diagnostic.position.col >= 1
    if result.plan is None:
        assert any(d.severity == "error" for d in result.diagnostics)


@st.composite
def mutated_example(draw) -> str:
    lines = draw(st.sampled_from(EXAMPLES)).splitlines()
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["delete", "duplicate", "indent", "dedent", "insert", "replace"]))
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "indent":
            lines[i] = "  " + lines[i]
        elif op == "dedent":
            lines[i] = lines[i][2:]
        elif op == "insert":
            pos = draw(st.integers(0, len(lines[i])))
            token = draw(st.sampled_from([":", "-", "[", "]", "{", "}", "&a", "*a", "<<: *a", "${", "${{", "'", '"', "!!", "#", "\t", "\x00"]))
            lines[i] = lines[i][:pos] + token + lines[i][pos:]
        else:
            pos = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:pos] + draw(st.text(max_size=8))
    return "\n".join(lines)


@FUZZ
@given(mutated_example())
def test_mutated_examples(text: str) -> None:
    check(text)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    check(data)


scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5000), st.text(max_size=12),
                    st.sampled_from(["success()", "${X}", "${{ env.A }}", "build", "../x", "/abs", "noop"]))
keys = st.sampled_from(["name", "jobs", "steps", "script", "depends_on", "image", "timeout", "matrix",
                        "environment", "global_env", "conditional", "artifacts", "paths", "retry_count",
                        "deploy", "build", "test", "action", "working_directory", "resources", "memory"])
documents = st.recursive(scalars, lambda children: st.one_of(st.lists(children, max_size=4),
                                                           st.dictionaries(keys, children, max_size=5)), max_leaves=30)


@FUZZ
@given(documents)
def test_random_structures(document) -> None:
    check(yaml.safe_dump(document))


def test_billion_laughs_is_rejected_quickly() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 12):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    lines.append("name: *a11")
    start = time.monotonic()
    result = load_text("\n".join(lines), "fuzz.yml")
    assert time.monotonic() - start < 2
    assert result.plan is None and result.diagnostics
