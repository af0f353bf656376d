"""Parser: the precedence table, the tree it builds, error messages, unparse."""
import pickle

import pytest

from shared.expressions import ExpressionError, parse, referenced_jobs, unparse
from shared.expressions.parser import (
    MAX_DEPTH,
    Boolean,
    Call,
    Compare,
    Index,
    Logical,
    Not,
    Null,
    Number,
    Property,
    Root,
    String,
)

a, b, c = Root("a"), Root("b"), Root("c")


# One test per precedence level, lowest first: || < && < == != < relational/in < ! < postfix.

def test_and_binds_tighter_than_or():
    assert parse("a || b && c") == Logical("||", (a, Logical("&&", (b, c))))
    assert parse("a && b || c") == Logical("||", (Logical("&&", (a, b)), c))


def test_equality_binds_tighter_than_and():
    assert parse("a == b && c") == Logical("&&", (Compare("==", a, b), c))
    assert parse("a && b != c") == Logical("&&", (a, Compare("!=", b, c)))


def test_relational_binds_tighter_than_equality():
    assert parse("a < b == c") == Compare("==", Compare("<", a, b), c)
    assert parse("a == b in c") == Compare("==", a, Compare("in", b, c))


@pytest.mark.parametrize("op", ["<", "<=", ">", ">=", "in"])
def test_relational_operators_are_left_associative(op):
    assert parse(f"a {op} b {op} c") == Compare(op, Compare(op, a, b), c)


def test_not_binds_tighter_than_comparison():
    assert parse("!a == b") == Compare("==", Not(a), b)
    assert parse("!a < b") == Compare("<", Not(a), b)


def test_postfix_binds_tighter_than_not():
    assert parse("!a.b") == Not(Property(a, "b"))
    assert parse("!a[0]") == Not(Index(a, Number(0)))
    assert parse("!always()") == Not(Call("always"))


def test_parentheses_override_precedence():
    assert parse("(a || b) && c") == Logical("&&", (Logical("||", (a, b)), c))
    assert parse("!(a == b)") == Not(Compare("==", a, b))


def test_logical_chains_stay_flat():
    tree = parse(" && ".join(["a"] * 500))
    assert tree == Logical("&&", (a,) * 500)


def test_literals():
    assert parse("'x'") == String("x")
    assert parse("1.5") == Number(1.5)
    assert parse("true") == Boolean(True)
    assert parse("null") == Null()
    assert parse("1") != parse("true")  # 1 == True in Python; not in the tree


def test_postfix_chains_and_index_syntax():
    assert parse("jobs['test[PY=3.11]'].status") == Property(
        Index(Root("jobs"), String("test[PY=3.11]")), "status"
    )
    assert parse("env['A-B']") == Index(Root("env"), String("A-B"))
    assert parse("fromJSON(env.X)[0].name") == Property(
        Index(Call("fromJSON", (Property(Root("env"), "X"),)), Number(0)), "name"
    )


def test_calls():
    assert parse("format('{0}', a, b)") == Call("format", (String("{0}"), a, b))
    assert parse("success()") == Call("success")


def test_offsets_are_kept_but_do_not_affect_equality():
    tree = parse("env.X   ==   'y'")
    assert tree == parse("env.X=='y'")
    assert tree.offset == 8  # the operator
    assert tree.right.offset == 13


def test_trees_are_hashable_and_picklable():
    tree = parse("jobs.build.status == 'success' && !cancelled()")
    assert pickle.loads(pickle.dumps(tree)) == tree
    assert hash(tree) == hash(parse("jobs.build.status=='success'&&!cancelled()"))
    assert parse("a || b") is parse("a || b")  # cached: parsing again is cheap


@pytest.mark.parametrize(
    "source, message, offset",
    [
        ("(a))", "unexpected ')' at column 4", 3),
        ("a == )", "unexpected ')' at column 6", 5),
        ("", "empty expression", 0),
        ("   ", "empty expression", 0),
        ("(a", "expected ')' to close '(' from column 1, found end of expression at column 3", 2),
        ("a[0", "expected ']' to close '[' from column 2, found end of expression at column 4", 3),
        ("a b", "unexpected name 'b' at column 3 (expected an operator", 2),
        ("contains(a b)", "expected ',' or ')' in the call to contains() at column 12, found name 'b'", 11),
        ("contains(a,)", "unexpected ')' at column 12", 11),
        ("a.b()", "unexpected '(' at column 4 (only named functions can be called", 3),
        ("a ==", "unexpected end of expression at column 5", 4),
        ("&& a", "unexpected '&&' at column 1", 0),
    ],
)
def test_syntax_errors(source, message, offset):
    with pytest.raises(ExpressionError) as caught:
        parse(source)
    assert caught.value.message.startswith(message)
    assert caught.value.offset == offset


def test_parse_rejects_non_strings():
    with pytest.raises(TypeError):
        parse(True)


def test_nesting_limit():
    parse("(" * MAX_DEPTH + "a" + ")" * MAX_DEPTH)
    with pytest.raises(ExpressionError, match="nested too deeply"):
        parse("(" * (MAX_DEPTH + 1) + "a" + ")" * (MAX_DEPTH + 1))


def test_referenced_jobs():
    tree = parse("jobs.build.status == 'success' && jobs['test[PY=3.11]'].status != 'failed' || env.jobs")
    assert referenced_jobs(tree) == {"build", "test[PY=3.11]"}
    assert referenced_jobs(parse("success() && env.X")) == set()


@pytest.mark.parametrize(
    "source",
    [
        "a || b && c",
        "(a || b) && c",
        "(a && b) && c",
        "!(a == b)",
        "!!a",
        "(a == b) == c",
        "a == (b == c)",
        "jobs['test[PY=3.11]'].status",
        "(1).x",
        "(1.5).e3",
        "'it''s \\n' in fromJSON(env.LIST)",
        "'two\nlines' == \"tab\\t\"",
        "format('{0}', -1, 2.5e-07, null, true)",
        "!-1",
    ],
)
def test_unparse_round_trips(source):
    tree = parse(source)
    assert parse(unparse(tree)) == tree
    assert str(tree) == unparse(tree)


def test_unparse_brackets_property_names_that_need_it():
    assert unparse(Property(Root("env"), "A B")) == "env['A B']"
