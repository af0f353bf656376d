"""check(): what validation reports without running anything; conditions in ${{ }}."""
import pytest

from shared.expressions import (
    TEMPLATE_ROOTS,
    Context,
    check,
    condition_met,
    parse,
    parse_condition,
)


def messages(source, **kwargs):
    return [(e.message, e.offset) for e in check(source, **kwargs)]


def test_valid_conditions_have_no_errors():
    assert check("success() && jobs.build.status == 'success' && env.X != vars.Y") == []
    assert check("always() || pipeline.name == 'x' || contains(fromJSON(env.L), 'a')") == []
    assert check("format('v{0}', env.V)", roots=TEMPLATE_ROOTS, status_functions=False) == []


def test_syntax_error_is_the_only_error():
    assert messages("sucess() && (a") == [("expected ')' to close '(' from column 13, found end of expression at column 15", 14)]


def test_reports_every_problem_in_source_order():
    assert messages("sucess() && foo.x && contains(1) && jobs.b.stauts") == [
        ("unknown function 'sucess' (did you mean 'success'?)", 0),
        ("unknown name 'foo' (names are env, git, jobs, pipeline, vars; quote text like 'foo')", 12),
        ("contains() takes 2 arguments, got 1 (usage: contains(a, b))", 21),
        ("a job has no property 'stauts' (did you mean 'status'?)", 43),
    ]


def test_unknown_name_suggests_a_close_root_or_literal():
    assert messages("evn.X") == [("unknown name 'evn' (did you mean 'env'?)", 0)]
    assert messages("True") == [("unknown name 'True' (did you mean 'true'?)", 0)]


def test_template_strings_cannot_use_job_results_or_status_functions():
    assert messages("success() && jobs.build.status == 'success'", roots=TEMPLATE_ROOTS, status_functions=False) == [
        ("success() can only be used in a job's 'conditional'", 0),
        ("'jobs' is not available here (a job's result is only known in its 'conditional')", 13),
    ]


def test_literal_format_templates_are_checked():
    assert messages("format('{0}-{1}', env.A)") == [
        ("format(): placeholder {1} needs argument 1, but the template is followed by only 1 argument", 7)
    ]
    assert messages("format('{oops}', env.A)")[0][0].startswith("format(): '{' at position 0")


def test_errors_are_expression_errors_with_offsets():
    [error] = check("env.X == foo")
    assert (error.message, error.offset) == (
        "unknown name 'foo' (names are env, git, jobs, pipeline, vars; quote text like 'foo')", 9)
    assert str(error) == error.message


def test_comparing_a_job_status_with_a_non_status_is_an_error():
    assert messages("jobs.build.status == 'succeeded'") == [
        ("'succeeded' is not a job status (did you mean 'success'?)", 21)]
    assert messages("'ok' != jobs['test[PY=3.11]'].status")[0][0].startswith(
        "'ok' is not a job status (statuses: pending, running")
    assert check("jobs.build.status == 'skipped' || jobs.x.status != env.S") == []


# -- conditions wrapped in ${{ }} ---------------------------------------------------


@pytest.mark.parametrize(
    "wrapped, bare",
    [
        ("${{ env.A == 'x' }}", "env.A == 'x'"),
        ("  ${{always()}}  ", "always()"),
        ("${{ format('{{0}}') == '}}' }}", "format('{{0}}') == '}}'"),
        ("${{\n  failure() && jobs.build.status == 'failed'\n}}", "failure() && jobs.build.status == 'failed'"),
    ],
)
def test_a_condition_wrapped_whole_in_dollar_braces_is_the_same_condition(wrapped, bare):
    assert parse_condition(wrapped) == parse(bare)
    assert check(wrapped, condition=True) == []
    context = Context(env={"A": "x"}, jobs={"build": "failed"},
                      dependency_results={"build": ("failed", False)})
    assert condition_met(wrapped, context) is condition_met(bare, context)


def test_a_wrapped_condition_keeps_the_implicit_success():
    failed = Context(env={"A": "x"}, dependency_results={"build": ("failed", False)})
    assert condition_met("${{ env.A == 'x' }}", failed) is False
    assert condition_met("${{ always() && env.A == 'x' }}", failed) is True


@pytest.mark.parametrize(
    "source, message, offset",
    [
        # Columns count in the condition as written, wrapper included.
        ("${{ env.A == }}", "unexpected end of expression at column 14", 13),
        ("${{ nope }}", "unknown name 'nope'", 4),
        ("${{ env.A }} && ${{ env.B }}", "unexpected text after the '}}' that closes '${{' at column 14", 13),
        ("${{ env.A == 'x'", "missing '}}' to close '${{'", 0),
    ],
)
def test_wrapped_condition_errors_point_into_the_written_text(source, message, offset):
    [error] = check(source, condition=True)
    assert error.message.startswith(message)
    assert error.offset == offset


def test_outside_conditions_dollar_braces_are_not_an_expression():
    # ${{ }} is how a string embeds an expression; inside an expression it is an error.
    assert check("${{ env.A }}")[0].message == "unexpected character '$' at column 1"
