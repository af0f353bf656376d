"""The runtime library: what values mean, and the built-in functions.

Values are Python objects: ``None`` (null), ``bool``, ``int``/``float`` (numbers),
``str``, lists (``list``/``tuple``) and maps (any ``Mapping``). Truthiness, splicing
into text, equality, ordering and membership live here because the operators and
the functions must agree on them.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

from .tokenizer import ExpressionError

if TYPE_CHECKING:
    from .evaluator import Context

MAX_TEXT_LENGTH = 1_048_576
"""Longest string format(), join() or toJSON() may build; stops blow-ups like nested format()."""

MAX_VALUE_DEPTH = 50
"""Deepest list/map nesting fromJSON() accepts and equality will walk."""

JOB_SUCCESS = "success"
JOB_FAILED = "failed"


class CallError(ExpressionError):
    """A function or operator could not produce a value; the evaluator adds the position."""


class Runtime(Protocol):
    """What a function sees of the evaluation in progress."""

    context: Context

    def charge(self, steps: int = 1) -> None:
        """Count work against the step and time limits (raises ExpressionError when over)."""


# -- values -------------------------------------------------------------------


def is_number(value: object) -> bool:
    # bool is an int subclass in Python, but true is not the number 1 here.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_list(value: object) -> bool:
    return isinstance(value, (list, tuple))


def is_map(value: object) -> bool:
    return isinstance(value, Mapping)


def type_name(value: object) -> str:
    """The expression-language name of a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if is_number(value):
        return "number"
    if isinstance(value, str):
        return "string"
    if is_list(value):
        return "list"
    if is_map(value):
        return "map"
    return type(value).__name__


def truthy(value: object) -> bool:
    """Whether a value counts as true: false, null, 0, '' and NaN are false; all else is true."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if is_number(value):
        return value == value and value != 0  # NaN != NaN
    if isinstance(value, str):
        return value != ""
    return True


def to_text(value: object) -> str:
    """How a value is spliced into a string by ``${{ }}``, format() and join().

    null is '', booleans 'true'/'false', whole numbers have no '.0', other floats
    use Python's shortest repr, lists and maps are compact JSON.
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float_text(value)
    if is_list(value) or is_map(value):
        return to_json(value)
    return str(value)


def _float_text(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    # Below 2**53 a whole float is exactly an integer; above, repr is more honest.
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def to_json(value: object) -> str:
    """Compact JSON for a value; raises CallError for what JSON cannot hold.

    NaN and the infinities are not JSON: they are written as ``null``, as JavaScript's
    JSON.stringify does, so that the text is always valid JSON.
    """
    try:
        try:
            text = _dumps(value)
        except ValueError:  # a NaN or an infinity somewhere (the rare case, so retried)
            text = _dumps(_finite(value, 0))
    except (TypeError, ValueError, RecursionError) as error:
        raise CallError(f"cannot convert {type_name(value)} to JSON: {error}") from None
    if len(text) > MAX_TEXT_LENGTH:
        raise CallError(f"JSON text longer than {MAX_TEXT_LENGTH} characters")
    return text


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_jsonable,
                      allow_nan=False)


def _finite(value: object, depth: int) -> object:
    """``value`` with every NaN or infinity replaced by None."""
    if depth > MAX_VALUE_DEPTH:
        raise ValueError(f"nested deeper than {MAX_VALUE_DEPTH} levels")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if is_list(value):
        return [_finite(item, depth + 1) for item in value]  # type: ignore[attr-defined]
    if is_map(value):
        return {key: _finite(item, depth + 1) for key, item in value.items()}  # type: ignore[attr-defined]
    return value


def _jsonable(value: object) -> object:
    if is_map(value):
        return dict(value)  # type: ignore[call-overload]
    raise TypeError(f"{type(value).__name__} is not JSON")


# Conservative on purpose: 'nan', 'inf', '0x1F' and '' are not numbers here.
_NUMERIC = re.compile(r"\s*[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\s*\Z", re.ASCII)


def as_number(value: object) -> int | float | None:
    """The number a value stands for in a comparison: numbers, and numeric-looking strings."""
    if is_number(value):
        return value  # type: ignore[return-value]
    if isinstance(value, str) and len(value) <= 200 and _NUMERIC.match(value):
        text = value.strip()
        return float(text) if any(c in text for c in ".eE") else int(text)
    return None


def equal(left: object, right: object, runtime: Runtime, depth: int = 0) -> bool:
    """``left == right``: numbers numerically (a numeric string converts), strings
    case-sensitively, lists and maps element by element; other mixed types are unequal."""
    if depth > MAX_VALUE_DEPTH:
        raise CallError("values nested too deeply to compare")
    if left is None or right is None:
        return left is None and right is None
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if isinstance(left, str) and isinstance(right, str):
        return left == right
    if is_number(left) or is_number(right):
        x, y = as_number(left), as_number(right)
        return x is not None and y is not None and x == y
    if is_list(left) and is_list(right):
        if len(left) != len(right):
            return False
        runtime.charge(len(left))
        return all(equal(a, b, runtime, depth + 1) for a, b in zip(left, right))
    if is_map(left) and is_map(right):
        if set(left) != set(right):
            return False
        runtime.charge(len(left))
        return all(equal(left[key], right[key], runtime, depth + 1) for key in left)
    return False


_ORDER: dict[str, Callable[[object, object], bool]] = {
    "<": lambda x, y: x < y,
    "<=": lambda x, y: x <= y,
    ">": lambda x, y: x > y,
    ">=": lambda x, y: x >= y,
}


def order(op: str, left: object, right: object) -> bool:
    """``left op right`` for ``< <= > >=``: numbers numerically, two strings by code
    point (case-sensitive); anything else, including NaN, is false."""
    if isinstance(left, bool) or isinstance(right, bool):
        return False
    if isinstance(left, str) and isinstance(right, str):
        return _ORDER[op](left, right)
    if is_number(left) or is_number(right):
        x, y = as_number(left), as_number(right)
        return x is not None and y is not None and _ORDER[op](x, y)
    return False


def membership(container: object, item: object, runtime: Runtime) -> bool:
    """``item in container``: an element of a list, a substring of a string, a key of a map."""
    if isinstance(container, str):
        if isinstance(item, str):
            return item in container
        if isinstance(item, bool) or is_number(item):
            return to_text(item) in container
        return False
    if is_list(container):
        for element in container:
            runtime.charge()
            if equal(element, item, runtime):
                return True
        return False
    if is_map(container):
        return isinstance(item, str) and item in container
    return False


# -- functions ----------------------------------------------------------------


@dataclass(frozen=True)
class Function:
    """A built-in function: its name, how many arguments it takes, and what it does."""

    signature: str
    min_args: int
    max_args: int | None
    impl: Callable[[Sequence[object], Runtime], object]
    summary: str
    status: bool = False
    odd: bool = False  # takes an odd number of arguments, like case()

    @property
    def name(self) -> str:
        return self.signature.split("(", 1)[0]

    def arity_error(self, count: int) -> str | None:
        """The message for calling with ``count`` arguments, or None when that is fine."""
        if count >= self.min_args and (self.max_args is None or count <= self.max_args):
            if self.odd and count % 2 == 0:
                return (f"{self.name}() takes an odd number of arguments, got {count} "
                        f"(usage: {self.signature})")
            return None
        if self.max_args is None:
            expected = f"at least {_plural(self.min_args)}"
        elif self.max_args == 0:
            expected = "no arguments"
        elif self.min_args == self.max_args:
            expected = _plural(self.min_args)
        else:
            expected = f"{self.min_args} or {_plural(self.max_args)}"
        return f"{self.name}() takes {expected}, got {count} (usage: {self.signature})"


def _plural(count: int) -> str:
    return f"{count} argument" + ("" if count == 1 else "s")


def _contains(args: Sequence[object], runtime: Runtime) -> bool:
    return membership(args[0], args[1], runtime)


def _affix_texts(args: Sequence[object]) -> tuple[str, str] | None:
    if any(is_list(a) or is_map(a) for a in args):
        return None
    return to_text(args[0]), to_text(args[1])


def _starts_with(args: Sequence[object], runtime: Runtime) -> bool:
    texts = _affix_texts(args)
    return texts is not None and texts[0].startswith(texts[1])


def _ends_with(args: Sequence[object], runtime: Runtime) -> bool:
    texts = _affix_texts(args)
    return texts is not None and texts[0].endswith(texts[1])


def _join(args: Sequence[object], runtime: Runtime) -> str:
    value = args[0]
    # As in GitHub: a list or map as separator is ignored, and a map joins to ''.
    separator = args[1] if len(args) > 1 else ","
    separator = "," if is_list(separator) or is_map(separator) else to_text(separator)
    if is_map(value):
        return ""
    if not is_list(value):
        return to_text(value)
    pieces: list[str] = []
    size = 0
    for element in value:
        runtime.charge()
        piece = to_text(element)
        size += len(piece) + len(separator)
        if size > MAX_TEXT_LENGTH + len(separator):
            raise CallError(f"join() result longer than {MAX_TEXT_LENGTH} characters")
        pieces.append(piece)
    return separator.join(pieces)


def parse_format(template: str, arg_count: int | None = None) -> list[str | int]:
    """Split a format() template into literal text and argument numbers.

    ``{0}`` is argument 0, ``{{`` and ``}}`` are literal braces. Raises CallError for
    a malformed template, or (when ``arg_count`` is given) a missing argument.
    """
    segments: list[str | int] = []
    i, n = 0, len(template)
    while i < n:
        char = template[i]
        if template.startswith("{{", i) or template.startswith("}}", i):
            segments.append(char)
            i += 2
        elif char == "{":
            close = template.find("}", i)
            inner = template[i + 1 : close] if close != -1 else ""
            if close == -1 or not (0 < len(inner) <= 6 and inner.isascii() and inner.isdigit()):
                raise CallError(
                    f"format(): '{{' at position {i} does not start a placeholder like {{0}} "
                    "(write '{{' for a literal '{')"
                )
            index = int(inner)
            if arg_count is not None and index >= arg_count:
                raise CallError(
                    f"format(): placeholder {{{index}}} needs argument {index}, "
                    f"but the template is followed by only {_plural(arg_count)}"
                )
            segments.append(index)
            i = close + 1
        elif char == "}":
            raise CallError(f"format(): unmatched '}}' at position {i} (write '}}}}' for a literal '}}')")
        else:
            j = i
            while j < n and template[j] not in "{}":
                j += 1
            segments.append(template[i:j])
            i = j
    return segments


def _format(args: Sequence[object], runtime: Runtime) -> str:
    values = args[1:]
    pieces: list[str] = []
    size = 0
    for segment in parse_format(to_text(args[0]), len(values)):
        if isinstance(segment, int):
            runtime.charge()
            segment = to_text(values[segment])
        size += len(segment)
        if size > MAX_TEXT_LENGTH:
            raise CallError(f"format() result longer than {MAX_TEXT_LENGTH} characters")
        pieces.append(segment)
    return "".join(pieces)


def _from_json(args: Sequence[object], runtime: Runtime) -> object:
    text = args[0]
    if not isinstance(text, str):
        raise CallError(f"fromJSON() needs a string, got {type_name(text)}")
    if len(text) > MAX_TEXT_LENGTH:
        raise CallError(f"fromJSON() input longer than {MAX_TEXT_LENGTH} characters")
    try:
        value = json.loads(text)
    except RecursionError:
        raise CallError("fromJSON(): JSON nested too deeply") from None
    except ValueError as error:
        raise CallError(f"fromJSON(): invalid JSON: {error}") from None
    _check_value_depth(value)
    return value


def _check_value_depth(value: object) -> None:
    # Iterative, and run once here, so equality and toJSON never meet a deep value.
    stack = [(value, 0)]
    while stack:
        current, depth = stack.pop()
        if depth > MAX_VALUE_DEPTH:
            raise CallError(f"fromJSON(): JSON nested deeper than {MAX_VALUE_DEPTH} levels")
        if is_list(current):
            stack.extend((item, depth + 1) for item in current)
        elif is_map(current):
            stack.extend((item, depth + 1) for item in current.values())


def _to_json(args: Sequence[object], runtime: Runtime) -> str:
    return to_json(args[0])


def _case(args: Sequence[object], runtime: Runtime) -> object:
    # Conditions and values in pairs, then the default: GitHub's case().
    for i in range(0, len(args) - 1, 2):
        condition = args[i]
        if not isinstance(condition, bool):
            raise CallError(f"case(): argument {i + 1} is a condition and must be true or "
                            f"false, got {type_name(condition)}")
        if condition:
            return args[i + 1]
    return args[-1]


def _dependency_ok(status: str, allow_failure: bool) -> bool:
    return status == JOB_SUCCESS or (status == JOB_FAILED and allow_failure)


def _success(args: Sequence[object], runtime: Runtime) -> bool:
    context = runtime.context
    return not context.run_cancelled and all(
        _dependency_ok(status, allow) for status, allow in context.dependency_results.values()
    )


def _failure(args: Sequence[object], runtime: Runtime) -> bool:
    return any(
        status == JOB_FAILED and not allow for status, allow in runtime.context.dependency_results.values()
    )


def _always(args: Sequence[object], runtime: Runtime) -> bool:
    return True


def _cancelled(args: Sequence[object], runtime: Runtime) -> bool:
    return bool(runtime.context.run_cancelled)


FUNCTIONS: dict[str, Function] = {
    f.name: f
    for f in (
        Function("contains(a, b)", 2, 2, _contains, "b is an element of list a, a substring of string a, or a key of map a"),
        Function("startsWith(s, p)", 2, 2, _starts_with, "text s starts with text p"),
        Function("endsWith(s, p)", 2, 2, _ends_with, "text s ends with text p"),
        Function("join(list, sep=',')", 1, 2, _join, "the elements of list as text, separated by sep"),
        Function("format(template, args...)", 1, None, _format, "template with {0}, {1}... replaced by the arguments"),
        Function("fromJSON(s)", 1, 1, _from_json, "the value JSON text s stands for"),
        Function("toJSON(v)", 1, 1, _to_json, "v as compact JSON text"),
        Function("case(condition, value, ..., default)", 3, None, _case, "the value after the first true condition, else the default", odd=True),
        Function("success()", 0, 0, _success, "every dependency succeeded or failed with allow_failure, and the run is not being cancelled", status=True),
        Function("failure()", 0, 0, _failure, "some dependency failed (without allow_failure)", status=True),
        Function("always()", 0, 0, _always, "true", status=True),
        Function("cancelled()", 0, 0, _cancelled, "the run is being cancelled", status=True),
    )
}

STATUS_FUNCTIONS = frozenset(name for name, f in FUNCTIONS.items() if f.status)
