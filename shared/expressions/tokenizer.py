"""Tokenizer: the first stage of the expression language, source text to tokens.

Also home of :class:`ExpressionError`, the one exception every stage raises, because
the tokenizer is the module every other stage already depends on.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

MAX_SOURCE_LENGTH = 4096
"""Longest expression accepted, in characters."""

KEYWORDS = frozenset({"true", "false", "null", "in"})

# Longest first, so that '<=' wins over '<'.
OPERATORS = ("==", "!=", "<=", ">=", "&&", "||", "<", ">", "!", "(", ")", "[", "]", ".", ",")

_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?", re.ASCII)
# '-' is allowed inside names (as in GitHub: jobs.build-linux.status) because the
# language has no subtraction, so it cannot be ambiguous.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*", re.ASCII)
# After '.', a name may also start with a digit: job names like '3d-render' are valid.
_PROPERTY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*", re.ASCII)
_WORD = re.compile(r"-?[A-Za-z0-9_.]*", re.ASCII)
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_WHITESPACE = frozenset(" \t\r\n")
# Escapes of double-quoted strings, a Conveyor addition. In single-quoted strings a
# backslash is an ordinary character, as in GitHub: '\d+' is the four characters.
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t"}
# Single characters users type from other languages; each gets a pointed hint.
_LOOKALIKES = {"=": "==", "&": "&&", "|": "||"}


class ExpressionError(Exception):
    """A problem with an expression: a syntax error, a failed check, or an evaluation failure.

    ``offset`` is the 0-based position in the expression source the problem is about,
    so callers can map it to a line and column in the pipeline file.
    """

    def __init__(self, message: str, offset: int = 0):
        super().__init__(message)
        self.message = message
        self.offset = offset

    def __reduce__(self):  # keep ``offset`` when errors cross a process boundary
        return (type(self), (self.message, self.offset))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExpressionError):
            return NotImplemented
        return (type(self), self.message, self.offset) == (type(other), other.message, other.offset)

    def __hash__(self) -> int:
        return hash((self.message, self.offset))


@dataclass(frozen=True, slots=True)
class Token:
    """One token. ``kind`` is 'string', 'number', 'name', a keyword, an operator, or 'eof'."""

    kind: str
    value: object
    offset: int

    def describe(self) -> str:
        """How the token is named in an error message."""
        if self.kind == "eof":
            return "end of expression"
        if self.kind == "string":
            return f"string {_short(repr(self.value))}"
        if self.kind == "number":
            return f"number {self.value!r}"
        if self.kind == "name":
            return f"name '{self.value}'"
        return f"'{self.kind}'"


def column(offset: int) -> int:
    """The 1-based column users see for a 0-based offset."""
    return offset + 1


def tokenize(source: str) -> list[Token]:
    """Split ``source`` into tokens, ending with an 'eof' token; raises ExpressionError."""
    if len(source) > MAX_SOURCE_LENGTH:
        raise ExpressionError(
            f"expression is too long ({len(source)} characters, the limit is {MAX_SOURCE_LENGTH})",
            MAX_SOURCE_LENGTH,
        )
    tokens: list[Token] = []
    i, n = 0, len(source)
    while True:
        while i < n and source[i] in _WHITESPACE:
            i += 1
        if tokens and tokens[-1].kind == ".":
            # Whatever follows '.' is a property name, keywords included (env.in, jobs.3d).
            match = _PROPERTY.match(source, i)
            if match is None:
                raise ExpressionError(f"expected a property name after '.' at column {column(i)}", i)
            tokens.append(Token("name", match.group(), i))
            i = match.end()
            continue
        if i >= n:
            tokens.append(Token("eof", None, n))
            return tokens
        char = source[i]
        if char in "'\"":
            value, i_end = _string(source, i)
            tokens.append(Token("string", value, i))
            i = i_end
        elif _is_digit(char) or (char == "-" and _is_digit(source[i + 1 : i + 2])):
            value, i_end = _number(source, i)
            tokens.append(Token("number", value, i))
            i = i_end
        elif (match := _NAME.match(source, i)) is not None:
            word = match.group()
            tokens.append(Token(word, None, i) if word in KEYWORDS else Token("name", word, i))
            i = match.end()
        else:
            operator = next((op for op in OPERATORS if source.startswith(op, i)), None)
            if operator is None:
                raise ExpressionError(_bad_character(source, i), i)
            tokens.append(Token(operator, operator, i))
            i += len(operator)


def _string(source: str, start: int) -> tuple[str, int]:
    """Decode the quoted string starting at ``start``; returns (value, end offset).

    In '...' only '' is special (a quote); in "..." backslash escapes are.
    """
    quote = source[start]
    escape_char = "\\" if quote == '"' else quote
    parts: list[str] = []
    i, n = start + 1, len(source)
    while True:
        # Copy the run of ordinary characters in one slice: strings can be most of 4 KiB.
        j = i
        while j < n and source[j] != quote and source[j] != escape_char:
            j += 1
        parts.append(source[i:j])
        if j >= n:
            raise ExpressionError(f"unterminated string (opened at column {column(start)})", start)
        if quote == '"' and source[j] == "\\":
            if j + 1 >= n:
                raise ExpressionError(f"unterminated string (opened at column {column(start)})", start)
            escape = source[j + 1]
            if escape not in _ESCAPES:
                raise ExpressionError(
                    f"unknown escape '\\{escape}' at column {column(j)} "
                    "(known in \"...\": \\\\ \\' \\\" \\n \\t; in '...' a backslash is "
                    "an ordinary character)",
                    j,
                )
            parts.append(_ESCAPES[escape])
            i = j + 2
        elif quote == "'" and source.startswith("''", j):
            # GitHub's way of writing a quote inside a single-quoted string.
            parts.append("'")
            i = j + 2
        else:
            return "".join(parts), j + 1


def _number(source: str, start: int) -> tuple[int | float, int]:
    """Read the number starting at ``start``; returns (value, end offset)."""
    match = _NUMBER.match(source, start)
    assert match is not None  # the caller saw a digit
    end = match.end()
    text = match.group()
    # '1.2.3' is almost always an unquoted version string; '12abc' a typo.
    if end < len(source) and (
        source[end] in _NAME_CHARS or (source[end] == "." and _is_digit(source[end + 1 : end + 2]))
    ):
        shown = _WORD.match(source, start).group()
        raise ExpressionError(
            f"invalid number '{shown}' at column {column(start)} (quote text like '{shown}')", start
        )
    try:
        if any(c in text for c in ".eE"):
            value: int | float = float(text)
            if value in (float("inf"), float("-inf")):
                raise ExpressionError(f"number '{text}' at column {column(start)} is too large", start)
        else:
            value = int(text)
    except ValueError:  # more digits than Python converts
        raise ExpressionError(f"number '{_short(text)}' at column {column(start)} is too large", start) from None
    return value, end


def _is_digit(char: str) -> bool:
    # str.isdigit() also accepts '²' and other non-ASCII digits, which _NUMBER rejects.
    return len(char) == 1 and "0" <= char <= "9"


def _bad_character(source: str, i: int) -> str:
    char = source[i]
    if char in _LOOKALIKES:
        return f"unexpected '{char}' at column {column(i)} (did you mean '{_LOOKALIKES[char]}'?)"
    if char == "-":
        return f"unexpected '-' at column {column(i)} (there is no arithmetic; quote text like '-x')"
    if char == "}":
        return f"unexpected '}}' at column {column(i)}"
    return f"unexpected character {char!r} at column {column(i)}"


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def end_of_embedded(text: str, start: int) -> int:
    """Offset of the ``}}`` closing a ``${{ ... }}`` whose expression starts at ``start``.

    Quoted strings are skipped, so ``${{ format('{{x}}') }}`` ends at the right ``}}``.
    Raises ExpressionError (offset relative to ``text``) when there is no closing ``}}``.
    """
    i, n = start, len(text)
    while i < n:
        char = text[i]
        if char in "'\"":
            i = _skip_string(text, i)
        elif text.startswith("}}", i):
            return i
        else:
            i += 1
    raise ExpressionError("missing '}}' to close '${{'", max(start - 3, 0))


def _skip_string(text: str, start: int) -> int:
    quote = text[start]
    i, n = start + 1, len(text)
    while i < n:
        if text[i] == "\\" and quote == '"':
            i += 2
        elif text[i] == quote:
            if quote == "'" and text.startswith("''", i):
                i += 2
            else:
                return i + 1
        else:
            i += 1
    raise ExpressionError(f"unterminated string (opened at column {column(start)})", start)
