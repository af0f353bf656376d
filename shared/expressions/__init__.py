"""Conveyor's expression language, used by ``conditional:`` and ``${{ expr }}``.

A small, safe language in the style of GitHub Actions expressions: its own tokenizer,
parser and evaluator (never Python ``eval``), with limits on size, nesting, steps and
time. See docs/expressions.md for the grammar and semantics.
"""
from .evaluator import (
    DEFAULT_LIMITS,
    DEFAULT_ROOTS,
    KNOWN_ROOTS,
    NO_TRIGGER,
    TEMPLATE_ROOTS,
    Context,
    Limits,
    check,
    condition_met,
    evaluate,
    uses_status_function,
)
from .functions import FUNCTIONS, STATUS_FUNCTIONS, to_text, truthy
from .parser import (
    MAX_DEPTH,
    Expression,
    condition_source,
    parse,
    parse_condition,
    referenced_jobs,
    unparse,
)
from .tokenizer import MAX_SOURCE_LENGTH, ExpressionError, end_of_embedded

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_ROOTS",
    "FUNCTIONS",
    "KNOWN_ROOTS",
    "MAX_DEPTH",
    "MAX_SOURCE_LENGTH",
    "NO_TRIGGER",
    "STATUS_FUNCTIONS",
    "TEMPLATE_ROOTS",
    "Context",
    "Expression",
    "ExpressionError",
    "Limits",
    "check",
    "condition_met",
    "condition_source",
    "end_of_embedded",
    "evaluate",
    "parse",
    "parse_condition",
    "referenced_jobs",
    "to_text",
    "truthy",
    "unparse",
    "uses_status_function",
]
