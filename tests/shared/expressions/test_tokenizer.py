"""Tokenizer: literals, operators, names and the errors users hit while typing."""
import pytest

from shared.expressions import ExpressionError, end_of_embedded
from shared.expressions.tokenizer import MAX_SOURCE_LENGTH, tokenize


def kinds(source):
    return [t.kind for t in tokenize(source)]


def values(source):
    return [t.value for t in tokenize(source)[:-1]]


@pytest.mark.parametrize(
    "source, expected",
    [
        # In '...' a backslash is an ordinary character, as in GitHub; '' is a quote.
        (r"'a\\b'", r"a\\b"),
        (r"'line\nnext\ttab'", r"line\nnext\ttab"),
        (r"'C:\'", "C:\\"),
        (r"'^v\d+$'", r"^v\d+$"),
        ("'it''s'", "it's"),
        ("''", ""),
        ("'two\nlines'", "two\nlines"),
        ("'ünïcode ✓'", "ünïcode ✓"),
        # "..." (a Conveyor addition) takes backslash escapes.
        (r'"say \"hi\""', 'say "hi"'),
        (r'"line\nnext\ttab \\ \'"', "line\nnext\ttab \\ '"),
        ('"double \'single\' inside"', "double 'single' inside"),
    ],
)
def test_string_literals(source, expected):
    assert values(source) == [expected]


@pytest.mark.parametrize(
    "source, expected",
    [("0", 0), ("42", 42), ("-7", -7), ("3.25", 3.25), ("1e3", 1000.0), ("-2.5E-1", -0.25)],
)
def test_numbers(source, expected):
    [value] = values(source)
    assert value == expected and type(value) is type(expected)


def test_a_backslash_does_not_escape_the_closing_single_quote():
    assert [(t.kind, t.value) for t in tokenize(r"'C:\' == x")] == [
        ("string", "C:\\"), ("==", "=="), ("name", "x"), ("eof", None)]


def test_operators_longest_match_first():
    assert kinds("a<=b>=c==d!=e<f>g&&h||!i") == [
        "name", "<=", "name", ">=", "name", "==", "name", "!=", "name", "<", "name", ">",
        "name", "&&", "name", "||", "!", "name", "eof",
    ]


def test_keywords_and_names():
    assert kinds("true false null in x") == ["true", "false", "null", "in", "name", "eof"]


def test_names_may_contain_dashes_and_properties_may_start_with_digits():
    tokens = tokenize("jobs.build-linux.status || jobs.3d.status")
    assert [t.value for t in tokens if t.kind == "name"] == ["jobs", "build-linux", "status", "jobs", "3d", "status"]


def test_keywords_after_a_dot_are_property_names():
    assert kinds("env.in") == ["name", ".", "name", "eof"]


def test_offsets_point_into_the_source():
    assert [t.offset for t in tokenize("  a ==  'x'")] == [2, 4, 8, 11]


@pytest.mark.parametrize(
    "source, message, offset",
    [
        ("'abc", "unterminated string (opened at column 1)", 0),
        ("x == \"abc", "unterminated string (opened at column 6)", 5),
        ("\"abc\\", "unterminated string (opened at column 1)", 0),
        ("\"a\\qb\"", "unknown escape '\\q' at column 3", 2),
        ("a = b", "unexpected '=' at column 3 (did you mean '=='?)", 2),
        ("a & b", "unexpected '&' at column 3 (did you mean '&&'?)", 2),
        ("a | b", "unexpected '|' at column 3 (did you mean '||'?)", 2),
        ("a # b", "unexpected character '#' at column 3", 2),
        ("env.", "expected a property name after '.' at column 5", 4),
        ("1.2.3 == x", "invalid number '1.2.3' at column 1", 0),
        ("12abc", "invalid number '12abc' at column 1", 0),
        ("- 1", "unexpected '-' at column 1", 0),
    ],
)
def test_errors_name_the_problem_and_column(source, message, offset):
    with pytest.raises(ExpressionError) as caught:
        tokenize(source)
    assert caught.value.message.startswith(message)
    assert caught.value.offset == offset


def test_too_long_source_is_rejected():
    tokenize("'" + "x" * (MAX_SOURCE_LENGTH - 2) + "'")
    with pytest.raises(ExpressionError, match="too long"):
        tokenize("'" + "x" * (MAX_SOURCE_LENGTH - 1) + "'")


def test_non_ascii_digits_are_not_numbers():
    with pytest.raises(ExpressionError, match="unexpected"):
        tokenize("-²")


def test_end_of_embedded_skips_braces_inside_strings():
    text = "v${{ format('{{x}}', \"}}\") }}-rc"
    end = end_of_embedded(text, 4)
    assert text[end:] == "}}-rc"
    assert end_of_embedded("${{ 'it''s }}' }}", 3) == 15


def test_end_of_embedded_reads_a_backslash_in_single_quotes_as_a_character():
    single = "${{ 'C:\\' }} rest"  # the expression 'C:\'
    assert end_of_embedded(single, 3) == single.index("}} rest")
    double = '${{ "a\\"}}" }} rest'  # the expression "a\"}}"
    assert end_of_embedded(double, 3) == double.index("}} rest")


def test_end_of_embedded_without_closing_braces():
    with pytest.raises(ExpressionError, match="missing '}}'"):
        end_of_embedded("${{ env.X ", 3)
