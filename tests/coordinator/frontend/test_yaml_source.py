"""Tests for the YAML source loader: typing, anchors and merges, errors, limits, source map."""
from __future__ import annotations

import math
import re
import sys
import time

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.frontend import yaml_source
from coordinator.frontend.diagnostics import Diagnostics, Position
from coordinator.frontend.yaml_source import LoadedYaml, load_yaml

FILE = "pipeline.yml"


def load(text: str | bytes) -> tuple[LoadedYaml | None, Diagnostics]:
    diagnostics = Diagnostics(FILE)
    return load_yaml(text, diagnostics), diagnostics


def data_of(text: str | bytes) -> object:
    loaded, diagnostics = load(text)
    assert diagnostics.items == []
    assert loaded is not None
    return loaded.data


def errors_of(text: str | bytes) -> list[str]:
    loaded, diagnostics = load(text)
    assert loaded is None
    assert diagnostics.items, "a failed load must say why"
    return [str(d) for d in diagnostics.items]


PIPELINE = """\
name: demo
.defaults: &defaults
  image: python:3.11
  timeout: 600
global_env:
  CI: true
jobs:
  build:
    <<: *defaults
    steps:
      - name: compile
        script: [make, 'make test']
  test:
    depends_on: [build]
    <<: [*defaults, {retry_count: 2}]
    timeout: 900
    steps:
      - &pytest
        name: pytest
        script:
          - pytest -q   # a comment with *stars
          - |
            echo "done"
      - *pytest
"""


# --------------------------------------------------------------------------- scalar typing


@pytest.mark.parametrize("text, expected", [
    # YAML 1.1 booleans and dates stay strings (the "Norway problem").
    ("yes", "yes"), ("no", "no"), ("on", "on"), ("off", "off"), ("y", "y"), ("NO", "NO"),
    ("2024-01-01", "2024-01-01"), ("12:30:00", "12:30:00"), ("1_000", "1_000"),
    ("0b101", "0b101"), ("tRUE", "tRUE"), ("nULL", "nULL"), ("1e", "1e"),
    ("true", True), ("True", True), ("TRUE", True),
    ("false", False), ("False", False), ("FALSE", False),
    ("null", None), ("Null", None), ("NULL", None), ("~", None), ("", None),
    ("0", 0), ("42", 42), ("-17", -17), ("+3", 3), ("007", 7),
    ("0x1F", 31), ("0o17", 15),
    ("1.5", 1.5), ("-0.25", -0.25), (".5", 0.5), ("1.", 1.0), ("1e3", 1000.0),
    ("-1.5E-2", -0.015), (".inf", math.inf), ("-.Inf", -math.inf), ("+.INF", math.inf),
    ("'true'", "true"), ('"42"', "42"), ("'~'", "~"), ("''", ""), ('"null"', "null"),
    ("!!str 12", "12"), ("!!str true", "true"), ("!!int '12'", 12), ("!!int 0x10", 16),
    ("!!float 3", 3.0), ('!!float ".inf"', math.inf), ("!!bool 'TRUE'", True),
    ("!!null ''", None), ("!!null ~", None),
    ("!!map {a: 1}", {"a": 1}), ("!!seq [1]", [1]),
])
def test_scalars_follow_the_yaml_1_2_core_schema(text: str, expected: object) -> None:
    value = data_of(f"value: {text}\n")["value"]  # type: ignore[index]
    assert value == expected
    assert type(value) is type(expected)


def test_nan_is_a_float() -> None:
    values = data_of("[.nan, .NaN, .NAN]")
    assert all(isinstance(v, float) and math.isnan(v) for v in values)  # type: ignore[union-attr]


def test_block_scalars_are_strings() -> None:
    assert data_of("a: |\n  true\nb: >-\n  12\n") == {"a": "true\n", "b": "12"}


def test_keys_are_typed_like_values() -> None:
    # GitHub Actions' "on:" key is the string "on", not True as under YAML 1.1.
    assert data_of("on: push\n2: two\ntrue: yes\n") == {"on": "push", 2: "two", True: "yes"}


@pytest.mark.parametrize("text, message", [
    ("!!int x", "'x' is not a valid !!int value"),
    ("!!int 1.5", "'1.5' is not a valid !!int value"),
    ("!!float abc", "'abc' is not a valid !!float value"),
    ("!!bool yes", "'yes' is not a valid !!bool value"),
    ("!!null 0", "'0' is not a valid !!null value"),
])
def test_explicit_standard_tags_check_their_value(text: str, message: str) -> None:
    assert errors_of(f"value: {text}\n") == [f"{FILE}:1:8: error: {message}"]


def test_an_integer_python_cannot_convert_is_an_error() -> None:
    assert errors_of("n: " + "9" * 5000 + "\n") == [
        f"{FILE}:1:4: error: integer with 5000 digits is too long"]


# --------------------------------------------------------------------------- tags


@pytest.mark.parametrize("text, shown", [
    ("!!python/object:os.system x", "!!python/object:os.system"),
    ("!!python/object/apply:os.system [ls]", "!!python/object/apply:os.system"),
    ("!<tag:yaml.org,2002:python/name:os.system> x", "!!python/name:os.system"),
    ("!!binary aGk=", "!!binary"),
    ("!!set {a}", "!!set"),
    ("!!omap [a: 1]", "!!omap"),
    ("!!timestamp 2024-01-01", "!!timestamp"),
    ("!foo bar", "!foo"),
    ("!ref [a]", "!ref"),
    ("!<conveyor:plain-scalar> 12", "conveyor:plain-scalar"),  # the loader's private tag
])
def test_other_tags_are_errors_at_the_tag(text: str, shown: str) -> None:
    assert errors_of(f"a: 1\nb: {text}\n") == [f"{FILE}:2:4: error: tag '{shown}' is not allowed"]


def test_standard_tags_on_the_wrong_kind_of_node_are_errors() -> None:
    assert errors_of("a: !!str [x]\nb: !!map [x]\nc: !!seq x\n") == [
        f"{FILE}:1:4: error: tag '!!str' cannot be used on a sequence",
        f"{FILE}:2:4: error: tag '!!map' cannot be used on a sequence",
        f"{FILE}:3:4: error: tag '!!seq' cannot be used on a scalar",
    ]


def test_a_tag_directive_cannot_smuggle_in_a_tag() -> None:
    assert errors_of("%TAG !e! tag:example.com,2000:\n---\na: !e!x y\n") == [
        f"{FILE}:3:4: error: tag 'tag:example.com,2000:x' is not allowed"]


# --------------------------------------------------------------------------- anchors and merges


def test_a_pipeline_with_anchors_and_merges_loads() -> None:
    data = data_of(PIPELINE)
    jobs = data["jobs"]  # type: ignore[index]
    assert jobs["build"] == {"image": "python:3.11", "timeout": 600,
                             "steps": [{"name": "compile", "script": ["make", "make test"]}]}
    assert jobs["test"]["timeout"] == 900
    assert jobs["test"]["retry_count"] == 2
    pytest_step = {"name": "pytest", "script": ["pytest -q", 'echo "done"\n']}
    assert jobs["test"]["steps"] == [pytest_step, pytest_step]


def test_aliases_are_copies_not_shared_objects() -> None:
    data = data_of("a: &x {k: [1]}\nb: *x\n")
    assert data["a"] == data["b"]  # type: ignore[index]
    data["b"]["k"].append(2)  # type: ignore[index]
    assert data["a"] == {"k": [1]}  # type: ignore[index]


def test_explicit_keys_win_over_merged_ones_wherever_they_are_written() -> None:
    text = "d: &d {a: 1, b: 1, c: 1}\nm:\n  a: 0\n  <<: *d\n  c: 2\n"
    assert data_of(text)["m"] == {"a": 0, "b": 1, "c": 2}  # type: ignore[index]


def test_earlier_merge_sources_win_and_merged_keys_sit_where_the_merge_is() -> None:
    text = ("a: &a {x: a, y: a}\nb: &b {y: b, z: b}\n"
            "m:\n  first: 0\n  <<: [*a, *b, {w: inline}]\n  last: 0\n")
    merged = data_of(text)["m"]  # type: ignore[index]
    assert merged == {"first": 0, "x": "a", "y": "a", "z": "b", "w": "inline", "last": 0}
    assert list(merged) == ["first", "x", "y", "z", "w", "last"]


def test_merges_apply_inside_merge_sources() -> None:
    text = "a: &a {x: 1, y: 1}\nb: &b {<<: *a, y: 2}\nm: {<<: *b, z: 3}\n"
    assert data_of(text)["m"] == {"x": 1, "y": 2, "z": 3}  # type: ignore[index]


def test_a_quoted_merge_key_is_an_ordinary_key() -> None:
    assert data_of("m: {'<<': {a: 1}}\n") == {"m": {"<<": {"a": 1}}}


@pytest.mark.parametrize("text, position", [
    ("m:\n  <<: 3\n", "2:7"),
    ("s: &s x\nm:\n  <<: *s\n", "3:7"),
    ("m:\n  <<: [{a: 1}, [b]]\n", "2:16"),
])
def test_merging_something_else_than_mappings_is_an_error(text: str, position: str) -> None:
    assert errors_of(text) == [
        f"{FILE}:{position}: error: a merge key '<<' takes a mapping or a list of mappings"]


def test_undefined_alias_is_an_error_naming_it() -> None:
    assert errors_of("a: 1\nb: *nope\n") == [
        f"{FILE}:2:4: error: undefined alias '*nope' "
        "(an anchor must be defined before its aliases)"]


def test_redefined_anchor_is_an_error() -> None:
    assert errors_of("a: &x 1\nb: &x 2\n") == [
        f"{FILE}:2:4: error: duplicate anchor '&x' (first defined at line 1)"]


@pytest.mark.parametrize("text, position", [
    ("a: &a [1, *a]\n", "1:11"),
    ("a: &a {k: *a}\n", "1:11"),
    ("a: &a\n  <<: *a\n", "2:7"),
])
def test_recursive_aliases_are_errors(text: str, position: str) -> None:
    assert errors_of(text) == [
        f"{FILE}:{position}: error: alias '*a' is recursive: it is used inside its own anchor"]


def test_copying_an_anchor_that_holds_a_recursive_alias_is_an_error_too() -> None:
    assert errors_of("a: &a [*a]\nb: *a\n") == [
        f"{FILE}:1:8: error: alias '*a' is recursive: it is used inside its own anchor",
        f"{FILE}:2:4: error: alias '*a' refers to an anchor that contains a recursive alias",
    ]


def test_a_problem_inside_an_anchor_is_reported_once_where_it_is_written() -> None:
    assert errors_of("a: &a [!!binary x]\nb: *a\nc: [*a, *a]\n") == [
        f"{FILE}:1:8: error: tag '!!binary' is not allowed"]


# --------------------------------------------------------------------------- mapping keys


def test_duplicate_key_is_an_error_at_the_second_naming_the_first() -> None:
    text = "name: x\njobs:\n  build: {steps: []}\n  test: {}\n  build: {}\n"
    assert errors_of(text) == [
        f"{FILE}:5:3: error: duplicate key 'build' (first defined at line 3)"]


def test_duplicate_keys_in_flow_mappings_and_anchors_are_errors() -> None:
    assert errors_of("a: {b: 1, b: 2}\n") == [
        f"{FILE}:1:11: error: duplicate key 'b' (first defined at line 1)"]
    assert errors_of("d: &d\n  k: 1\n  k: 2\nuse: *d\n") == [
        f"{FILE}:3:3: error: duplicate key 'k' (first defined at line 2)"]


def test_keys_that_are_equal_values_are_duplicates() -> None:
    assert errors_of("1: a\n0x1: b\n") == [
        f"{FILE}:2:1: error: duplicate key '1' (first defined at line 1)"]


def test_non_scalar_keys_are_errors() -> None:
    assert errors_of("a: 1\n? [b]\n: 2\n? {c: 1}\n: 3\n") == [
        f"{FILE}:2:3: error: a mapping key must be a scalar, not a sequence",
        f"{FILE}:4:3: error: a mapping key must be a scalar, not a mapping",
    ]


def test_every_error_is_reported_in_one_pass() -> None:
    text = "a: 1\na: 2\nb: !!binary x\nc: {d: 1, d: 2}\n"
    assert errors_of(text) == [
        f"{FILE}:2:1: error: duplicate key 'a' (first defined at line 1)",
        f"{FILE}:3:4: error: tag '!!binary' is not allowed",
        f"{FILE}:4:11: error: duplicate key 'd' (first defined at line 4)",
    ]


# --------------------------------------------------------------------------- documents and syntax


# libyaml's own words follow "invalid YAML: " and differ between libyaml versions, so
# only the position and Conveyor's prefix are asserted.
@pytest.mark.parametrize("text, position", [
    ("a: b: c\n", "1:5"),
    ("key: [1, 2\nother: 3\n", "2:6"),
    ("a:\n  - x\n - y\n", "3:2"),
    ("a: 'open\n", "2:1"),
])
def test_syntax_errors_point_at_libyamls_problem(text: str, position: str) -> None:
    errors = errors_of(text)
    assert len(errors) == 1
    assert errors[0].startswith(f"{FILE}:{position}: error: invalid YAML: ")


def test_a_syntax_error_at_the_end_of_a_file_without_a_final_line_break_is_on_its_last_line(
) -> None:
    errors = errors_of("a: [1,\n   ")
    assert len(errors) == 1
    assert errors[0].startswith(f"{FILE}:2:4: error: invalid YAML: ")


@pytest.mark.parametrize("text, expected", [
    ("a:\n\t- b\n", "2:1: error: a tab character cannot indent a line"),
    ("a: 1\n\t\nb: 2\n", "2:1: error: a tab character cannot indent a line"),
    ("a: |\n \tx\n", "2:2: error: a tab character cannot indent the text of a block scalar"),
    ("%FOO bar\n--- x\n", "1:1: error: directive '%FOO' is not supported"),
    ("%YAML 1.3\n--- x\n", "1:1: error: YAML version 1.3 is not supported"),
])
def test_syntax_errors_with_a_known_cause_are_in_conveyors_words(text: str,
                                                                 expected: str) -> None:
    errors = errors_of(text)
    assert len(errors) == 1
    assert errors[0].startswith(f"{FILE}:{expected} (")


# What libyaml reads differently from YAML 1.2 is refused, never loaded as other data.
@pytest.mark.parametrize("text, expected", [
    ('key: "value"# note\n', "1:13: error: a comment must follow a space or a tab"),
    ("list: [a, b]#note\n", "1:13: error: a comment must follow a space or a tab"),
    ("text: >#note\n  x\n", "1:8: error: a comment must follow a space or a tab"),
    ("key: &an:chor value\n", "1:6: error: anchor name '&an:chor' is not supported"),
    ("a: &a 1\nb: [*a:x]\n", "2:5: error: alias name '*a:x' is not supported"),
    ("{ ?foo: bar }\n", "1:3: error: '?foo' in a flow collection must be quoted"),
    ("list: [-]\n", "1:8: error: '-' alone is not a plain scalar"),
    ("[a, {?: b}]\n", "1:6: error: '?' in a flow collection must be quoted"),
    ("flow: [a,\nb]\n", "2:1: error: this line must be indented by at least 1 space"),
    ('- key: "a\n  b"\n', "2:3: error: this line must be indented by at least 3 spaces"),
    ("a: [\n\tx]\n", "2:1: error: a tab character cannot indent a line"),
    ("a: >\n \n   \n  \n # x\n", "3:1: error: this empty line has 3 spaces, more than the 1"),
])
def test_what_libyaml_misreads_is_an_error(text: str, expected: str) -> None:
    errors = errors_of(text)
    assert len(errors) == 1
    assert errors[0].startswith(f"{FILE}:{expected}")


@pytest.mark.parametrize("text, expected", [
    ("url: http://x/#top # a comment\n", {"url": "http://x/#top"}),
    ("s: 'a#b'\n", {"s": "a#b"}),
    ("[a, {? b: c}]\n", ["a", {"b": "c"}]),
    ("k: &a-b_1 x\nv: *a-b_1\n", {"k": "x", "v": "x"}),
    ("{-: x, a: -y}\n", {"-": "x", "a": "-y"}),
    ("- key: [a,\n    b]\n", [{"key": ["a", "b"]}]),
    ("key:\n  [a,\n  b]\n", {"key": ["a", "b"]}),
    ("[a,\nb]\n", ["a", "b"]),  # at the root nothing needs indenting
    ("a: >\n\n  x\n", {"a": "\nx\n"}),
])
def test_the_checks_leave_valid_yaml_alone(text: str, expected: object) -> None:
    assert data_of(text) == expected


def test_the_non_specific_tag_makes_a_scalar_a_string() -> None:
    assert data_of("- ! 12\n- ! true\n- &a ! 1.5\n- ! &b ~\n- !\n") == [
        "12", "true", "1.5", "~", ""]


def test_a_last_line_of_blanks_without_a_line_break_counts() -> None:
    assert data_of("foo: |\n  x\n   ") == {"foo": "x\n \n"}
    assert data_of("- |+\n   ") == ["\n"]
    assert data_of("foo: |\n  x") == {"foo": "x"}  # a last line with text is left alone


def test_more_than_one_document_is_an_error_where_the_second_starts() -> None:
    assert errors_of("a: 1\n---\nb: 2\n") == [
        f"{FILE}:2:1: error: expected one YAML document (a second document starts here)"]


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", b""])
def test_a_file_without_a_document_is_an_error(text: str | bytes) -> None:
    assert errors_of(text) == [
        f"{FILE}:1:1: error: expected one YAML document, but the file has none"]


def test_an_explicit_empty_document_is_null() -> None:
    assert data_of("---\n") is None


# --------------------------------------------------------------------------- text and bytes


def test_bytes_are_utf8_with_an_optional_bom() -> None:
    assert data_of("a: é\n".encode()) == {"a": "é"}
    loaded, _ = load(b"\xef\xbb\xbfa: 1\nb: x\n")
    assert loaded is not None and loaded.data == {"a": 1, "b": "x"}
    assert loaded.source_map.value(("b",)) == Position(2, 4)


def test_invalid_utf8_is_an_error_at_the_bad_byte() -> None:
    assert errors_of(b"a: 1\nb: caf\xe9\n") == [
        f"{FILE}:2:7: error: the file is not valid UTF-8 "
        "(byte 0xe9 at offset 11: invalid continuation byte)"]


@pytest.mark.parametrize("text, expected", [
    ("a: 1\nb: \x07\n", "2:4: error: character U+0007 is not allowed in a YAML file"),
    ("a: '\x00'\n", "1:5: error: character U+0000 is not allowed in a YAML file"),
    ("a: \ud800\n", "1:4: error: character U+D800 is not allowed in a YAML file"),
])
def test_characters_yaml_forbids_are_errors(text: str, expected: str) -> None:
    assert errors_of(text) == [f"{FILE}:{expected}"]


def test_crlf_line_ends_and_wide_characters_keep_positions_right() -> None:
    loaded, _ = load("é: ü\r\nkey: [x, 日本, y]\r\n")
    assert loaded is not None
    assert loaded.source_map.value(("key", 2)) == Position(2, 14)


# --------------------------------------------------------------------------- limits


def test_billion_laughs_is_rejected_fast_with_one_error() -> None:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    start = time.perf_counter()
    errors = errors_of("\n".join(lines) + "\n")
    assert time.perf_counter() - start < 1.0  # a guard, not a benchmark: it takes ~10 ms
    assert errors == [f"{FILE}:7:10: error: alias '*a5' expands the document to more than "
                      "1,000,000 nodes (every use of an alias is a full copy)"]


def test_node_limit_counts_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yaml_source, "MAX_NODES", 20)
    assert data_of("a: &a [1, 2, 3, 4, 5, 6, 7, 8]\nb: *a\n") is not None  # 19 values
    assert errors_of("a: &a [1, 2, 3, 4, 5, 6, 7, 8]\nb: *a\nc: *a\n") == [
        f"{FILE}:3:4: error: alias '*a' expands the document to more than 20 nodes "
        "(every use of an alias is a full copy)"]


def test_node_limit_counts_the_document_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yaml_source, "MAX_NODES", 20)
    assert errors_of("a:\n  b: [" + ", ".join(["1"] * 30) + "]\n") == [
        f"{FILE}:2:6: error: the document has more than 20 nodes"]


@pytest.mark.parametrize("opening", ["[", "{a: ", "- ", "[{a: "])
def test_very_deep_nesting_is_an_error_not_a_crash(opening: str) -> None:
    errors = errors_of(opening * 100_000 + "x")
    assert len(errors) == 1
    assert errors[0].endswith("error: the document is nested more than 200 levels deep")


class _LibyamlStoppingAtTheLastBracket:
    """Behaves like libyaml 0.2.6 (PyYAML 6.0.4 wheels) on a long line of "[": its scanner
    raises at a "[" before the composer has seen a node, in words of its own."""

    def __init__(self, text: str) -> None:
        self.text = text

    def get_single_node(self) -> None:
        index = self.text.rindex("[")
        mark = yaml.Mark("<text>", index, 0, index, None, None)
        raise yaml.scanner.ScannerError("words of some libyaml version", mark,
                                        "more words that may change", mark)


def test_libyamls_own_nesting_limit_is_reported_as_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yaml_source, "_LibyamlComposer", _LibyamlStoppingAtTheLastBracket)
    assert errors_of("[" * 1001 + "x") == [
        f"{FILE}:1:200: error: the document is nested more than 200 levels deep"]
    # The same error at a "[" that is not that deep stays a syntax error.
    assert errors_of("a: [b, c\n") == [f"{FILE}:1:4: error: invalid YAML: more words that may "
                                       "change (words of some libyaml version)"]


def test_nesting_limit_is_200_levels() -> None:
    assert data_of("[" * 199 + "1" + "]" * 199) is not None  # the scalar is level 200
    assert errors_of("[" * 200 + "1" + "]" * 200) == [
        f"{FILE}:1:200: error: the document is nested more than 200 levels deep"]


def test_nesting_through_an_alias_counts_too() -> None:
    text = f"a: &deep {'[' * 150}{']' * 150}\nb: {'[' * 60}*deep{']' * 60}\n"
    assert errors_of(text) == [
        f"{FILE}:2:64: error: alias '*deep' nests the document more than 200 levels deep"]


def test_a_caller_deep_in_its_stack_gets_a_diagnostic_not_a_recursion_error() -> None:
    def nested(levels: int) -> tuple[LoadedYaml | None, Diagnostics]:
        return nested(levels - 1) if levels else load("[" * 199 + "1" + "]" * 199)

    loaded, diagnostics = nested(sys.getrecursionlimit() - 150)
    assert loaded is None
    assert [str(d) for d in diagnostics.items] == [
        f"{FILE}:1:1: error: the document is nested too deeply to load from this call stack"]


def test_input_over_10_mib_is_rejected() -> None:
    text = "a: " + "x" * (10 * 1024 * 1024)
    assert errors_of(text) == [
        f"{FILE}:1:1: error: the file is too large (10,485,763 bytes; the limit is 10 MiB)"]
    assert len(errors_of(text.encode())) == 1


# --------------------------------------------------------------------------- source map


def test_source_map_has_every_value_and_key() -> None:
    loaded, _ = load(PIPELINE)
    assert loaded is not None
    source_map = loaded.source_map
    assert source_map.value(()) == Position(1, 1)
    assert source_map.value(("jobs", "build", "steps", 0, "name")) == Position(11, 15)
    assert source_map.key(("jobs", "build", "steps", 0, "name")) == Position(11, 9)
    assert source_map.value(("jobs", "build", "steps", 0, "script", 1)) == Position(12, 24)
    assert source_map.key(("jobs", "test", "depends_on")) == Position(14, 5)
    assert source_map.value(("jobs", "test", "depends_on", 0)) == Position(14, 18)
    assert source_map.key(("jobs",)) == Position(7, 1)
    assert source_map.key(()) is None
    assert source_map.origin(("jobs", "test", "timeout")) is None


def test_copied_values_are_at_the_alias_with_their_origin_at_the_anchor() -> None:
    loaded, _ = load(PIPELINE)
    assert loaded is not None
    source_map = loaded.source_map
    # "<<: *defaults" in build, line 9: the merged keys point at the alias.
    assert source_map.value(("jobs", "build", "image")) == Position(9, 9)
    assert source_map.key(("jobs", "build", "image")) == Position(9, 9)
    assert source_map.origin(("jobs", "build", "image")) == Position(3, 10)
    # The second step is "*pytest" on line 24; its script lines come from lines 21-22.
    assert source_map.value(("jobs", "test", "steps", 1)) == Position(24, 9)
    assert source_map.value(("jobs", "test", "steps", 1, "script", 0)) == Position(24, 9)
    assert source_map.origin(("jobs", "test", "steps", 1, "script", 0)) == Position(21, 13)
    # The inline merge source is written in place, so it is its own origin.
    assert source_map.value(("jobs", "test", "retry_count")) == Position(15, 35)
    assert source_map.origin(("jobs", "test", "retry_count")) is None


@pytest.mark.parametrize("text, aliases", [
    ("a: &x 1\nb: *x\n", ["2:4"]),
    ("a: &x 1\nb: [*x, *x, 2, *x]\n", ["2:5", "2:9", "2:16"]),
    ("a: &x 1\nb:\n  # *x in a comment\n  - 1\n  - *x\n", ["5:5"]),
    ("a: &x 1\nb:\n  - - 2\n    - 3\n  - *x\n", ["5:5"]),
    ("a: &x 1\nb: {k: &y [*x, *x], *x : *x, z: *y}\n", ["2:12", "2:16", "2:21", "2:26", "2:33"]),
    ("a: &x 1\nb: !!seq &z [\n   *x]\n", ["3:4"]),
    ("a: &x 1\n? *x\n: *x\n", ["2:3", "3:3"]),
    ("a: &x 1\nb: |\n  text *x\nc: *x\n", ["4:4"]),
])
def test_alias_positions_are_found_in_any_layout(text: str, aliases: list[str]) -> None:
    loaded, _ = load(text)
    assert loaded is not None
    source_map = loaded.source_map
    paths = _paths(loaded.data)
    found = {source_map.value(p) for p in paths if source_map.origin(p) is not None}
    found |= {source_map.key(p) for p in paths if source_map.key(p) in source_map_aliases(text)}
    assert found == {Position(*map(int, at.split(":"))) for at in aliases}


def source_map_aliases(text: str) -> set[Position]:
    """Positions of every "*" in ``text`` (a superset of its aliases)."""
    return {Position(line, col + 1) for line, row in enumerate(text.splitlines(), 1)
            for col, char in enumerate(row) if char == "*"}


def test_nearest_walks_up_to_a_recorded_ancestor() -> None:
    loaded, _ = load("a:\n  b: [1, 2]\n")
    assert loaded is not None
    assert loaded.source_map.nearest(("a", "b", 7, "x")) == Position(2, 6)
    assert loaded.source_map.nearest(("missing",)) == Position(1, 1)
    assert loaded.source_map.nearest(["a", "b", 1]) == Position(2, 10)


def _paths(data: object, path: tuple = ()) -> list[tuple]:
    found = [path]
    if isinstance(data, dict):
        for key, value in data.items():
            found += _paths(value, path + (key,))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += _paths(value, path + (index,))
    return found


def test_every_node_is_in_the_source_map() -> None:
    loaded, _ = load(PIPELINE)
    assert loaded is not None
    paths = _paths(loaded.data)
    assert all(loaded.source_map.value(path) is not None for path in paths)
    assert len(loaded.source_map) == len(paths)


# --------------------------------------------------------------------------- PyYAML without libyaml


def test_a_pyyaml_without_libyaml_is_an_error_saying_how_to_fix_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # PyYAML's pure Python parser reads dozens of yaml-test-suite cases differently from
    # libyaml, so Conveyor does not fall back to it (docs/yaml.md).
    monkeypatch.setattr(yaml_source, "_LibyamlComposer", None)
    assert errors_of(PIPELINE) == [
        f"{FILE}:1:1: error: cannot read YAML: this PyYAML was built without libyaml, which "
        "Conveyor needs (reinstall it from a wheel: pip install --force-reinstall "
        "--only-binary=:all: pyyaml)"]


# --------------------------------------------------------------------------- agreement with PyYAML


def _pipeline_text(jobs: int) -> str:
    """A valid pipeline of about 30 lines per job, with the usual anchors and merges."""
    lines = ["name: big", "global_env:", "  CI: true", ".defaults: &defaults",
             "  image: python:3.11", "  timeout: 600", "jobs:"]
    for i in range(jobs):
        lines += [
            f"  job-{i}:",
            "    <<: *defaults" if i % 10 == 0 else "    image: ubuntu:20.04",
            f"    depends_on: [job-{i - 1}]" if i else "    depends_on: []",
            "    retry_count: 2",
            "    allow_failure: false",
            "    environment:",
            f"      JOB_INDEX: {i}",
            "      MODE: 'release'",
            "      RATIO: 0.5",
            "    artifacts:",
            "      paths:",
            "        - dist/*.whl",
            "        - build/**/*.log",
            "      expire_in: 7d",
            "    steps:",
            "      - name: checkout",
            "        action: noop",
            "      - name: build",
            "        script:",
            "          - echo building",
            f"          - make -j4 TARGET={i}",
            "          - ls -la dist",
            "        timeout: 900",
            "        continue_on_failure: false",
            "      - name: test",
            "        script:",
            "          - pytest -q",
            "          - echo \"done $CI\"",
            "        environment:",
            "          PYTHONHASHSEED: 0",
        ]
    return "\n".join(lines) + "\n"


def test_matches_pyyaml_where_yaml_1_1_and_1_2_agree() -> None:
    text = _pipeline_text(30)
    assert data_of(text) == yaml.safe_load(text)


@pytest.mark.slow
def test_a_2000_job_file_loads_much_faster_than_pure_python_safe_load() -> None:
    text = _pipeline_text(2000)  # ~60k lines
    start = time.perf_counter()
    loaded, _ = load(text)
    ours = time.perf_counter() - start
    start = time.perf_counter()
    reference = yaml.load(text, Loader=yaml.SafeLoader)
    theirs = time.perf_counter() - start
    assert loaded is not None and loaded.data == reference
    assert ours * 3 < theirs, f"load_yaml {ours:.2f}s vs pure Python safe_load {theirs:.2f}s"


# --------------------------------------------------------------------------- properties


def _assert_data_or_diagnostics(text: str | bytes) -> None:
    loaded, diagnostics = load(text)
    if loaded is None:
        assert diagnostics.has_errors
        assert all(d.position.line >= 1 and d.position.col >= 1 for d in diagnostics.items)
    else:
        assert diagnostics.items == []


_TOKENS = ["[", "]", "{", "}", ", ", ": ", "- ", "? ", "&a ", "*a", "&b ", "*b", "<<: ",
           "!!str ", "!!int ", "!!binary ", "!x ", "'", '"', "|\n", ">\n", "# c", "\n",
           "  ", "---\n", "...\n", "%YAML 1.2\n", "\t", "key", "1", "~", ".inf", "\\",
           "\ufeff", "\u2028", "\r", "é"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=80) | st.lists(st.sampled_from(_TOKENS), max_size=40).map("".join))
def test_random_text_ends_in_data_or_diagnostics(text: str) -> None:
    _assert_data_or_diagnostics(text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_pipeline_bytes_end_in_data_or_diagnostics(data: st.DataObject) -> None:
    raw = bytearray(PIPELINE.encode())
    for _ in range(data.draw(st.integers(1, 5))):
        index = data.draw(st.integers(0, len(raw) - 1))
        action = data.draw(st.sampled_from(["replace", "delete", "insert"]))
        if action == "replace":
            raw[index] = data.draw(st.integers(0, 255))
        elif action == "delete":
            del raw[index]
        else:
            raw[index:index] = data.draw(st.binary(min_size=1, max_size=4))
    _assert_data_or_diagnostics(bytes(raw))


# Strings PyYAML's YAML 1.1 dumper leaves unquoted but YAML 1.2 reads as another type
# (e.g. "1e3", "0o17"); real users do not produce them with safe_dump's help.
_CORE_NON_STRING = re.compile(
    r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|0o[0-7]+|0x[0-9a-fA-F]+"
    r"|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)")
_texts = st.text(max_size=20).filter(lambda s: not _CORE_NON_STRING.fullmatch(s))
_scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _texts)
_documents = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(_texts | st.integers(), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_documents, st.booleans())
def test_safe_dump_round_trips(document: object, flow: bool) -> None:
    text = yaml.safe_dump(document, sort_keys=False, default_flow_style=flow)
    assert data_of(text) == document
