"""Property tests: arbitrary text only ever fails with ExpressionError, and printed
trees parse back to themselves."""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.expressions import FUNCTIONS, Context, ExpressionError, check, evaluate, parse, unparse
from shared.expressions.parser import (
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
from shared.expressions.tokenizer import KEYWORDS

CONTEXT = Context(
    env={"A": "1", "L": '["x", 2, {"k": null}]', "J": '{"a": [1, 2]}'},
    vars={"v": "text"},
    jobs={"build": "success"},
    pipeline={"name": "p"},
    dependency_results={"build": ("failed", True)},
)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Drawing trees costs most of the time here; 100 examples keep the file fast.
TREE_SETTINGS = settings(SETTINGS, max_examples=100)

expression_chars = st.sampled_from(list("()[].,!=<>&|'\"\\ \n{}-_eE019xa") + ["env", "jobs", "in", "true", "null",
                                                                            "fromJSON(", "format(", "'{0}'"])
texts = st.one_of(st.text(max_size=80), st.lists(expression_chars, max_size=40).map("".join))


@SETTINGS
@given(texts)
def test_random_text_only_raises_expression_error(source):
    for attempt in (parse, check, lambda s: evaluate(s, CONTEXT)):
        try:
            attempt(source)
        except ExpressionError as error:
            assert isinstance(error.offset, int) and 0 <= error.offset <= len(source)


LETTERS = "abcxyzABZ_"
DIGITS = "019"


def identifiers(first: str):
    rest = st.text(alphabet=LETTERS + DIGITS + "-", max_size=5)
    return st.builds(lambda head, tail: head + tail, st.sampled_from(first), rest)


names = identifiers(LETTERS).filter(lambda n: n not in KEYWORDS)
roots = st.one_of(st.sampled_from(["env", "vars", "jobs", "pipeline"]), names)
property_names = st.one_of(st.sampled_from(["in", "true", "status", "name"]), identifiers(LETTERS + DIGITS))
function_names = st.one_of(st.sampled_from(sorted(FUNCTIONS)), names)
numbers = st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False))

leaves = st.one_of(
    st.text(max_size=10).map(String),
    numbers.map(Number),
    st.booleans().map(Boolean),
    st.just(Null()),
    roots.map(Root),
)


def extend(children):
    return st.one_of(
        st.builds(Property, children, property_names),
        st.builds(Index, children, children),
        st.builds(Call, function_names, st.lists(children, max_size=3).map(tuple)),
        st.builds(Not, children),
        st.builds(Compare, st.sampled_from(["==", "!=", "<", "<=", ">", ">=", "in"]), children, children),
        st.builds(Logical, st.sampled_from(["&&", "||"]), st.lists(children, min_size=2, max_size=4).map(tuple)),
    )


trees = st.recursive(leaves, extend, max_leaves=15)


@TREE_SETTINGS
@given(trees)
def test_printed_trees_parse_back_to_the_same_tree(tree):
    assert parse(unparse(tree)) == tree


@TREE_SETTINGS
@given(trees)
def test_evaluating_any_tree_only_raises_expression_error(tree):
    try:
        evaluate(tree, CONTEXT)
    except ExpressionError:
        pass
