"""Limits: size, nesting, steps and time all end in a clean ExpressionError."""
import itertools
import pickle
import sys

import pytest

from shared.expressions import Context, ExpressionError, Limits, MAX_DEPTH, evaluate, parse
from shared.expressions.parser import Boolean, Logical, Not, Property, Root


def test_ten_thousand_open_parentheses():
    with pytest.raises(ExpressionError, match="too long"):
        parse("(" * 10_000)


def test_deep_parentheses_within_the_size_limit():
    with pytest.raises(ExpressionError) as caught:
        parse("(" * 2000 + "a" + ")" * 2000)
    assert caught.value.message.startswith("expression nested too deeply (more than 50 levels)")
    assert caught.value.offset == MAX_DEPTH


@pytest.mark.parametrize(
    "source",
    ["!" * 4000 + "a", "env" + ".a" * 2000, " == ".join(["a"] * 800), "a" + "[0]" * 1000,
     "contains(" * 400 + ")" * 400, "a" + "[a" * 2000],
    ids=["not", "property", "compare", "index", "call", "open-brackets"],
)
def test_deep_chains_without_parentheses(source):
    with pytest.raises(ExpressionError, match="nested too deeply"):
        parse(source)


def test_long_flat_chain_is_fine_under_default_budget():
    source = " && ".join(["true"] * 500)
    assert len(source) < 4096
    assert evaluate(source, Context()) is True


def test_step_budget_stops_a_long_chain():
    with pytest.raises(ExpressionError, match="more than 100 evaluation steps"):
        evaluate(" && ".join(["true"] * 500), Context(), limits=Limits(max_steps=100))


def test_step_budget_stops_a_huge_built_tree():
    huge = Logical("&&", (Boolean(True),) * 20_000)
    with pytest.raises(ExpressionError, match="more than 10000 evaluation steps"):
        evaluate(huge, Context())


def test_step_budget_counts_list_elements():
    context = Context(env={"BIG": "[" + ",".join(["1"] * 20_000) + "]"})
    with pytest.raises(ExpressionError, match="evaluation steps"):
        evaluate("contains(fromJSON(env.BIG), 2)", context)
    with pytest.raises(ExpressionError, match="evaluation steps"):
        evaluate("join(fromJSON(env.BIG))", context)


def test_deep_built_tree_is_a_clean_error_not_recursion_error():
    deep = Root("env")
    for _ in range(10_000):
        deep = Not(deep)
    with pytest.raises(ExpressionError, match="nested too deeply"):
        evaluate(deep, Context())


def test_wall_time_limit():
    ticks = itertools.count()
    slow_clock = lambda: float(next(ticks))  # every reading one second later  # noqa: E731
    with pytest.raises(ExpressionError, match="took longer than 5s"):
        evaluate(" && ".join(["true"] * 20), Context(), limits=Limits(max_seconds=5, clock=slow_clock))


def test_nested_format_cannot_blow_up_memory():
    source = "'" + "x" * 100 + "'"
    for _ in range(6):
        source = f"format('{'{0}' * 30}', {source})"
    with pytest.raises(ExpressionError, match="longer than"):
        evaluate(source, Context())


def test_parsing_from_a_deep_stack_never_raises_recursion_error():
    source = "(" * MAX_DEPTH + "env.UNIQUE_TO_THIS_TEST" + ")" * MAX_DEPTH

    def dive(levels):
        if levels:
            return dive(levels - 1)
        return parse(source)

    with pytest.raises(ExpressionError, match="nested too deeply"):
        dive(sys.getrecursionlimit() - 120)


def test_errors_survive_pickling():
    with pytest.raises(ExpressionError) as caught:
        parse("a == )")
    copy = pickle.loads(pickle.dumps(caught.value))
    assert (copy.message, copy.offset) == ("unexpected ')' at column 6", 5)


def test_property_chain_at_the_depth_limit_evaluates():
    tree = Root("env")
    for _ in range(MAX_DEPTH - 1):
        tree = Property(tree, "a")
    assert evaluate(tree, Context(env={"a": None})) is None
