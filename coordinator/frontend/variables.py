"""Variable substitution: ``${NAME}`` and its forms inside pipeline string values.

Syntax (see docs/variables.md): ``${NAME}``, ``${NAME:-default}``, ``${NAME:+alt}``,
``${NAME/pattern/replacement}``, ``${{ expression }}`` and ``$$`` for a literal ``$``.
Any other ``$`` is literal text; there is no brace-less ``$NAME`` form.

Text is read by a small hand-written scanner into a tree and rendered with explicit
stacks: inputs may be a megabyte and defaults may nest arbitrarily deep, so neither
regex backtracking nor Python recursion may depend on the user's text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence, Union

from shared.suggest import did_you_mean

__all__ = [
    "MAX_DEPTH",
    "MAX_LENGTH",
    "Scope",
    "UndefinedVariable",
    "VariableError",
    "VariableErrorGroup",
    "references",
    "resolve_layers",
    "substitute",
]

MAX_DEPTH = 10
"""How many variables deep a value may reference other variables."""

MAX_LENGTH = 4 * 1024 * 1024
"""Longest result (in characters) substitution may produce beyond its input's own length.

Chained references (``B: ${A}${A}``, ``C: ${B}${B}``...) grow exponentially; this stops
a small file from exhausting the coordinator's memory.
"""

Lookup = Callable[[str], Union[str, None]]
Expression = Callable[[str], str]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NESTED_STOP = re.compile(r"[$}]")
_EXPRESSION_STOP = re.compile(r"""['"]|\}\}""")
_PATTERN_STOP = re.compile(r"[\\/}]")
_REPLACEMENT_STOP = re.compile(r"[\\}]")


class VariableError(Exception):
    """A problem with one string's variables: bad syntax, an undefined name, a cycle...

    ``offset`` is the 0-based index in the substituted string of the problem (the
    ``$`` of the reference, or the offending character), or None when the problem has
    no single place (cycles, nesting depth). ``layer`` is set by ``resolve_layers``:
    the index of the layer whose value the offset points into.
    """

    def __init__(self, message: str, offset: int | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.offset = offset
        self.hint = hint
        self.layer: int | None = None

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UndefinedVariable(VariableError):
    """A ``${NAME}`` (or ``${NAME/p/r}``) whose NAME is not defined; ``name`` says which."""

    def __init__(self, name: str, offset: int | None = None, hint: str | None = None):
        super().__init__(f"undefined variable '{name}'", offset, hint)
        self.name = name


class VariableErrorGroup(Exception):
    """Every bad variable of one ``resolve_layers`` call, as ``(name, VariableError)``.

    Each problem is reported once, under the variable whose value contains it;
    variables that merely depend on a bad one are left out of ``partial`` silently.
    ``partial`` holds the variables that did resolve.
    """

    def __init__(self, errors: list[tuple[str, VariableError]], partial: dict[str, str]):
        self.errors = errors
        self.partial = partial
        super().__init__("\n".join(f"{name}: {error}" for name, error in errors))


@dataclass(slots=True)
class _Ref:
    """One ``${NAME...}``; ``body`` holds the parsed default/alt text of ``:-``/``:+``."""

    name: str
    offset: int
    op: str = ""  # "", ":-", ":+" or "/"
    body: list[_Node] = field(default_factory=list)
    pattern: str = ""
    replacement: str = ""


@dataclass(slots=True)
class _Expr:
    """One ``${{ source }}``."""

    source: str
    offset: int


_Node = Union[str, _Ref, _Expr]


def _unterminated(offset: int, opener: str = "${") -> VariableError:
    closer = "}}" if opener == "${{" else "}"
    return VariableError(f"unterminated '{opener}': missing '{closer}'", offset)


def _parse(text: str) -> list[_Node]:
    """The tree of literals, references and expressions in ``text``."""
    root: list[_Node] = []
    out = root
    # References whose default/alt text is still being read, innermost last.
    open_refs: list[_Ref] = []
    i, n = 0, len(text)
    while True:
        if open_refs:
            stop = _NESTED_STOP.search(text, i)
            j = stop.start() if stop else n
        else:
            j = text.find("$", i)
            j = n if j < 0 else j
        if j > i:
            out.append(text[i:j])
        if j >= n:
            break
        if text[j] == "}":
            open_refs.pop()
            out = open_refs[-1].body if open_refs else root
            i = j + 1
            continue
        follower = text[j + 1:j + 2]
        if follower == "$":
            out.append("$")
            i = j + 2
        elif follower != "{":
            out.append("$")
            i = j + 1
        elif text.startswith("{", j + 2):
            expr, i = _parse_expression(text, j)
            out.append(expr)
        else:
            ref, i = _parse_reference(text, j)
            out.append(ref)
            if ref.op in (":-", ":+"):
                open_refs.append(ref)
                out = ref.body
    if open_refs:
        # The outermost unclosed reference is the first problem in reading order.
        raise _unterminated(open_refs[0].offset)
    return root


def _parse_reference(text: str, start: int) -> tuple[_Ref, int]:
    """The reference whose ``${`` is at ``start``, and where reading continues.

    For ``:-`` and ``:+`` reading continues inside the default/alt text.
    """
    n = len(text)
    name_match = _NAME.match(text, start + 2)
    if name_match is None:
        at = start + 2
        if at >= n:
            raise _unterminated(start)
        if text[at] == "}":
            raise VariableError("empty variable name in '${}'", start)
        raise VariableError(
            f"invalid variable name starting with {text[at]!r}", at,
            "names match [A-Za-z_][A-Za-z0-9_]*")
    name = name_match.group()
    k = name_match.end()
    if k >= n or (text[k] == ":" and k + 1 >= n):
        raise _unterminated(start)
    c = text[k]
    if c == "}":
        return _Ref(name, start), k + 1
    if c == ":" and text[k + 1] in "-+":
        return _Ref(name, start, ":" + text[k + 1]), k + 2
    if c == "/":
        return _parse_replacement(text, start, name, k + 1)
    # Bash's colon-less forms differ subtly (unset vs empty); ask for the supported one.
    hint = f"write '${{{name}:{c}...}}'" if c in "-+" else None
    raise VariableError(
        f"unexpected {c!r} after '${{{name}': expected '}}', ':-', ':+' or '/'", k, hint)


def _parse_replacement(text: str, start: int, name: str, at: int) -> tuple[_Ref, int]:
    """``${NAME/pattern/replacement}`` from just after the first ``/``."""
    pattern, stop = _scan_literal(text, at, _PATTERN_STOP)
    if not pattern and stop >= 0:
        raise VariableError(
            f"empty pattern in '${{{name}/...}}'", at,
            f"'/' already replaces every occurrence; write '${{{name}/pattern/replacement}}'")
    if stop < 0:
        raise _unterminated(start)
    replacement = ""
    if text[stop] == "/":
        replacement, stop = _scan_literal(text, stop + 1, _REPLACEMENT_STOP)
        if stop < 0:
            raise _unterminated(start)
    return _Ref(name, start, "/", pattern=pattern, replacement=replacement), stop + 1


def _scan_literal(text: str, i: int, stops: re.Pattern[str]) -> tuple[str, int]:
    """Literal text up to the first unescaped stop character, and that character's index.

    ``\\/`` and ``\\}`` stand for ``/`` and ``}``; any other backslash is literal.
    The index is -1 when the text ends first.
    """
    parts: list[str] = []
    while True:
        found = stops.search(text, i)
        if found is None:
            return "".join(parts), -1
        j = found.start()
        parts.append(text[i:j])
        if text[j] != "\\":
            return "".join(parts), j
        escaped = text[j + 1:j + 2]
        if escaped in ("/", "}"):
            parts.append(escaped)
            i = j + 2
        else:
            parts.append("\\")
            i = j + 1


def _parse_expression(text: str, start: int) -> tuple[_Expr, int]:
    """The ``${{ ... }}`` at ``start``; ``}}`` inside a quoted string does not end it."""
    i = start + 3
    while True:
        found = _EXPRESSION_STOP.search(text, i)
        if found is None:
            raise _unterminated(start, "${{")
        if found.group() == "}}":
            break
        close = text.find(found.group(), found.end())
        if close < 0:
            raise VariableError("unterminated string in '${{ }}' expression", found.start())
        i = close + 1
    source = text[start + 3:found.start()].strip()
    if not source:
        raise VariableError("empty expression in '${{ }}'", start)
    return _Expr(source, start), found.end()


def _evaluate(node: _Expr, expression: Expression | None) -> str:
    if expression is None:
        raise VariableError("'${{ }}' expressions are not available here", node.offset)
    try:
        value = expression(node.source)
    except VariableError as exc:
        # The callback's message is the user's; only the place is ours to add.
        raise VariableError(exc.message, node.offset, exc.hint) from exc
    except ValueError as exc:
        raise VariableError(f"in '${{{{ {node.source} }}}}': {exc}", node.offset) from exc
    if not isinstance(value, str):
        raise TypeError(f"expression callback returned {type(value).__name__}, not str")
    return value


def _render(nodes: list[_Node], lookup: Lookup, expression: Expression | None,
            known: Iterable[str], limit: int) -> str:
    """The text of ``nodes``; defaults and alts are rendered only when chosen."""
    # Each frame is one node list being rendered and the pieces produced so far.
    stack: list[tuple[Iterable[_Node], list[str]]] = [(iter(nodes), [])]
    size = 0
    while True:
        items, out = stack[-1]
        for node in items:
            if isinstance(node, str):
                piece = node
            elif isinstance(node, _Expr):
                piece = _evaluate(node, expression)
            else:
                value = lookup(node.name)
                if node.op == ":-":
                    if not value:
                        stack.append((iter(node.body), []))
                        break
                    piece = value
                elif node.op == ":+":
                    if value:
                        stack.append((iter(node.body), []))
                        break
                    piece = ""
                elif value is None:
                    raise UndefinedVariable(node.name, node.offset, did_you_mean(node.name, known))
                elif node.op == "/":
                    grown = value.count(node.pattern) * (len(node.replacement) - len(node.pattern))
                    if size + len(value) + grown > limit:
                        raise _too_long(limit, node.offset)
                    piece = value.replace(node.pattern, node.replacement)
                else:
                    piece = value
            size += len(piece)
            if size > limit:
                raise _too_long(limit, getattr(node, "offset", None))
            out.append(piece)
        else:
            stack.pop()
            text = "".join(out)
            if not stack:
                return text
            # Already counted in ``size`` piece by piece.
            stack[-1][1].append(text)


def _too_long(limit: int, offset: int | None) -> VariableError:
    return VariableError(f"substituted value longer than {limit} characters", offset)


def substitute(text: str, lookup: Lookup, expression: Expression | None = None, *,
               known: Iterable[str] = ()) -> str:
    """``text`` with every variable reference, expression and ``$$`` replaced.

    ``lookup(name)`` gives a variable's value or None when undefined; values are
    inserted as they are, never expanded again. ``expression(source)`` evaluates a
    ``${{ source }}`` (raising VariableError, whose message is kept, or ValueError,
    which is prefixed with the expression, for a bad one); without it
    expressions are an error. ``known`` names the defined variables, for "did you
    mean" hints. Raises VariableError: the first syntax error if any, else the
    first lookup or expression problem in reading order.
    """
    if "$" not in text:
        return text
    return _render(_parse(text), lookup, expression, known, max(MAX_LENGTH, len(text)))


def references(text: str) -> list[str]:
    """Names referenced by ``text`` in reading order, each once, defaults/alts included.

    Raises VariableError when ``text`` is malformed, so it doubles as a syntax check.
    """
    if "$" not in text:
        return []
    names: dict[str, None] = {}
    stack = [iter(_parse(text))]
    while stack:
        for node in stack[-1]:
            if isinstance(node, _Ref):
                names.setdefault(node.name)
                if node.body:
                    stack.append(iter(node.body))
                    break
        else:
            stack.pop()
    return list(names)


class _Failed(Exception):
    """A variable cannot resolve because of an error already recorded elsewhere."""


class _TooDeep(Exception):
    """Resolution went deeper than MAX_DEPTH; carries the chain of names."""

    def __init__(self, chain: list[str]):
        super().__init__(" -> ".join(chain))
        self.chain = chain


class _LayerResolver:
    """Resolves every variable of a stack of layers, memoising each (name, layer)."""

    def __init__(self, layers: Sequence[Mapping[str, str]], expression: Expression | None):
        self._layers = list(layers)
        self._expression = expression
        # Each name and the highest-precedence layer defining it, in lowest-precedence-first
        # order: the order an environment is built up in, and the order of the file
        # (global_env before jobs, jobs before steps). A later update of a name keeps its place.
        self._names: dict[str, int] = {}
        for k in range(len(self._layers) - 1, -1, -1):
            self._names.update(dict.fromkeys(self._layers[k], k))
        self._done: dict[tuple[str, int], tuple[str, tuple[str, ...]]] = {}
        self._failed: set[tuple[str, int]] = set()
        self._errors: list[tuple[str, VariableError]] = []

    def _find(self, name: str, below: int = -1) -> int | None:
        """The highest-precedence layer after ``below`` that defines ``name``."""
        for k in range(below + 1, len(self._layers)):
            if name in self._layers[k]:
                return k
        return None

    def _record(self, name: str, layer: int, error: VariableError) -> None:
        error.layer = layer
        self._errors.append((name, error))

    def run(self) -> dict[str, str]:
        resolved: dict[str, str] = {}
        for name, k in self._names.items():
            raw = self._layers[k][name]
            if "$" not in raw:
                # Most values (system variables, plain settings) need nothing: skip the
                # memo and chain bookkeeping of _value, which would give `raw` back.
                resolved[name] = raw
                continue
            try:
                resolved[name] = self._value(name, k, ())[0]
            except _Failed:
                pass
            except _TooDeep as exc:
                # Not memoised as failed: the inner variables may be fine on their own.
                self._record(name, k, VariableError(
                    f"variable nesting deeper than {MAX_DEPTH}: {' -> '.join(exc.chain)}"))
        if self._errors:
            order = {name: index for index, name in enumerate(self._names)}
            self._errors.sort(key=lambda item: order[item[0]])
            raise VariableErrorGroup(self._errors, resolved)
        return resolved

    def _value(self, name: str, k: int, chain: tuple[tuple[str, int], ...]
               ) -> tuple[str, tuple[str, ...]]:
        """The resolved value of ``name`` as layer ``k`` defines it, and its deepest chain."""
        key = (name, k)
        if key in self._failed:
            raise _Failed
        names = [n for n, _ in chain]
        if key in self._done:
            value, deepest = self._done[key]
            if len(chain) + len(deepest) > MAX_DEPTH:
                raise _TooDeep((names + list(deepest))[:MAX_DEPTH + 1])
            return value, deepest
        if key in chain:
            start = chain.index(key)
            cycle = names[start:] + [name]
            self._record(name, k, VariableError(f"variable cycle: {' -> '.join(cycle)}"))
            raise _Failed
        if len(chain) >= MAX_DEPTH:
            raise _TooDeep(names + [name])
        raw = self._layers[k][name]
        if "$" not in raw:  # the common case: nothing to substitute
            self._done[key] = (raw, (name,))
            return self._done[key]
        here = chain + (key,)
        deepest_below: tuple[str, ...] = ()

        def lookup(ref: str) -> str | None:
            nonlocal deepest_below
            # A value naming its own variable means the lower layers' value: PATH=/x:${PATH}.
            layer = self._find(ref, k) if ref == name else self._names.get(ref)
            if layer is None:
                return None
            value, deepest = self._value(ref, layer, here)
            if len(deepest) > len(deepest_below):
                deepest_below = deepest
            return value

        try:
            value = substitute(self._layers[k][name], lookup, self._expression, known=self._names)
        except UndefinedVariable as exc:
            if exc.name == name:
                exc.hint = (f"'{name}' refers to itself, which means its value from a "
                            "lower-precedence layer, and no lower layer defines it")
            self._failed.add(key)
            self._record(name, k, exc)
            raise _Failed from None
        except VariableError as exc:
            self._failed.add(key)
            self._record(name, k, exc)
            raise _Failed from None
        except _Failed:
            self._failed.add(key)
            raise
        result = (value, (name,) + deepest_below)
        self._done[key] = result
        return result


def resolve_layers(layers: Sequence[Mapping[str, str]],
                   expression: Expression | None = None) -> dict[str, str]:
    """The merged, fully substituted environment of ``layers`` (highest precedence first).

    A name takes its value from the first layer defining it. References to other
    names see their merged values (late binding: overriding HOST in a job also
    changes a global URL built from ``${HOST}``); a reference to the variable's own
    name sees the next lower layer's value. Raises VariableErrorGroup with every
    bad variable. ``expression`` evaluates ``${{ }}`` in values; it cannot see the
    environment being resolved.
    """
    return _LayerResolver(layers, expression).run()


class Scope:
    """A resolved environment, used to substitute the other string fields of a job or step."""

    def __init__(self, resolved: Mapping[str, str], expression: Expression | None = None):
        self.resolved: dict[str, str] = dict(resolved)
        self._expression = expression

    def substitute(self, text: str) -> str:
        """``text`` with variables taken from this environment; raises VariableError."""
        return substitute(text, self.resolved.get, self._expression, known=self.resolved)
