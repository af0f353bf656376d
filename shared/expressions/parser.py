"""Parser: tokens to an abstract syntax tree of frozen dataclasses, and back to text.

Recursive descent with one function per precedence level, lowest first:
``||``, ``&&``, ``== !=``, ``< <= > >= in``, unary ``!``, postfix (call, ``.name``,
``[index]``). Nodes compare and hash by structure; ``offset`` (where the node starts
in its source) is carried for error messages but ignored by ``==``, so the same
expression written with different spacing gives equal trees.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Iterator

from .tokenizer import KEYWORDS, ExpressionError, Token, column, end_of_embedded, tokenize

MAX_DEPTH = 50
"""Deepest nesting accepted: brackets while parsing, and levels of the finished tree."""


@dataclass(frozen=True)
class Expression:
    """Base of every syntax tree node."""

    offset: int = field(default=0, compare=False, repr=False, kw_only=True)

    def __str__(self) -> str:
        return unparse(self)


@dataclass(frozen=True)
class String(Expression):
    value: str


@dataclass(frozen=True)
class Number(Expression):
    value: int | float


@dataclass(frozen=True)
class Boolean(Expression):
    value: bool


@dataclass(frozen=True)
class Null(Expression):
    pass


@dataclass(frozen=True)
class Root(Expression):
    """A bare name such as ``env`` or ``jobs``: one of the context's roots."""

    name: str


@dataclass(frozen=True)
class Property(Expression):
    """``target.name``."""

    target: Expression
    name: str


@dataclass(frozen=True)
class Index(Expression):
    """``target[index]``."""

    target: Expression
    index: Expression


@dataclass(frozen=True)
class Call(Expression):
    """``name(args...)``; only named functions can be called."""

    name: str
    args: tuple[Expression, ...] = ()


@dataclass(frozen=True)
class Not(Expression):
    operand: Expression


@dataclass(frozen=True)
class Compare(Expression):
    """A comparison or membership test: ``op`` is one of ``== != < <= > >= in``."""

    op: str
    left: Expression
    right: Expression


@dataclass(frozen=True)
class Logical(Expression):
    """``a && b && ...`` or ``a || b || ...``, kept flat so long chains stay shallow."""

    op: str
    operands: tuple[Expression, ...]


EQUALITY_OPERATORS = ("==", "!=")
RELATIONAL_OPERATORS = ("<", "<=", ">", ">=", "in")


def parse(source: str) -> Expression:
    """Parse ``source`` into a syntax tree; raises ExpressionError on a syntax error.

    Results are cached, so parsing the same text again is cheap.
    """
    if not isinstance(source, str):
        raise TypeError(f"an expression is a str, not {type(source).__name__}")
    return _parse_cached(source)


_WRAPPER_START = re.compile(r"\s*\$\{\{")


def condition_source(source: str) -> str:
    """The expression of a job condition, with a ``${{ }}`` wrapper blanked out.

    A condition is an expression. As GitHub allows in ``if:``, it may also be wrapped
    whole in ``${{ }}``: ``${{ env.A == 'x' }}`` is the condition ``env.A == 'x'``. The
    wrapper is replaced by spaces, so that error columns still count in ``source``.
    Raises ExpressionError when a wrapper is not closed or does not wrap everything.
    """
    opened = _WRAPPER_START.match(source)
    if opened is None:
        return source
    start = opened.end()
    end = end_of_embedded(source, start)
    rest = end + 2
    if source[rest:].strip():
        extra = rest + len(source[rest:]) - len(source[rest:].lstrip())
        raise ExpressionError(
            f"unexpected text after the '}}}}' that closes '${{{{' at column {column(extra)} "
            "(a condition wrapped in '${{ }}' must be wrapped whole: put all of it inside, "
            "or leave '${{ }}' out)",
            extra,
        )
    return " " * start + source[start:end]


def parse_condition(source: str) -> Expression:
    """Parse a job condition, bare or wrapped whole in ``${{ }}`` (see condition_source)."""
    return parse(condition_source(source))


@functools.lru_cache(maxsize=1024)
def _parse_cached(source: str) -> Expression:
    try:
        tree = _Parser(tokenize(source)).parse()
    except RecursionError:
        # MAX_DEPTH keeps the parser far from the interpreter's limit; this only
        # triggers when parse() is itself called from very deep in a stack.
        raise ExpressionError("expression nested too deeply", 0) from None
    _check_depth(tree)
    return tree


class _Parser:
    def __init__(self, tokens: list[Token]):
        self.tokens = tokens
        self.pos = 0
        self.nesting = 0

    def peek(self, ahead: int = 0) -> Token:
        return self.tokens[min(self.pos + ahead, len(self.tokens) - 1)]

    def advance(self) -> Token:
        token = self.tokens[self.pos]
        if token.kind != "eof":
            self.pos += 1
        return token

    def parse(self) -> Expression:
        if self.peek().kind == "eof":
            raise ExpressionError("empty expression", 0)
        tree = self.logical("||", self.and_)
        token = self.peek()
        if token.kind != "eof":
            hint = ""
            if token.kind in ("name", "string", "number", "true", "false", "null", "(", "!"):
                hint = " (expected an operator such as '==' or '&&')"
            raise ExpressionError(f"unexpected {token.describe()} at column {column(token.offset)}{hint}", token.offset)
        return tree

    def and_(self) -> Expression:
        return self.logical("&&", self.equality)

    def logical(self, op: str, operand) -> Expression:
        operands = [operand()]
        while self.peek().kind == op:
            self.advance()
            operands.append(operand())
        if len(operands) == 1:
            return operands[0]
        return Logical(op, tuple(operands), offset=operands[0].offset)

    def equality(self) -> Expression:
        return self.binary(EQUALITY_OPERATORS, self.relational)

    def relational(self) -> Expression:
        return self.binary(RELATIONAL_OPERATORS, self.unary)

    def binary(self, ops: tuple[str, ...], operand) -> Expression:
        left = operand()
        while self.peek().kind in ops:
            op = self.advance()
            left = Compare(op.kind, left, operand(), offset=op.offset)
        return left

    def unary(self) -> Expression:
        # A loop, not recursion: '!!!!...' must not cost a stack frame per '!'.
        bangs = []
        while self.peek().kind == "!":
            bangs.append(self.advance().offset)
        node = self.postfix()
        for offset in reversed(bangs):
            node = Not(node, offset=offset)
        return node

    def postfix(self) -> Expression:
        if self.peek().kind == "name" and self.peek(1).kind == "(":
            node = self.call()
        else:
            node = self.primary()
        while True:
            token = self.peek()
            if token.kind == ".":
                self.advance()
                name = self.advance()  # the tokenizer guarantees a name after '.'
                node = Property(node, name.value, offset=name.offset)
            elif token.kind == "[":
                self.open(token)
                self.advance()
                index = self.logical("||", self.and_)
                self.close("]", token)
                node = Index(node, index, offset=token.offset)
            elif token.kind == "(":
                raise ExpressionError(
                    f"unexpected '(' at column {column(token.offset)} "
                    "(only named functions can be called, like contains(a, b))",
                    token.offset,
                )
            else:
                return node

    def call(self) -> Expression:
        name = self.advance()
        paren = self.advance()
        self.open(paren)
        args: list[Expression] = []
        if self.peek().kind != ")":
            while True:
                args.append(self.logical("||", self.and_))
                if self.peek().kind != ",":
                    break
                self.advance()
        token = self.peek()
        if token.kind != ")":
            raise ExpressionError(
                f"expected ',' or ')' in the call to {name.value}() at column {column(token.offset)}, "
                f"found {token.describe()}",
                token.offset,
            )
        self.advance()
        self.nesting -= 1
        return Call(name.value, tuple(args), offset=name.offset)

    def primary(self) -> Expression:
        token = self.advance()
        kind = token.kind
        if kind == "string":
            return String(token.value, offset=token.offset)
        if kind == "number":
            return Number(token.value, offset=token.offset)
        if kind in ("true", "false"):
            return Boolean(kind == "true", offset=token.offset)
        if kind == "null":
            return Null(offset=token.offset)
        if kind == "name":
            return Root(token.value, offset=token.offset)
        if kind == "(":
            self.open(token)
            inner = self.logical("||", self.and_)
            self.close(")", token)
            return inner
        raise ExpressionError(f"unexpected {token.describe()} at column {column(token.offset)}", token.offset)

    def open(self, bracket: Token) -> None:
        self.nesting += 1
        if self.nesting > MAX_DEPTH:
            raise ExpressionError(_too_deep(bracket.offset), bracket.offset)

    def close(self, kind: str, opener: Token) -> None:
        token = self.peek()
        if token.kind != kind:
            raise ExpressionError(
                f"expected '{kind}' to close '{opener.kind}' from column {column(opener.offset)}, "
                f"found {token.describe()} at column {column(token.offset)}",
                token.offset,
            )
        self.advance()
        self.nesting -= 1


def _too_deep(offset: int) -> str:
    return f"expression nested too deeply (more than {MAX_DEPTH} levels) at column {column(offset)}"


def children(node: Expression) -> tuple[Expression, ...]:
    """The direct sub-expressions of ``node``, in source order."""
    if isinstance(node, Property):
        return (node.target,)
    if isinstance(node, Not):
        return (node.operand,)
    if isinstance(node, Index):
        return (node.target, node.index)
    if isinstance(node, Compare):
        return (node.left, node.right)
    if isinstance(node, Logical):
        return node.operands
    if isinstance(node, Call):
        return node.args
    return ()


def walk(node: Expression) -> Iterator[Expression]:
    """Every node of the tree, parents before children; iterative, so any depth is safe."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(reversed(children(current)))


def _check_depth(tree: Expression) -> None:
    # Unparenthesised chains (!!!!a, a.b.c.d..., a == b == c ...) build depth
    # without brackets; cap them so every recursive consumer stays shallow.
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ExpressionError(_too_deep(node.offset), node.offset)
        stack.extend((child, depth + 1) for child in children(node))


def referenced_jobs(expr: Expression) -> set[str]:
    """Names of the jobs an expression reads, as ``jobs.NAME...`` or ``jobs['NAME']...``."""
    names: set[str] = set()
    for node in walk(expr):
        if isinstance(node, Property) and node.target == Root("jobs"):
            names.add(node.name)
        elif isinstance(node, Index) and node.target == Root("jobs") and isinstance(node.index, String):
            names.add(node.index.value)
    return names


_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z", re.ASCII)
_PROPERTY_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*\Z", re.ASCII)
_ATOMS = (String, Number, Boolean, Null, Root, Property, Index, Call)


def unparse(expr: Expression) -> str:
    """Canonical source text for ``expr``; parsing it gives back an equal tree.

    A property name that cannot be written after '.' is written as ``['name']``,
    which evaluates the same but parses to an Index node.
    """
    return _unparse(expr, 0)


def _unparse(node: Expression, depth: int) -> str:
    if depth > MAX_DEPTH:
        raise ExpressionError(_too_deep(node.offset), node.offset)
    depth += 1
    if isinstance(node, String):
        return quote(node.value)
    if isinstance(node, Number):
        value = node.value
        if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
            raise ExpressionError(f"{value} cannot be written as an expression literal", node.offset)
        return repr(value) if isinstance(value, float) else str(int(value))
    if isinstance(node, Boolean):
        return "true" if node.value else "false"
    if isinstance(node, Null):
        return "null"
    if isinstance(node, Root):
        if not _NAME_RE.match(node.name) or node.name in KEYWORDS:
            raise ExpressionError(f"{node.name!r} cannot be written as a name", node.offset)
        return node.name
    if isinstance(node, Property):
        if _PROPERTY_RE.match(node.name):
            return f"{_target(node.target, depth)}.{node.name}"
        return f"{_target(node.target, depth)}[{quote(node.name)}]"
    if isinstance(node, Index):
        return f"{_target(node.target, depth)}[{_unparse(node.index, depth)}]"
    if isinstance(node, Call):
        return f"{node.name}({', '.join(_unparse(arg, depth) for arg in node.args)})"
    if isinstance(node, Not):
        inner = _unparse(node.operand, depth)
        return f"!{inner}" if isinstance(node.operand, (*_ATOMS, Not)) else f"!({inner})"
    if isinstance(node, Compare):
        return f"{_operand(node.left, depth)} {node.op} {_operand(node.right, depth)}"
    if isinstance(node, Logical):
        return f" {node.op} ".join(_operand(operand, depth) for operand in node.operands)
    raise ExpressionError(f"not an expression node: {type(node).__name__}", 0)


def _operand(node: Expression, depth: int) -> str:
    # Always bracket nested binary nodes: simpler than minimal brackets, and it keeps
    # '(a && b) && c' distinct from the flat 'a && b && c'.
    text = _unparse(node, depth)
    return f"({text})" if isinstance(node, (Compare, Logical)) else text


def _target(node: Expression, depth: int) -> str:
    text = _unparse(node, depth)
    # A number before '.' would read as a decimal point: (1).x, not 1.x.
    return text if isinstance(node, (Root, Property, Index, Call, String, Boolean, Null)) else f"({text})"


def quote(text: str) -> str:
    """``text`` as a single-quoted expression string literal (a quote doubled, as in GitHub)."""
    return "'" + text.replace("'", "''") + "'"
