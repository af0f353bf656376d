"""Evaluation: roots, logic, comparisons and coercions, truthiness, splicing to text."""
import math

import pytest

from shared.expressions import Context, ExpressionError, evaluate, parse, to_text, truthy

CONTEXT = Context(
    env={"N": "3", "NAME": "Main", "EMPTY": "", "A-B": "dash", "F": "2.5", "LIST": '["x", "y"]'},
    vars={"release": "yes"},
    jobs={"build": "success", "test[PY=3.11]": "failed", "3d": "skipped"},
    pipeline={"name": "demo"},
)


def ev(source, context=CONTEXT):
    return evaluate(source, context)


# -- roots ---------------------------------------------------------------------

@pytest.mark.parametrize(
    "source, expected",
    [
        ("env.N", "3"),
        ("env['A-B']", "dash"),
        ("vars.release", "yes"),
        ("pipeline.name", "demo"),
        ("jobs.build.status", "success"),
        ("jobs['test[PY=3.11]'].status", "failed"),
        ("jobs.3d.status", "skipped"),
    ],
)
def test_roots(source, expected):
    assert ev(source) == expected


@pytest.mark.parametrize(
    "source",
    ["env.MISSING", "jobs.nope.status", "jobs.build.result", "pipeline.name.deeper", "env.N.x", "env[1]",
     "vars['nope']", "fromJSON('[1]')[5]", "fromJSON('[1]')[-1]", "fromJSON('[1]')[0.5]", "null.x"],
)
def test_missing_properties_are_null(source):
    assert ev(source) is None


def test_list_index_accepts_numbers_and_numeric_strings():
    assert ev("fromJSON(env.LIST)[1]") == "y"
    assert ev("fromJSON(env.LIST)[1.0]") == "y"
    assert ev("fromJSON(env.LIST)['1']") == "y"


def test_unknown_root_is_an_error():
    with pytest.raises(ExpressionError) as caught:
        ev("env.N == 3 && secrets.TOKEN")
    assert caught.value.message.startswith("unknown name 'secrets'")
    assert caught.value.offset == 14


def test_evaluate_accepts_a_parsed_tree():
    assert evaluate(parse("env.N == 3"), CONTEXT) is True


def test_default_context_is_empty():
    assert evaluate("env.X == null && pipeline.name == null", Context()) is True


# -- logic ---------------------------------------------------------------------

@pytest.mark.parametrize(
    "source, expected",
    [
        ("'a' && 'b'", "b"),
        ("'' && 'b'", ""),
        ("0 || 'x'", "x"),
        ("null || 0", 0),
        ("'a' || env.undefined_root_never_evaluated", "a"),
        ("!''", True),
        ("!'false'", False),  # a non-empty string is true, even 'false'
        ("!!env.N", True),
    ],
)
def test_and_or_return_the_deciding_operand(source, expected):
    assert ev(source) == expected


def test_and_or_short_circuit():
    # The right operands would raise: an unknown root and invalid JSON.
    assert ev("false && nosuchroot.x") is False
    assert ev("true || fromJSON('{')") is True


@pytest.mark.parametrize(
    "value, expected",
    [(None, False), (False, False), (0, False), (0.0, False), ("", False), (math.nan, False),
     (True, True), (1, True), (-0.5, True), ("0", True), ("false", True), ([], True), ({}, True)],
)
def test_truthy(value, expected):
    assert truthy(value) is expected


# -- comparisons ---------------------------------------------------------------

@pytest.mark.parametrize(
    "source, expected",
    [
        ("env.N == 3", True),  # env values are strings; a numeric one compares as a number
        ("3 == env.N", True),
        ("env.N == 3.0", True),
        ("env.F > 2", True),
        ("env.N != 4", True),
        ("' 3 ' == 3", True),  # surrounding whitespace is ignored, as in GitHub
        ("'3abc' == 3", False),
        ("'' == 0", False),  # deliberate: GitHub says true; here '' is not a number
        ("'abc' < 3", False),
        ("1 == 1.0", True),
        ("true == 1", False),  # booleans are not numbers
        ("null == 0", False),
        ("null == null", True),
        ("null == ''", False),
        ("env.MISSING == null", True),
        ("'a' == 'a'", True),
        ("env.NAME == 'main'", False),  # case-sensitive, unlike GitHub
        ("env.NAME == 'Main'", True),
        ("'B' < 'a'", True),  # strings order by code point
        ("'abc' < 'abd'", True),
        ("'10' < '9'", True),  # two strings compare as text, even numeric-looking ones
        ("2 < 10", True),
        ("2 <= 2", True),
        ("3 >= 4", False),
        ("null < 1", False),
        ("true > false", False),
        ("fromJSON('[1,2]') == fromJSON('[1,2]')", True),
        ("fromJSON('[1,2]') == fromJSON('[1,\"2\"]')", True),
        ("fromJSON('{\"a\":1}') == fromJSON('{\"a\":1}')", True),
        ("fromJSON('{\"a\":1}') == fromJSON('{\"a\":2}')", False),
        ("fromJSON('[1]') < fromJSON('[2]')", False),
        ("fromJSON('NaN') == fromJSON('NaN')", False),
        ("fromJSON('NaN') != fromJSON('NaN')", True),
        ("fromJSON('NaN') < 1", False),
    ],
)
def test_comparisons_and_coercions(source, expected):
    assert ev(source) is expected


@pytest.mark.parametrize(
    "source, expected",
    [
        ("'x' in fromJSON(env.LIST)", True),
        ("'z' in fromJSON(env.LIST)", False),
        ("3 in fromJSON('[\"3\"]')", True),
        ("'ai' in env.NAME", True),
        ("'main' in env.NAME", False),
        ("1 in 'v1.2'", True),
        ("null in 'abc'", False),
        ("'name' in pipeline", True),
        ("'build' in jobs", True),
        ("'nope' in jobs", False),
        ("'x' in null", False),
    ],
)
def test_in_operator(source, expected):
    assert ev(source) is expected


# -- text ----------------------------------------------------------------------

@pytest.mark.parametrize(
    "value, text",
    [
        (None, ""),
        (True, "true"),
        (False, "false"),
        (3, "3"),
        (3.0, "3"),
        (-0.5, "-0.5"),
        (0.1, "0.1"),
        (1e20, "1e+20"),
        (math.nan, "NaN"),
        (math.inf, "Infinity"),
        ("text", "text"),
        (["a", 1, None, True], '["a",1,null,true]'),
        ({"k": "ü"}, '{"k":"ü"}'),
    ],
)
def test_to_text(value, text):
    assert to_text(value) == text


def test_error_offsets_point_at_the_failing_call():
    with pytest.raises(ExpressionError) as caught:
        ev("env.N == 3 && fromJSON('{') == 1")
    assert caught.value.message.startswith("fromJSON(): invalid JSON")
    assert caught.value.offset == 14
