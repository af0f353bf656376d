"""Evaluator: computes an expression's value against a context, within limits.

Also the validation-time :func:`check`, which lives here because it must agree
with evaluation on which roots and functions exist.
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable

from .functions import (
    FUNCTIONS,
    STATUS_FUNCTIONS,
    CallError,
    Function,
    as_number,
    equal,
    is_list,
    is_map,
    membership,
    order,
    parse_format,
    truthy,
)
from .parser import (
    MAX_DEPTH,
    Boolean,
    Call,
    Compare,
    Expression,
    Index,
    Logical,
    Not,
    Null,
    Number,
    Property,
    Root,
    String,
    condition_source,
    parse,
    parse_condition,
    walk,
)
from .tokenizer import ExpressionError
from shared.suggest import closest

KNOWN_ROOTS = frozenset({"env", "vars", "jobs", "pipeline", "git"})
JOB_PROPERTIES = ("status",)
JOB_STATUSES = ("pending", "running", "retrying", "success", "failed", "cancelled", "skipped")

NO_TRIGGER: Mapping[str, object] = MappingProxyType({
    "event": "", "repository": "", "ref": "", "branch": "", "tag": "", "sha": "", "before": "",
    "actor": "", "pr": None, "delivery": "",
})
"""The ``git`` root of a run no trigger started (``conveyor run`` on a local file): the
keys of the server's ``trigger`` document (coordinator.triggers.events.TriggerEvent.to_dict),
every text field ``""`` and ``pr`` null, so ``git.branch == 'main'`` is simply false."""


@dataclass(frozen=True)
class Context:
    """Everything an expression can read.

    ``jobs`` maps a job name to its status ('success', 'failed', ...), read as
    ``jobs.NAME.status``. ``dependency_results`` maps each job the status functions
    look at to (status, allow_failure): pass the job's dependencies, or all its
    ancestors for GitHub's "any ancestor failed" meaning of failure().
    """

    env: Mapping[str, object] = field(default_factory=dict)
    vars: Mapping[str, object] = field(default_factory=dict)
    jobs: Mapping[str, str] = field(default_factory=dict)
    pipeline: Mapping[str, object] = field(default_factory=dict)
    dependency_results: Mapping[str, tuple[str, bool]] = field(default_factory=dict)
    run_cancelled: bool = False
    # The run's trigger document (``git.branch``, ``git.pr.fork``...); None for a run no
    # trigger started, which reads as NO_TRIGGER.
    git: Mapping[str, object] | None = None


@dataclass(frozen=True)
class Limits:
    """How much work one evaluation may do before it stops with an ExpressionError."""

    max_steps: int = 10_000
    max_seconds: float = 1.0
    max_depth: int = MAX_DEPTH
    # Injectable so the time limit can be tested without a slow expression.
    clock: Callable[[], float] = field(default=time.monotonic, compare=False, repr=False)


DEFAULT_LIMITS = Limits()


def evaluate(expr: Expression | str, context: Context, *, limits: Limits = DEFAULT_LIMITS) -> object:
    """The value of ``expr`` in ``context``; raises ExpressionError for any failure."""
    tree = parse(expr) if isinstance(expr, str) else expr
    if not isinstance(tree, Expression):
        raise TypeError(f"evaluate() needs an Expression or str, not {type(expr).__name__}")
    try:
        return _Evaluation(context, limits).eval(tree, 1)
    except RecursionError:
        # Only reachable with limits.max_depth raised far above the default.
        raise ExpressionError("expression nested too deeply to evaluate", tree.offset) from None


def condition_met(expr: Expression | str, context: Context, *, limits: Limits = DEFAULT_LIMITS) -> bool:
    """Whether a job's ``conditional`` lets it run.

    As in GitHub Actions, a condition that calls no status function means
    ``success() && (condition)``: ``env.DEPLOY == 'yes'`` does not run after a failure.
    A condition may be wrapped whole in ``${{ }}``, as in GitHub's ``if:``.
    """
    tree = parse_condition(expr) if isinstance(expr, str) else expr
    if not uses_status_function(tree) and not truthy(evaluate(Call("success"), context, limits=limits)):
        return False
    return truthy(evaluate(tree, context, limits=limits))


def uses_status_function(expr: Expression) -> bool:
    """Whether ``expr`` calls success(), failure(), always() or cancelled()."""
    return any(isinstance(node, Call) and node.name in STATUS_FUNCTIONS for node in walk(expr))


class _JobsView(Mapping):
    """``jobs`` as the language sees it: name -> {'status': ...}, built on access."""

    def __init__(self, statuses: Mapping[str, str]):
        self._statuses = statuses

    def __getitem__(self, name: str) -> dict[str, str]:
        return {"status": self._statuses[name]}

    def __iter__(self) -> Iterator[str]:
        return iter(self._statuses)

    def __len__(self) -> int:
        return len(self._statuses)


class _Evaluation:
    """One evaluation: the context, and the work done so far against the limits."""

    def __init__(self, context: Context, limits: Limits):
        self.context = context
        self.limits = limits
        self.steps = 0
        self.clock = limits.clock
        self.deadline = self.clock() + limits.max_seconds
        self.offset = 0  # of the node being evaluated, for limit errors

    def charge(self, steps: int = 1) -> None:
        self.steps += steps
        if self.steps > self.limits.max_steps:
            raise ExpressionError(
                f"expression needs more than {self.limits.max_steps} evaluation steps", self.offset
            )
        if self.clock() > self.deadline:
            raise ExpressionError(
                f"expression took longer than {self.limits.max_seconds:g}s to evaluate", self.offset
            )

    def eval(self, node: Expression, depth: int) -> object:
        if depth > self.limits.max_depth:
            raise ExpressionError(
                f"expression nested too deeply (more than {self.limits.max_depth} levels)", node.offset
            )
        self.offset = node.offset
        self.charge()
        depth += 1
        try:
            return self._dispatch(node, depth)
        except CallError as error:
            raise ExpressionError(error.message, node.offset) from None

    def _dispatch(self, node: Expression, depth: int) -> object:
        match node:
            case String(value) | Number(value) | Boolean(value):
                return value
            case Null():
                return None
            case Root(name):
                return self.root(node)
            case Property(target, name):
                return _property(self.eval(target, depth), name)
            case Index(target, index):
                return _index(self.eval(target, depth), self.eval(index, depth))
            case Not(operand):
                return not truthy(self.eval(operand, depth))
            case Logical(op, operands):
                # Short-circuit, and yield the operand that decided (GitHub semantics).
                stop_when = op == "||"
                value: object = None
                for operand in operands:
                    value = self.eval(operand, depth)
                    if truthy(value) is stop_when:
                        return value
                return value
            case Compare(op, left, right):
                a, b = self.eval(left, depth), self.eval(right, depth)
                self.offset = node.offset
                if op == "==":
                    return equal(a, b, self)
                if op == "!=":
                    return not equal(a, b, self)
                if op == "in":
                    return membership(b, a, self)
                return order(op, a, b)
            case Call(name, args):
                function = _function(node)
                values = [self.eval(arg, depth) for arg in args]
                self.offset = node.offset
                return function.impl(values, self)
        raise ExpressionError(f"not an expression node: {type(node).__name__}", node.offset)

    def root(self, node: Root) -> object:
        name = node.name
        if name == "env":
            return self.context.env
        if name == "vars":
            return self.context.vars
        if name == "jobs":
            return _JobsView(self.context.jobs)
        if name == "pipeline":
            return self.context.pipeline
        if name == "git":
            return self.context.git if self.context.git is not None else NO_TRIGGER
        raise ExpressionError(_unknown_root(name, KNOWN_ROOTS), node.offset)


def _property(target: object, name: str) -> object:
    # Like GitHub: a missing property is null, not an error.
    return target.get(name) if is_map(target) else None


def _index(target: object, key: object) -> object:
    if is_map(target):
        return target.get(key) if isinstance(key, str) else None
    if is_list(target) and not isinstance(key, bool):
        number = as_number(key)
        if number is None or (isinstance(number, float) and not number.is_integer()):
            return None
        position = int(number)
        return target[position] if 0 <= position < len(target) else None
    return None


def _function(node: Call) -> Function:
    function = FUNCTIONS.get(node.name)
    if function is None:
        raise ExpressionError(_unknown_function(node.name), node.offset)
    problem = function.arity_error(len(node.args))
    if problem:
        raise ExpressionError(problem, node.offset)
    return function


def _unknown_function(name: str) -> str:
    suggestion = closest(name, FUNCTIONS)
    if suggestion:
        return f"unknown function '{name}' (did you mean '{suggestion}'?)"
    return f"unknown function '{name}' (functions: {', '.join(sorted(FUNCTIONS))})"


def _unknown_root(name: str, roots: frozenset[str]) -> str:
    if name in KNOWN_ROOTS:
        why = " (a job's result is only known in its 'conditional')" if name == "jobs" else ""
        return f"'{name}' is not available here{why}"
    suggestion = closest(name, set(roots) | {"true", "false", "null"})
    if suggestion:
        return f"unknown name '{name}' (did you mean '{suggestion}'?)"
    return f"unknown name '{name}' (names are {', '.join(sorted(roots))}; quote text like '{name}')"


DEFAULT_ROOTS = KNOWN_ROOTS
TEMPLATE_ROOTS = frozenset({"env", "vars", "pipeline", "git"})
"""Roots available in ``${{ }}`` inside strings, compiled before any job has run (the
trigger is known by then: it started the run)."""


def check(
    source: str,
    *,
    roots: frozenset[str] = DEFAULT_ROOTS,
    status_functions: bool = True,
    condition: bool = False,
) -> list[ExpressionError]:
    """Every problem validation can find in ``source`` without evaluating it, in source order.

    Syntax errors, unknown names and functions, wrong argument counts, status functions
    where ``status_functions`` is False, unknown ``jobs.NAME`` properties and malformed
    literal format() templates. For ``${{ }}`` in strings, pass
    ``roots=TEMPLATE_ROOTS, status_functions=False``. With ``condition``, ``source`` is a
    job condition, which may be wrapped whole in ``${{ }}`` (see condition_source).
    """
    try:
        tree = parse(condition_source(source) if condition else source)
    except ExpressionError as error:
        return [error]
    errors: list[ExpressionError] = []
    for node in walk(tree):
        if isinstance(node, Root) and node.name not in roots:
            errors.append(ExpressionError(_unknown_root(node.name, roots), node.offset))
        elif isinstance(node, Call):
            errors.extend(_call_errors(node, status_functions))
        elif (
            isinstance(node, Property)
            and "jobs" in roots
            and _is_job(node.target)
            and node.name not in JOB_PROPERTIES
        ):
            suggestion = closest(node.name, JOB_PROPERTIES) or "status"
            errors.append(
                ExpressionError(
                    f"a job has no property '{node.name}' (did you mean '{suggestion}'?)", node.offset
                )
            )
        elif isinstance(node, Compare) and node.op in ("==", "!=") and "jobs" in roots:
            errors.extend(_status_literal_errors(node))
    return sorted(errors, key=lambda error: error.offset)


def _status_literal_errors(node: Compare) -> list[ExpressionError]:
    # jobs.x.status == 'succeeded' is silently always false; catch the typo early.
    for status_side, other in ((node.left, node.right), (node.right, node.left)):
        if (
            isinstance(status_side, Property)
            and status_side.name == "status"
            and _is_job(status_side.target)
            and isinstance(other, String)
            and other.value not in JOB_STATUSES
        ):
            suggestion = closest(other.value, JOB_STATUSES)
            hint = f"did you mean '{suggestion}'?" if suggestion else f"statuses: {', '.join(JOB_STATUSES)}"
            return [ExpressionError(f"'{other.value}' is not a job status ({hint})", other.offset)]
    return []


def _is_job(node: Expression) -> bool:
    """Whether ``node`` is ``jobs.NAME`` or ``jobs['NAME']``."""
    return isinstance(node, (Property, Index)) and node.target == Root("jobs")


def _call_errors(node: Call, status_functions: bool) -> list[ExpressionError]:
    try:
        function = _function(node)
    except ExpressionError as error:
        return [error]
    if function.status and not status_functions:
        return [ExpressionError(f"{node.name}() can only be used in a job's 'conditional'", node.offset)]
    if node.name == "format" and isinstance(node.args[0], String):
        try:
            parse_format(node.args[0].value, len(node.args) - 1)
        except CallError as error:
            return [ExpressionError(error.message, node.args[0].offset)]
    return []
