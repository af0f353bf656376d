"""One broken pipeline per error class: each must give exactly the expected
`file:line:col: error: message` lines (line, column and text asserted)."""
from __future__ import annotations

import textwrap

import pytest

from coordinator.frontend import load_text


def errors(yaml_text: str, **kwargs) -> list[str]:
    result = load_text(textwrap.dedent(yaml_text).lstrip("\n"), "p.yml", **kwargs)
    return [str(d) for d in result.diagnostics if d.severity == "error"]


CASES = {
    "unknown dependency with suggestion": (
        """
        name: demo
        jobs:
          build:
            steps: [{name: s, script: [make]}]
          test:
            depends_on: [biuld]
            steps: [{name: s, script: [make test]}]
        """,
        ["p.yml:6:18: error: job 'test' depends on unknown job 'biuld' (did you mean 'build'?)"],
    ),
    "self dependency": (
        """
        name: demo
        jobs:
          build:
            depends_on: [build]
            steps: [{name: s, script: [make]}]
        """,
        ["p.yml:4:18: error: job 'build' depends on itself (remove it from depends_on)"],
    ),
    "cycle as shortest loop": (
        """
        name: demo
        jobs:
          build:
            depends_on: [package]
            steps: [{name: s, script: [make]}]
          test:
            depends_on: [build]
            steps: [{name: s, script: [make]}]
          package:
            depends_on: [test, build]
            steps: [{name: s, script: [make]}]
        """,
        ["p.yml:4:18: error: circular dependency: build -> package -> build"],
    ),
    "unknown key with did-you-mean": (
        """
        name: demo
        jobs:
          build:
            depend_on: [x]
            steps: [{name: s, script: [make]}]
        """,
        ["p.yml:4:5: error: unknown field 'depend_on' in jobs.build (did you mean 'depends_on'?)"],
    ),
    "value out of range": (
        """
        name: demo
        jobs:
          build:
            timeout: 7200
            steps: [{name: s, script: [make]}]
        """,
        ["p.yml:4:14: error: jobs.build.timeout: must be at most 3600, got 7200"],
    ),
    "wrong type": (
        """
        name: demo
        jobs:
          build:
            retry_count: "three"
            steps: [{name: s, script: [make]}]
        """,
        ["p.yml:4:18: error: jobs.build.retry_count: must be an integer, got 'three'"],
    ),
    "boolean is not an integer": (
        """
        name: demo
        jobs:
          build:
            steps: [{name: s, script: [make], timeout: true}]
        """,
        ["p.yml:4:48: error: jobs.build.steps[0].timeout: must be an integer, got true"],
    ),
    "missing required field": (
        """
        name: demo
        jobs:
          build:
            steps: [{script: [make]}]
        """,
        ["p.yml:4:13: error: jobs.build.steps[0]: missing required field 'name'"],
    ),
    "missing pipeline name": (
        """
        jobs:
          build:
            steps: [{name: s, script: [make]}]
        """,
        ["p.yml:1:1: error: <document>: missing required field 'name'"],
    ),
    "invalid job name": (
        """
        name: demo
        jobs:
          "bad name":
            steps: [{name: s, script: [make]}]
        """,
        ["p.yml:3:3: error: jobs.bad name: 'bad name' does not match [A-Za-z0-9][A-Za-z0-9_.-]{0,62}"],
    ),
    "duplicate job key": (
        """
        name: demo
        jobs:
          build:
            steps: [{name: s, script: [make]}]
          build:
            steps: [{name: s, script: [make]}]
        """,
        ["p.yml:5:3: error: duplicate key 'build' (first defined at line 3)"],
    ),
    "duplicate step names": (
        """
        name: demo
        jobs:
          build:
            steps:
              - {name: compile, script: [make]}
              - {name: compile, script: [make install]}
        """,
        ["p.yml:6:16: error: job 'build': duplicate step name 'compile' (first used by step 1)"],
    ),
    "working directory escaping the workspace": (
        """
        name: demo
        jobs:
          build:
            steps:
              - {name: s, script: [make], working_directory: ../../etc}
        """,
        ["p.yml:5:54: error: job 'build' step 's': working_directory '../../etc' escapes the workspace "
         "(use a path relative to the workspace, without '..' above it)"],
    ),
    "absolute artifact path": (
        """
        name: demo
        jobs:
          build:
            steps: [{name: s, script: [make]}]
            artifacts:
              paths: [dist/*.whl, /etc/passwd]
        """,
        ["p.yml:6:27: error: job 'build': artifact path '/etc/passwd' escapes the workspace "
         "(use a path relative to the workspace, without '..' above it)"],
    ),
    "undefined variable": (
        """
        name: demo
        global_env:
          VERSION: "1.0"
        jobs:
          build:
            image: "python:${VERSON}"
            steps: [{name: s, script: [make]}]
        """,
        ["p.yml:6:12: error: jobs.build.image: undefined variable 'VERSON' (did you mean 'VERSION'?)"],
    ),
    "variable cycle": (
        """
        name: demo
        global_env:
          A: "${B}"
          B: "${A}"
        jobs:
          build:
            steps: [{name: s, script: [make]}]
        """,
        None,  # asserted below by substring: the cycle is named
    ),
    "step with script and action": (
        """
        name: demo
        jobs:
          build:
            steps: [{name: s, script: [make], action: noop}]
        """,
        ["p.yml:4:39: error: job 'build' step 's' has both 'script' and 'action' (a step runs a script or an action, not both)"],
    ),
    "unknown action": (
        """
        name: demo
        jobs:
          build:
            steps: [{name: s, action: nop}]
        """,
        ["p.yml:4:31: error: job 'build' step 's': unknown action 'nop' (did you mean 'noop'?)"],
    ),
    "expression syntax error": (
        """
        name: demo
        jobs:
          build:
            conditional: "success() &&"
            steps: [{name: s, script: [make]}]
        """,
        None,
    ),
    "unknown function": (
        """
        name: demo
        jobs:
          build:
            conditional: "sucess()"
            steps: [{name: s, script: [make]}]
        """,
        None,
    ),
    "unsafe tag": (
        """
        name: !!python/object/apply:os.system ["echo pwned"]
        jobs:
          build:
            steps: [{name: s, script: [make]}]
        """,
        None,
    ),
    "matrix too large": (
        """
        name: demo
        jobs:
          test:
            matrix: {A: [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17], B: [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]}
            steps: [{name: s, script: [make]}]
        """,
        ["p.yml:4:5: error: job 'test': matrix expands to 272 jobs, more than 256"],
    ),
}


@pytest.mark.parametrize("name", [k for k, v in CASES.items() if v[1] is not None])
def test_error_class_exact(name: str) -> None:
    text, expected = CASES[name]
    assert errors(text) == expected


def test_variable_cycle_names_the_cycle() -> None:
    found = errors(CASES["variable cycle"][0])
    assert any("A -> B -> A" in e for e in found), found
    assert all(e.startswith("p.yml:3:") or e.startswith("p.yml:4:") for e in found), found


def test_expression_syntax_error_points_at_conditional() -> None:
    found = errors(CASES["expression syntax error"][0])
    assert len(found) == 1 and found[0].startswith("p.yml:4:18: error: jobs.build.conditional:"), found


def test_unknown_function_suggests() -> None:
    found = errors(CASES["unknown function"][0])
    assert len(found) == 1 and "'sucess'" in found[0] and "success" in found[0], found


def test_unsafe_tag_rejected() -> None:
    found = errors(CASES["unsafe tag"][0])
    assert found and found[0].startswith("p.yml:1:7: error:") and "python/object" in found[0], found


def test_every_error_in_one_pass() -> None:
    found = errors(
        """
        name: demo
        jobs:
          build:
            timeout: 0
            depends_on: [nope]
            steps: [{name: s, script: [make]}, {name: s, script: [make]}]
          test:
            depends_on: [tset]
            steps: [{name: s, action: nop}]
        """
    )
    assert len(found) == 5, found


def test_conditional_on_non_upstream_job() -> None:
    found = errors(
        """
        name: demo
        jobs:
          a:
            steps: [{name: s, script: [make]}]
          b:
            conditional: "jobs.a.status == 'failed'"
            steps: [{name: s, script: [make]}]
        """
    )
    assert found == ["p.yml:6:18: error: job 'b': conditional refers to job 'a', which is not upstream of it (add 'a' to depends_on)"]


def test_run_parameter_defines_variable() -> None:
    text = """
        name: demo
        jobs:
          build:
            image: "python:${PY}"
            steps: [{name: s, script: [make]}]
        """
    assert errors(text, parameters={"PY": "3.12"}) == []


@pytest.mark.parametrize("escape", ["\\0", "\\x00", "\\u0000"])
def test_a_nul_escape_is_an_error_at_its_value(escape: str) -> None:
    text = f"""
    name: demo
    jobs:
      build:
        environment: {{TOKEN: "a{escape}b"}}
        matrix: {{V: ["x{escape}"]}}
        steps: [{{name: s, script: ["echo {escape}"]}}]
    """
    assert errors(text) == [
        "p.yml:4:26: error: jobs.build.environment.TOKEN: text must not contain a NUL character "
        "(remove the \\0 (or \\x00, \\u0000) escape)",
        "p.yml:5:18: error: jobs.build.matrix.V[0]: text must not contain a NUL character "
        "(remove the \\0 (or \\x00, \\u0000) escape)",
        "p.yml:6:32: error: jobs.build.steps[0].script[0]: text must not contain a NUL character "
        "(remove the \\0 (or \\x00, \\u0000) escape)",
    ]


def test_a_nul_in_a_key_is_an_error_at_the_key() -> None:
    found = errors("""
    name: demo
    jobs:
      build:
        environment: {"A\\0": v}
        steps: [{name: s, script: [make]}]
    """)
    assert "p.yml:4:19: error: jobs.build.environment: key 'A\\x00' must not contain a NUL character " \
           "(remove the \\0 escape)" in found


def test_a_raw_nul_byte_is_an_error_at_its_place() -> None:
    assert errors("name: demo\njobs:\n  build:\n    steps: [{name: s, script: [\"a\0b\"]}]\n") == [
        "p.yml:4:34: error: character U+0000 is not allowed in a YAML file"]
