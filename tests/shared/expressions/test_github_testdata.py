"""GitHub's test data for Actions expressions (github_testdata/) against Conveyor's engine.

Each case is an expression, the named values it reads (GitHub's "contexts"), and the
result or error GitHub expects. Every case gives what GitHub gives, except the
differences listed in DIFFERENCES, each with its reason (docs/expressions.md, "Differences
from GitHub Actions"). A listed case that starts to agree fails too, so the list stays
exact.

A case runs through the engine as shipped: parse(), check() and evaluate(). GitHub's
contexts play the part of Conveyor's roots (env, vars, jobs, pipeline): check() gets
their names as the roots, so an unknown name is a validation error in both, and the
names are read from ``vars`` at evaluation. GitHub's error messages are not compared; an
error must come at least as early as GitHub's: a syntax error when GitHub finds one
while parsing, any error when GitHub finds one while evaluating.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from shared.expressions import Context, ExpressionError, check, evaluate, parse
from shared.expressions.parser import Expression, Index, Root, String

TESTDATA = Path(__file__).parent / "github_testdata"


@dataclass(frozen=True)
class Difference:
    """A documented way Conveyor differs from GitHub, and the cases that show it."""

    ours: Literal["error", "value"]  # what Conveyor gives: an error, or another value
    reason: str
    case_list: str  # one case id per line: file/case name/index

    @property
    def cases(self) -> list[str]:
        return [line.strip() for line in self.case_list.splitlines() if line.strip()]


DIFFERENCES: dict[str, Difference] = {
    "names-case-sensitive": Difference(
        "error",
        "function, context and property names are case-sensitive in Conveyor ('toJson' is an "
        "error with a did-you-mean for 'toJSON'); GitHub ignores case",
        """
        basic/context_case-insensitive/0
        coerce_number/array/0
        coerce_number/array/1
        coerce_number/array/2
        coerce_number/array/3
        coerce_number/object/0
        coerce_number/object/1
        coerce_number/object/2
        coerce_number/object/3
        op_dot/property-basics/7
        op_dot/property-basics/8
        op_idx/array-index-coercion/6
        op_idx/array-index-coercion/7
        op_idx/object-index-coercion/10
        op_idx/object-index-coercion/11
        op_idx/object-index-coercion/12
        op_idx/object-index-coercion/13
        op_idx/index-following-function/0
        op_idx/index-following-group/0
        op_not/not/21
        op_not/not/22
        syntax-errors/depth-errors/11
        tojson/basics/0
        tojson/basics/1
        tojson/basics/2
        tojson/basics/3
        tojson/basics/4
        tojson/basics/5
        tojson/basics/6
        tojson/basics/7
        tojson/basics/8
        tojson/basics/9
        tojson/basics/10
        tojson/basics/11
        tojson/basics/12
        tojson/basics/13
        tojson/basics/14
        tojson/arrays/0
        tojson/arrays/1
        tojson/arrays/2
        tojson/object/0
        tojson/object/1
        tojson/object/2
        """,
    ),
    "properties-case-sensitive": Difference(
        "value",
        "map keys are case-sensitive: env.path is not env.PATH, as on Linux; GitHub ignores "
        "case, so a missing key here is null",
        """
        op_dot/property-case-insensitive/0
        op_dot/property-case-insensitive/1
        """,
    ),
    "strings-case-sensitive": Difference(
        "value",
        "comparing strings (==, <, in, contains, startsWith, endsWith) is case-sensitive, as "
        "branch names, tags and paths are in git and on Linux; GitHub ignores case",
        """
        contains/string/1
        endsWith/case-insensitive-a-thru-z/0
        endsWith/case-insensitive-a-thru-z/1
        endsWith/case-insensitive-ς-(final-lowercase-sigma)-Σ-(capital-sigma)-σ-(non-final-sigma)/0
        endsWith/case-insensitive-ς-(final-lowercase-sigma)-Σ-(capital-sigma)-σ-(non-final-sigma)/1
        endsWith/case-insensitive-ς-(final-lowercase-sigma)-Σ-(capital-sigma)-σ-(non-final-sigma)/2
        endsWith/case-insensitive-ς-(final-lowercase-sigma)-Σ-(capital-sigma)-σ-(non-final-sigma)/3
        endsWith/case-insensitive-ς-(final-lowercase-sigma)-Σ-(capital-sigma)-σ-(non-final-sigma)/4
        endsWith/case-insensitive-ς-(final-lowercase-sigma)-Σ-(capital-sigma)-σ-(non-final-sigma)/5
        endsWith/case-insensitive-ü-Ü/0
        endsWith/case-insensitive-ü-Ü/1
        endsWith/case-insensitive-ç-Ç/0
        endsWith/case-insensitive-ç-Ç/1
        endsWith/cyrillic-letters/0
        op_idx/object-case-insensitive/0
        operators_case_insensitive/lower-vs-upper/0
        operators_case_insensitive/lower-vs-upper/1
        operators_case_insensitive/lower-vs-upper/3
        operators_case_insensitive/lower-vs-upper/4
        operators_case_insensitive/upper-vs-lower/0
        operators_case_insensitive/upper-vs-lower/1
        operators_case_insensitive/upper-vs-lower/2
        operators_case_insensitive/upper-vs-lower/5
        operators_case_insensitive/a-z-equivalent-to-A-Z-wrt-chars-between-Z-and-a/4
        operators_case_insensitive/a-z-equivalent-to-A-Z-wrt-chars-between-Z-and-a/5
        operators_case_insensitive/a-z-equivalent-to-A-Z-wrt-chars-between-Z-and-a/6
        operators_case_insensitive/a-z-equivalent-to-A-Z-wrt-chars-between-Z-and-a/7
        operators_case_insensitive/case-insensitive-ς-(final-lowercase-sigma)-Σ-(capital-sigma)-σ-(non-final-sigma)/0
        operators_case_insensitive/case-insensitive-ς-(final-lowercase-sigma)-Σ-(capital-sigma)-σ-(non-final-sigma)/1
        operators_case_insensitive/case-insensitive-ς-(final-lowercase-sigma)-Σ-(capital-sigma)-σ-(non-final-sigma)/3
        operators_case_insensitive/case-insensitive-ς-(final-lowercase-sigma)-Σ-(capital-sigma)-σ-(non-final-sigma)/4
        operators_case_insensitive/case-insensitive-ς-(final-lowercase-sigma)-Σ-(capital-sigma)-σ-(non-final-sigma)/6
        operators_case_insensitive/case-insensitive-ς-(final-lowercase-sigma)-Σ-(capital-sigma)-σ-(non-final-sigma)/7
        operators_case_insensitive/case-insensitive-ς-(final-lowercase-sigma)-Σ-(capital-sigma)-σ-(non-final-sigma)/8
        operators_case_insensitive/case-insensitive-ς-(final-lowercase-sigma)-Σ-(capital-sigma)-σ-(non-final-sigma)/11
        operators_case_insensitive/case-insensitive-ς-(final-lowercase-sigma)-Σ-(capital-sigma)-σ-(non-final-sigma)/12
        operators_case_insensitive/case-insensitive-ς-(final-lowercase-sigma)-Σ-(capital-sigma)-σ-(non-final-sigma)/13
        operators_case_insensitive/case-insensitive-ς-(final-lowercase-sigma)-Σ-(capital-sigma)-σ-(non-final-sigma)/14
        operators_case_insensitive/case-insensitive-ς-(final-lowercase-sigma)-Σ-(capital-sigma)-σ-(non-final-sigma)/17
        operators_case_insensitive/case-insensitive-ü-Ü/0
        operators_case_insensitive/case-insensitive-ü-Ü/1
        operators_case_insensitive/case-insensitive-ü-Ü/3
        operators_case_insensitive/case-insensitive-ü-Ü/4
        operators_case_insensitive/case-insensitive-ü-Ü/6
        operators_case_insensitive/case-insensitive-ü-Ü/7
        operators_case_insensitive/case-insensitive-ü-Ü/8
        operators_case_insensitive/case-insensitive-ü-Ü/11
        operators_case_insensitive/case-insensitive-ç-Ç/0
        operators_case_insensitive/case-insensitive-ç-Ç/1
        operators_case_insensitive/case-insensitive-ç-Ç/3
        operators_case_insensitive/case-insensitive-ç-Ç/4
        operators_case_insensitive/case-insensitive-ç-Ç/6
        operators_case_insensitive/case-insensitive-ç-Ç/7
        operators_case_insensitive/case-insensitive-ç-Ç/8
        operators_case_insensitive/case-insensitive-ç-Ç/11
        operators_case_insensitive/cyrillic-letters/0
        startsWith/case-insensitive-a-thru-z/0
        startsWith/case-insensitive-a-thru-z/1
        startsWith/case-insensitive-ς-(final-lowercase-sigma)-Σ-(capital-sigma)-σ-(non-final-sigma)/0
        startsWith/case-insensitive-ς-(final-lowercase-sigma)-Σ-(capital-sigma)-σ-(non-final-sigma)/1
        startsWith/case-insensitive-ς-(final-lowercase-sigma)-Σ-(capital-sigma)-σ-(non-final-sigma)/2
        startsWith/case-insensitive-ς-(final-lowercase-sigma)-Σ-(capital-sigma)-σ-(non-final-sigma)/3
        startsWith/case-insensitive-ς-(final-lowercase-sigma)-Σ-(capital-sigma)-σ-(non-final-sigma)/4
        startsWith/case-insensitive-ς-(final-lowercase-sigma)-Σ-(capital-sigma)-σ-(non-final-sigma)/5
        startsWith/case-insensitive-ü-Ü/0
        startsWith/case-insensitive-ü-Ü/1
        startsWith/case-insensitive-ç-Ç/0
        startsWith/case-insensitive-ç-Ç/1
        startsWith/cyrillic-letters/0
        """,
    ),
    "no-loose-coercion": Difference(
        "value",
        "booleans, null and '' are not numbers (true == 1, null == 0, '' == 0 and false < "
        "true are false; a list is indexed by numbers only, a map by strings only), and "
        "numeric strings are decimal ('0xff' is not 255); GitHub converts them",
        """
        coerce_number/null/0
        coerce_number/boolean/0
        coerce_number/boolean/1
        coerce_number/string/0
        coerce_number/string/4
        coerce_number/string/5
        coerce_number/string/6
        contains/string/6
        contains/array/5
        contains/array/6
        contains/array/7
        op_eq/coerce_bool_number/0
        op_eq/coerce_bool_number/1
        op_eq/coerce_bool_string/0
        op_eq/coerce_bool_string/1
        op_eq/coerce_bool_string/2
        op_eq/coerce_bool_string/3
        op_eq/coerce_bool_string/4
        op_eq/coerce_bool_null/0
        op_eq/coerce_number_bool/0
        op_eq/coerce_number_bool/1
        op_eq/coerce_number_string/1
        op_eq/coerce_number_string/2
        op_eq/coerce_number_string/9
        op_eq/coerce_number_string/10
        op_eq/coerce_number_null/0
        op_eq/coerce_string_bool/0
        op_eq/coerce_string_bool/1
        op_eq/coerce_string_bool/2
        op_eq/coerce_string_bool/3
        op_eq/coerce_string_bool/4
        op_eq/coerce_string_number/1
        op_eq/coerce_string_number/2
        op_eq/coerce_string_number/9
        op_eq/coerce_string_number/10
        op_eq/coerce_string_null/0
        op_eq/coerce_string_null/1
        op_eq/coerce_string_null/2
        op_eq/coerce_null_bool/0
        op_eq/coerce_null_number/0
        op_eq/coerce_null_string/0
        op_eq/coerce_null_string/1
        op_eq/coerce_null_string/2
        op_gt/bool/2
        op_gt/coerce_bool_number/1
        op_gt/coerce_bool_number/3
        op_gt/coerce_bool_string/1
        op_gt/coerce_bool_string/3
        op_gt/coerce_bool_null/1
        op_gt/coerce_number_bool/0
        op_gt/coerce_number_bool/2
        op_gt/coerce_number_null/0
        op_gt/coerce_string_bool/1
        op_gt/coerce_string_bool/3
        op_gt/coerce_string_null/1
        op_gt/coerce_null_number/1
        op_gt/coerce_null_string/1
        op_gte/bool/1
        op_gte/bool/2
        op_gte/bool/3
        op_idx/array-index-coercion/0
        op_idx/array-index-coercion/1
        op_idx/array-index-coercion/2
        op_idx/array-index-coercion/4
        op_idx/object-index-coercion/0
        op_idx/object-index-coercion/7
        op_idx/object-index-coercion/8
        op_idx/object-index-coercion/9
        op_lt/bool/0
        op_lt/coerce_bool_number/1
        op_lt/coerce_bool_number/3
        op_lt/coerce_bool_string/1
        op_lt/coerce_bool_string/3
        op_lt/coerce_number_bool/0
        op_lt/coerce_number_bool/2
        op_lt/coerce_number_null/0
        op_lt/coerce_string_bool/1
        op_lt/coerce_string_bool/3
        op_lt/coerce_string_null/1
        op_lt/coerce_null_bool/1
        op_lt/coerce_null_number/1
        op_lt/coerce_null_string/1
        op_lte/bool/0
        op_lte/bool/1
        op_lte/bool/3
        op_ne/coerce_bool_number/0
        op_ne/coerce_bool_number/2
        op_ne/coerce_bool_string/0
        op_ne/coerce_bool_string/1
        op_ne/coerce_bool_string/2
        op_ne/coerce_bool_string/4
        op_ne/coerce_bool_string/5
        op_ne/coerce_bool_null/0
        op_ne/coerce_number_bool/0
        op_ne/coerce_number_bool/2
        op_ne/coerce_number_string/1
        op_ne/coerce_number_string/2
        op_ne/coerce_number_string/9
        op_ne/coerce_number_string/10
        op_ne/coerce_number_null/0
        op_ne/coerce_string_bool/0
        op_ne/coerce_string_bool/1
        op_ne/coerce_string_bool/2
        op_ne/coerce_string_bool/4
        op_ne/coerce_string_bool/5
        op_ne/coerce_string_number/1
        op_ne/coerce_string_number/2
        op_ne/coerce_string_number/9
        op_ne/coerce_string_number/10
        op_ne/coerce_string_null/0
        op_ne/coerce_string_null/1
        op_ne/coerce_string_null/2
        op_ne/coerce_null_bool/0
        op_ne/coerce_null_number/0
        op_ne/coerce_null_string/0
        op_ne/coerce_null_string/1
        op_ne/coerce_null_string/2
        operators_precedence/operator_precedence_!_is_higher_than_</0
        operators_precedence/operator_precedence_<_and_<_evaluate_left_to_right/0
        operators_precedence/operator_precedence_<_and_<=_evaluate_left_to_right/0
        operators_precedence/operator_precedence_<=_and_<_evaluate_left_to_right/0
        operators_precedence/operator_precedence_>_and_<_evaluate_left_to_right/0
        operators_precedence/operator_precedence_>_and_>_evaluate_left_to_right/1
        operators_precedence/operator_precedence_==_and_==_evaluate_left_to_right/0
        """,
    ),
    "number-literals": Difference(
        "error",
        "number literals are decimal: 0xff, 0o10, .5, +1, NaN and Infinity are errors, so "
        "that a typo or an unquoted version never becomes a surprising number",
        """
        coerce_number/string/7
        coerce_number/string/8
        coerce_number/string/9
        coerce_number/string/10
        coerce_number/string/11
        coerce_number/string/12
        coerce_number/string/13
        coerce_number/string/14
        coerce_number/string/15
        coerce_number/string/16
        coerce_string/number/1
        coerce_string/number/5
        coerce_string/number/13
        coerce_string/number/18
        coerce_string/number/19
        coerce_string/number/20
        coerce_string/number/27
        coerce_string/number/28
        coerce_string/number/29
        format/format/16
        format/format/17
        format/format/18
        number/number/1
        number/number/5
        number/number/6
        number/number/8
        number/number/9
        number/number/10
        number/number/11
        number/number/16
        number/number/17
        number/number/18
        number/number/19
        number/number/20
        number/number/21
        number/number/22
        number/number/23
        number/number/24
        op_eq/number/5
        op_eq/number/6
        op_eq/number/7
        op_eq/number/8
        op_eq/number/9
        op_eq/coerce_bool_number/2
        op_eq/coerce_number_bool/2
        op_eq/coerce_number_string/11
        op_eq/coerce_number_string/12
        op_eq/coerce_number_string/13
        op_eq/coerce_string_number/11
        op_eq/coerce_string_number/12
        op_eq/coerce_string_number/13
        op_gt/coerce_bool_number/4
        op_gt/coerce_bool_number/5
        op_gt/coerce_bool_number/6
        op_gt/coerce_bool_number/7
        op_gt/coerce_bool_number/8
        op_gt/coerce_bool_number/9
        op_gt/coerce_number_bool/4
        op_gt/coerce_number_bool/5
        op_gt/coerce_number_bool/6
        op_gt/coerce_number_bool/7
        op_gt/coerce_number_bool/8
        op_gt/coerce_number_bool/9
        op_idx/array-index-out-of-range/2
        op_idx/array-index-out-of-range/3
        op_idx/array-index-out-of-range/4
        op_idx/object-index-coercion/1
        op_idx/object-index-coercion/2
        op_idx/object-index-coercion/3
        op_idx/object-index-coercion/4
        op_idx/object-index-coercion/5
        op_idx/object-index-coercion/6
        op_lt/coerce_bool_number/4
        op_lt/coerce_bool_number/5
        op_lt/coerce_bool_number/6
        op_lt/coerce_bool_number/7
        op_lt/coerce_bool_number/8
        op_lt/coerce_bool_number/9
        op_lt/coerce_number_bool/4
        op_lt/coerce_number_bool/5
        op_lt/coerce_number_bool/6
        op_lt/coerce_number_bool/7
        op_lt/coerce_number_bool/8
        op_lt/coerce_number_bool/9
        op_ne/number/5
        op_ne/number/6
        op_ne/number/7
        op_ne/number/8
        op_ne/number/9
        op_ne/number/10
        op_ne/number/11
        op_ne/coerce_bool_number/3
        op_ne/coerce_number_bool/4
        op_ne/coerce_number_string/11
        op_ne/coerce_number_string/12
        op_ne/coerce_number_string/13
        op_ne/coerce_string_number/11
        op_ne/coerce_string_number/12
        op_ne/coerce_string_number/13
        op_not/not/3
        op_not/not/7
        op_not/not/9
        op_not/not/10
        op_not/not/11
        """,
    ),
    "filters": Difference(
        "error",
        "object filters (.* and [*]) are not supported",
        """
        basic/context access with wildcard/0
        contains/filtered_array/0
        contains/filtered_array/1
        contains/filtered_array/2
        contains/filtered_array/3
        contains/filtered_array/4
        contains/filtered_array/5
        contains/filtered_array/6
        contains/filtered_array/7
        join/join/0
        op_dot/property-basics/9
        op_idx/index-star/0
        op_idx/index-star/2
        op_idx_star/filtered-array-from-literal/0
        op_idx_star/filtered-array-from-literal/1
        op_idx_star/filtered-array-from-literal/2
        op_idx_star/filtered-array-from-literal/3
        op_idx_star/filtered-array-from-literal/4
        op_idx_star/filtered-array-from-array/0
        op_idx_star/filtered-array-from-object/0
        op_idx_star/nested-object/0
        op_idx_star/nested-object/1
        op_idx_star/nested-object-property-case-insensitive/0
        op_idx_star/nested-object-property-not-found/0
        op_idx_star/nested-object-property-coercion/0
        op_idx_star/nested-object-property-coercion/1
        op_idx_star/nested-object-property-coercion/2
        op_idx_star/nested-object-property-coercion/3
        op_idx_star/nested-object-property-coercion/4
        op_idx_star/nested-object-property-coercion/5
        op_idx_star/nested-object-property-coercion/6
        op_idx_star/nested-object-property-coercion/7
        op_idx_star/nested-object-property-coercion/8
        op_idx_star/nested-array/0
        op_idx_star/nested-array-index-not-found/0
        op_idx_star/nested-array-index-not-found/1
        op_idx_star/nested-array-index-not-found/2
        op_idx_star/nested-array-index-not-found/3
        op_idx_star/nested-array-index-not-found/4
        op_idx_star/nested-array-index-coercion/0
        op_idx_star/nested-array-index-coercion/1
        op_idx_star/nested-array-index-coercion/2
        op_idx_star/nested-array-index-coercion/3
        op_idx_star/nested-array-index-coercion/4
        op_idx_star/nested-array-index-coercion/5
        op_idx_star/nested-array-index-coercion/6
        op_idx_star/nested-array-index-coercion/7
        op_idx_star/double-star/0
        op_idx_star/double-property/0
        op_idx_star/double-index/0
        op_idx_star/not-found-always-returns-empty-array/0
        op_idx_star/not-found-always-returns-empty-array/1
        op_idx_star/not-found-always-returns-empty-array/2
        op_idx_star/not-found-always-returns-empty-array/3
        syntax-errors/depth-errors/5
        syntax-errors/depth-errors/9
        """,
    ),
    "collections-by-value": Difference(
        "value",
        "lists and maps compare element by element; GitHub compares them by identity, so two "
        "equal lists are unequal there",
        """
        op_eq/object/1
        op_eq/array/1
        op_ne/object/1
        op_ne/array/1
        """,
    ),
    "collections-as-json-text": Difference(
        "value",
        "a list or map as text (format(), join(), ${{ }}) is compact JSON; GitHub writes "
        "'Array' or 'Object'",
        """
        coerce_string/array/0
        coerce_string/array/1
        coerce_string/object/0
        coerce_string/object/1
        join/join/8
        """,
    ),
    "number-text": Difference(
        "value",
        "numbers as text use the shortest form that reads back the same (0.8455124082255701); "
        "GitHub rounds to 15 significant digits",
        """
        coerce_string/number/15
        """,
    ),
    "digit-properties": Difference(
        "value",
        "a property name may start with a digit (jobs.3d-render.status); GitHub rejects foo.1",
        """
        op_dot/property-errors/1
        op_dot/property-errors/3
        """,
    ),
    "nesting-limit": Difference(
        "error",
        "the 50-level nesting limit counts every property access and index; GitHub's counts "
        "differently and allows these 50-step chains",
        """
        syntax-errors/depth-errors/3
        syntax-errors/depth-errors/7
        """,
    ),
    "empty-expression": Difference(
        "error",
        "an empty expression is an error, in a condition or in ${{ }}: GitHub's null would "
        "silently skip a job or splice nothing",
        """
        basic/empty_expression/0
        """,
    ),
}


def _load_cases() -> dict[str, dict]:
    cases = {}
    for path in sorted(TESTDATA.glob("*.json")):
        for name, entries in json.loads(path.read_text(encoding="utf-8")).items():
            for index, case in enumerate(entries):
                cases[f"{path.stem}/{name}/{index}"] = case
    return cases


CASES = _load_cases()
LISTED = {case: name for name, difference in DIFFERENCES.items() for case in difference.cases}


@dataclass(frozen=True)
class Outcome:
    stage: Literal["value", "syntax", "evaluation"]  # syntax: parse() or check() refused it
    value: object = None
    message: str = ""


def _contexts_as_vars(node: Expression) -> Expression:
    """``node`` with every root name read from ``vars``: GitHub's contexts live there."""
    if isinstance(node, Root):
        return Index(Root("vars", offset=node.offset), String(node.name, offset=node.offset),
                     offset=node.offset)
    changes: dict[str, object] = {}
    for field in dataclasses.fields(node):
        value = getattr(node, field.name)
        if isinstance(value, Expression):
            changes[field.name] = _contexts_as_vars(value)
        elif isinstance(value, tuple) and value and isinstance(value[0], Expression):
            changes[field.name] = tuple(_contexts_as_vars(item) for item in value)
    return dataclasses.replace(node, **changes) if changes else node  # type: ignore[arg-type]


def _run(case: dict) -> Outcome:
    contexts = case.get("contexts") or {}
    try:
        tree = parse(case["expr"])
    except ExpressionError as error:
        return Outcome("syntax", message=error.message)
    problems = check(case["expr"], roots=frozenset(contexts))
    if problems:
        return Outcome("syntax", message=problems[0].message)
    try:
        return Outcome("value", evaluate(_contexts_as_vars(tree), Context(vars=contexts)))
    except ExpressionError as error:
        return Outcome("evaluation", message=error.message)


_KINDS = {type(None): "Null", bool: "Boolean", int: "Number", float: "Number", str: "String",
          list: "Array", tuple: "Array", dict: "Object"}


def _same(ours: object, expected: object) -> bool:
    """Equal as GitHub's test compares them: through JSON, so 1 and 1.0 are the same."""
    if isinstance(expected, bool) or isinstance(ours, bool):
        return type(ours) is type(expected) and ours == expected
    if isinstance(expected, (int, float)):
        return isinstance(ours, (int, float)) and (
            ours == expected or (math.isnan(ours) and math.isnan(expected)))
    if isinstance(expected, list):
        return isinstance(ours, (list, tuple)) and len(ours) == len(expected) and all(
            _same(a, b) for a, b in zip(ours, expected))
    if isinstance(expected, dict):
        return isinstance(ours, dict) and ours.keys() == expected.keys() and all(
            _same(ours[key], expected[key]) for key in expected)
    return type(ours) is type(expected) and ours == expected


def _agrees(case: dict, outcome: Outcome) -> bool:
    error = case.get("err")
    if error is not None:
        if error["kind"] == "evaluation":
            return outcome.stage != "value"
        return outcome.stage == "syntax"
    result = case["result"]
    return (outcome.stage == "value" and _KINDS.get(type(outcome.value)) == result["kind"]
            and _same(outcome.value, result["value"]))


def _describe(case: dict, outcome: Outcome) -> str:
    expected = case.get("err") or case["result"]
    got = outcome.value if outcome.stage == "value" else f"{outcome.stage} error: {outcome.message}"
    return f"{case['expr']!r}: GitHub gives {expected}, Conveyor {got!r}"


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_a_case_gives_what_github_gives_unless_listed_as_a_difference(case_id: str) -> None:
    case = CASES[case_id]
    outcome = _run(case)
    listed = LISTED.get(case_id)
    if listed is None:
        assert _agrees(case, outcome), _describe(case, outcome)
        return
    assert not _agrees(case, outcome), \
        f"{case_id} now gives what GitHub gives: remove it from DIFFERENCES[{listed!r}]"
    gives = "value" if outcome.stage == "value" else "error"
    assert gives == DIFFERENCES[listed].ours, \
        f"{case_id} ({listed}) should give {DIFFERENCES[listed].ours}: {_describe(case, outcome)}"


def test_every_listed_case_exists_once() -> None:
    listed = [case for difference in DIFFERENCES.values() for case in difference.cases]
    assert len(listed) == len(set(listed))
    assert set(listed) <= set(CASES)


def test_the_test_data_is_all_here() -> None:
    # 28 files and 1,020 cases at the commit in github_testdata/README.md.
    assert (len(list(TESTDATA.glob("*.json"))), len(CASES)) == (28, 1020)
