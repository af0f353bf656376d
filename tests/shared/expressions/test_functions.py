"""Built-in functions, one group each, and the status functions."""
import json

import pytest

from shared.expressions import Context, ExpressionError, condition_met, evaluate

CONTEXT = Context(env={"LIST": '["a", "b", 3]', "V": "1.2", "BR": "refs/heads/main"})


def ev(source, context=CONTEXT):
    return evaluate(source, context)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("contains(fromJSON(env.LIST), 'a')", True),
        ("contains(fromJSON(env.LIST), '3')", True),
        ("contains(fromJSON(env.LIST), 'c')", False),
        ("contains(env.BR, 'heads')", True),
        ("contains(env.BR, 'HEADS')", False),
        ("contains(env.V, 2)", True),
        ("contains(fromJSON('{\"k\": 1}'), 'k')", True),
        ("contains(null, 'x')", False),
    ],
)
def test_contains(source, expected):
    assert ev(source) is expected


@pytest.mark.parametrize(
    "source, expected",
    [
        ("startsWith(env.BR, 'refs/heads/')", True),
        ("startsWith(env.BR, 'refs/tags/')", False),
        ("startsWith(env.BR, 'REFS')", False),
        ("endsWith(env.BR, '/main')", True),
        ("endsWith(env.BR, 'master')", False),
        ("startsWith(12.5, 12)", True),
        ("startsWith(fromJSON(env.LIST), 'a')", False),
        ("endsWith(env.MISSING, '')", True),
    ],
)
def test_starts_and_ends_with(source, expected):
    assert ev(source) is expected


@pytest.mark.parametrize(
    "source, expected",
    [
        ("join(fromJSON(env.LIST))", "a,b,3"),
        ("join(fromJSON(env.LIST), ' | ')", "a | b | 3"),
        ("join(fromJSON('[]'), '-')", ""),
        ("join(fromJSON('[null, true, 1.0]'), ' ')", " true 1"),
        ("join('already text', '-')", "already text"),
        ("join(null)", ""),
        # As in GitHub: a separator is converted to text, except a list or a map, which
        # is ignored; a map joins to nothing.
        ("join(fromJSON('[1, 2]'), 0)", "102"),
        ("join(fromJSON('[1, 2]'), true)", "1true2"),
        ("join(fromJSON('[1, 2]'), null)", "12"),
        ("join(fromJSON('[1, 2]'), fromJSON('[\"x\"]'))", "1,2"),
        ("join(fromJSON('[1, 2]'), fromJSON('{}'))", "1,2"),
        ("join(fromJSON('{\"a\": 1}'))", ""),
    ],
)
def test_join(source, expected):
    assert ev(source) == expected


@pytest.mark.parametrize(
    "source, expected",
    [
        ("case(true, 'a', 'b')", "a"),
        ("case(false, 'a', 'b')", "b"),
        ("case(false, 'a', 1 == 1, 2, 'c')", 2),
        ("case(env.BR == 'refs/heads/main', 'prod', 'dev')", "prod"),
        ("case(false, 'a', false, 'b', fromJSON('[1]'))", [1]),
    ],
)
def test_case_gives_the_value_after_the_first_true_condition(source, expected):
    assert ev(source) == expected


@pytest.mark.parametrize(
    "source, message",
    [
        ("case(true, 'a')", "case() takes at least 3 arguments, got 2"),
        ("case(true, 'a', false, 'b')", "case() takes an odd number of arguments, got 4"),
        ("case('yes', 'a', 'b')", "case(): argument 1 is a condition and must be true or false, "
                                  "got string"),
        ("case(false, 'a', null, 'b', 'c')", "case(): argument 3 is a condition"),
    ],
)
def test_case_errors(source, message):
    with pytest.raises(ExpressionError) as caught:
        ev(source)
    assert caught.value.message.startswith(message)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("format('v{0}.{1}', 1, 2)", "v1.2"),
        ("format('{1}-{0}-{1}', 'a', 'b')", "b-a-b"),
        ("format('{{literal}} {0}', 'x')", "{literal} x"),
        ("format('{{{0}}}', 'x')", "{x}"),
        ("format('no placeholders')", "no placeholders"),
        ("format('{0}|{1}|{2}', null, true, fromJSON('[1]'))", "|true|[1]"),
    ],
)
def test_format(source, expected):
    assert ev(source) == expected


@pytest.mark.parametrize(
    "source, message",
    [
        ("format('{1}', 'a')", "format(): placeholder {1} needs argument 1"),
        ("format('{x}', 'a')", "format(): '{' at position 0 does not start a placeholder"),
        ("format('{0', 'a')", "format(): '{' at position 0 does not start a placeholder"),
        ("format('a}', 'a')", "format(): unmatched '}' at position 1"),
    ],
)
def test_format_errors(source, message):
    with pytest.raises(ExpressionError) as caught:
        ev(source)
    assert caught.value.message.startswith(message)


def test_from_json_and_to_json():
    assert ev("fromJSON('{\"a\": [1, 2.5, null, true]}')") == {"a": [1, 2.5, None, True]}
    assert ev("fromJSON('true') && fromJSON('1') == 1") is True
    assert ev("toJSON(fromJSON('{\"a\": [1, \"x\"]}'))") == '{"a":[1,"x"]}'
    assert ev("toJSON('say \"hi\"')") == '"say \\"hi\\""'
    assert ev("toJSON(null)") == "null"


@pytest.mark.parametrize(
    "source, expected",
    [
        ("toJSON(fromJSON('NaN'))", "null"),
        ("toJSON(fromJSON('[NaN, Infinity, -Infinity, 1.5]'))", "[null,null,null,1.5]"),
        ("toJSON(fromJSON('{\"a\": {\"b\": NaN}}'))", '{"a":{"b":null}}'),
        ("format('{0}', fromJSON('[NaN]'))", "[null]"),
    ],
)
def test_to_json_writes_nan_and_infinities_as_null_so_the_text_is_json(source, expected):
    text = ev(source)
    assert text == expected
    json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in {text}"))


@pytest.mark.parametrize(
    "source, message",
    [
        ("fromJSON('{')", "fromJSON(): invalid JSON"),
        ("fromJSON(1)", "fromJSON() needs a string, got number"),
        ("fromJSON(env.MISSING)", "fromJSON() needs a string, got null"),
        ("fromJSON('" + "[" * 60 + "]" * 60 + "')", "fromJSON(): JSON nested deeper than"),
        ("fromJSON('" + "[" * 2000 + "')", "fromJSON()"),
    ],
)
def test_from_json_errors(source, message):
    with pytest.raises(ExpressionError) as caught:
        ev(source)
    assert caught.value.message.startswith(message)


@pytest.mark.parametrize(
    "source, message",
    [
        ("contains('a')", "contains() takes 2 arguments, got 1"),
        ("startsWith('a', 'b', 'c')", "startsWith() takes 2 arguments, got 3"),
        ("join()", "join() takes 1 or 2 arguments, got 0"),
        ("format()", "format() takes at least 1 argument, got 0"),
        ("success(1)", "success() takes no arguments, got 1"),
        ("sucess()", "unknown function 'sucess' (did you mean 'success'?)"),
        ("startswith('a', 'b')", "unknown function 'startswith' (did you mean 'startsWith'?)"),
        ("frobnicate()", "unknown function 'frobnicate' (functions: always, cancelled"),
    ],
)
def test_wrong_arity_and_unknown_functions_are_errors(source, message):
    with pytest.raises(ExpressionError) as caught:
        ev(source)
    assert caught.value.message.startswith(message)


# -- status functions ------------------------------------------------------------

def status(deps, cancelled=False):
    context = Context(dependency_results=deps, run_cancelled=cancelled)
    return {name: evaluate(f"{name}()", context) for name in ("success", "failure", "cancelled", "always")}


def test_status_all_dependencies_succeeded():
    assert status({"a": ("success", False), "b": ("success", True)}) == {
        "success": True, "failure": False, "cancelled": False, "always": True}


def test_status_without_dependencies():
    assert status({}) == {"success": True, "failure": False, "cancelled": False, "always": True}


def test_status_failure_allowed_counts_as_success():
    assert status({"a": ("success", False), "lint": ("failed", True)}) == {
        "success": True, "failure": False, "cancelled": False, "always": True}


def test_status_a_dependency_failed():
    assert status({"a": ("success", False), "b": ("failed", False)}) == {
        "success": False, "failure": True, "cancelled": False, "always": True}


@pytest.mark.parametrize("other", ["skipped", "cancelled"])
def test_status_skipped_or_cancelled_dependency_is_neither_success_nor_failure(other):
    assert status({"a": ("success", False), "b": (other, False)}) == {
        "success": False, "failure": False, "cancelled": False, "always": True}


def test_status_run_cancelled():
    assert status({"a": ("success", False)}, cancelled=True) == {
        "success": False, "failure": False, "cancelled": True, "always": True}


def test_condition_without_status_function_implies_success():
    ok = Context(env={"DEPLOY": "yes"}, dependency_results={"build": ("success", False)})
    failed = Context(env={"DEPLOY": "yes"}, dependency_results={"build": ("failed", False)})
    assert condition_met("env.DEPLOY == 'yes'", ok) is True
    assert condition_met("env.DEPLOY == 'yes'", failed) is False
    assert condition_met("always() && env.DEPLOY == 'yes'", failed) is True
    assert condition_met("failure()", failed) is True
    assert condition_met("success()", failed) is False
    assert condition_met("env.DEPLOY == 'no'", ok) is False
