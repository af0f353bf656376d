"""A job's log line, with its terminal colours, as HTML that can only ever be text and spans.

Log lines are whatever a job printed: escape sequences for colour, but also cursor moves,
window titles, OSC 8 hyperlinks (`ESC ] 8 ;; url ESC \\`, whose URL may be
`javascript:`), carriage-return progress bars, and text such as `<script>` or `">`.
The log view shows what a terminal would, and nothing a browser would obey:

- SGR colour and style sequences become `<span class="…" style="…">`; the classes are
  fixed names (`ansi-fg-0`…`ansi-fg-15`, `ansi-bg-0`…`ansi-bg-15`, `ansi-bold`,
  `ansi-dim`, `ansi-italic`, `ansi-underline`, `ansi-strike`) and a style is only ever
  `color:#rrggbb` or `background-color:#rrggbb` formatted from numbers, so no byte of the
  log reaches an attribute;
- every other escape sequence and control character is removed (the sequence patterns
  are coordinator/terminal.py's, which makes the same text safe for a terminal);
- of a line with carriage returns, only what follows the last one is kept (a progress
  bar shows its final state), though colour changes before it still count;
- all text is HTML-escaped.

Spans never nest: each run of text with one rendition is one span, closed before the
next, so the output is balanced whatever the input. A log streamed line by line keeps
its colours across lines through `AnsiState`: `ansi_line_to_html(line, state)` returns
the line's HTML (complete on its own) and the state the next line starts in.
"""
from __future__ import annotations

import re
from functools import lru_cache
from html import escape
from typing import NamedTuple

# The terminal module's patterns are the project's one definition of "an escape sequence"
# and "a control character"; sharing them keeps the CLI and the web UI agreeing on what a
# log line says.
from coordinator.terminal import _CONTROLS, _SEQUENCES, _SGR, _UNSAFE

# The same pattern, told where a sequence can start: every one begins with ESC or a C1
# byte, and the lookahead lets the regex engine skip ahead to those instead of trying
# every alternative at every character (about 1.7x faster on a log line).
_SEQUENCE = re.compile(r"(?=[\x1b\x90-\x9f])(?:" + _SEQUENCES.pattern + ")")

# A colour is None (the default), an int 0-15 (a palette colour: a class, so the page's
# theme decides the shade) or "#rrggbb" (256-colour cube and grey ramp, truecolor).
Colour = int | str | None


class AnsiState(NamedTuple):
    """The graphic rendition in force: what the next character will look like. A tuple,
    so that it is immutable, hashable and cheap to compare in the per-line loop."""

    fg: Colour = None
    bg: Colour = None
    bold: bool = False
    dim: bool = False
    italic: bool = False
    underline: bool = False
    strike: bool = False


PLAIN = AnsiState()

_HEX = re.compile(r"#[0-9a-f]{6}")
# Index of each field, for `_apply`'s list.
_FG, _BG, _BOLD, _DIM, _ITALIC, _UNDERLINE, _STRIKE = range(7)
_FLAGS = {1: (_BOLD, True), 2: (_DIM, True), 3: (_ITALIC, True), 4: (_UNDERLINE, True), 9: (_STRIKE, True),
          23: (_ITALIC, False), 24: (_UNDERLINE, False), 29: (_STRIKE, False)}


def _number(text: str) -> int:
    """An SGR parameter; empty is 0. Absurdly long ones are no code at all (and must not
    reach int(), which refuses over 4300 digits)."""
    text = text.lstrip("0")
    if not text:
        return 0
    return int(text) if len(text) <= 6 else -1


def _cube(index: int) -> str:
    """xterm's 256-colour palette above the first 16: a 6x6x6 cube, then 24 greys."""
    if index >= 232:
        grey = 8 + 10 * (index - 232)
        return f"#{grey:02x}{grey:02x}{grey:02x}"
    index -= 16
    r, g, b = (v and 55 + 40 * v for v in (index // 36, index // 6 % 6, index % 6))
    return f"#{r:02x}{g:02x}{b:02x}"


def _extended(parts: list[str]) -> tuple[Colour | bool, int]:
    """The colour of `5;N` or `2;R;G;B` (after a 38 or 48) and how many parts it used;
    False when malformed or out of range (the colour stays as it was)."""
    if not parts:
        return False, 0
    mode = _number(parts[0])
    if mode == 5 and len(parts) >= 2:
        n = _number(parts[1])
        if 0 <= n < 16:
            return n, 2
        return (_cube(n) if 16 <= n <= 255 else False), 2
    if mode == 2 and len(parts) >= 4:
        rgb = [_number(p) for p in parts[1:4]]
        if all(0 <= v <= 255 for v in rgb):
            return "#{:02x}{:02x}{:02x}".format(*rgb), 4
        return False, 4
    return False, len(parts)  # unknown mode: the rest cannot be read reliably


def _apply(params: str, state: list) -> None:
    """Apply one SGR sequence's parameters (`31;1`, `38;5;208`, `38:2::255:0:0`) to `state`."""
    parts = params.split(";")
    i = 0
    while i < len(parts):
        part = parts[i]
        i += 1
        if ":" in part:
            # ITU T.416 form: one parameter with sub-parameters, `38:2:[space]:R:G:B`,
            # `38:5:N`, `4:3` (curly underline).
            sub = part.split(":")
            code = _number(sub[0])
            if code in (38, 48):
                rest = sub[1:]
                if len(rest) >= 5 and _number(rest[0]) == 2:
                    rest = [rest[0], *rest[-3:]]  # drop the colour space id
                colour, _ = _extended(rest)
                if colour is not False:
                    state[_FG if code == 38 else _BG] = colour
            elif code == 4:
                state[_UNDERLINE] = _number(sub[1]) != 0 if len(sub) > 1 else True
            continue
        code = _number(part)
        if code == 0:
            state[:] = PLAIN
        elif code in _FLAGS:
            field, value = _FLAGS[code]
            state[field] = value
        elif code == 22:
            state[_BOLD] = state[_DIM] = False
        elif 30 <= code <= 37:
            state[_FG] = code - 30
        elif 90 <= code <= 97:
            state[_FG] = code - 90 + 8
        elif 40 <= code <= 47:
            state[_BG] = code - 40
        elif 100 <= code <= 107:
            state[_BG] = code - 100 + 8
        elif code == 39:
            state[_FG] = None
        elif code == 49:
            state[_BG] = None
        elif code in (38, 48):
            colour, used = _extended(parts[i:])
            i += used
            if colour is not False:
                state[_FG if code == 38 else _BG] = colour
        # Anything else (blink, inverse, fonts, …) is not drawn.


@lru_cache(maxsize=4096)
def _after(params: str, state: AnsiState) -> AnsiState:
    """The state after one SGR sequence; cached, as a log repeats a handful of them."""
    rendition = list(state)
    _apply(params, rendition)
    return AnsiState._make(rendition)


@lru_cache(maxsize=1024)
def _open(state: AnsiState) -> str:
    """The `<span …>` of a rendition, built from the state's numbers and flags only."""
    fg, bg, bold, dim, italic, underline, strike = state
    classes = []
    styles = []
    # Checked again here, since a caller may build an AnsiState by hand: only a palette
    # number or a #rrggbb ever reaches the markup.
    if type(fg) is int and 0 <= fg < 16:
        classes.append(f"ansi-fg-{fg}")
    elif isinstance(fg, str) and _HEX.fullmatch(fg):
        styles.append(f"color:{fg}")
    if type(bg) is int and 0 <= bg < 16:
        classes.append(f"ansi-bg-{bg}")
    elif isinstance(bg, str) and _HEX.fullmatch(bg):
        styles.append(f"background-color:{bg}")
    for on, name in ((bold, "ansi-bold"), (dim, "ansi-dim"), (italic, "ansi-italic"),
                     (underline, "ansi-underline"), (strike, "ansi-strike")):
        if on:
            classes.append(name)
    if not classes and not styles:
        return ""  # nothing to draw differently: no span
    tag = "<span"
    if classes:
        tag += f' class="{" ".join(classes)}"'
    if styles:
        tag += f' style="{";".join(styles)}"'
    return tag + ">"


def _span(text: str, state: AnsiState) -> str:
    tag = _open(state)
    return f"{tag}{escape(text)}</span>" if tag else escape(text)


def ansi_line_to_html(line: str, state: AnsiState = PLAIN) -> tuple[str, AnsiState]:
    """One log line (no newline) as HTML, starting in `state`; and the state after it."""
    if not _UNSAFE.search(line):
        # The common line: no escape sequence, no control character, no carriage return.
        return (_span(line, state) if line else ""), state

    # A terminal shows only what was written after the last carriage return (trailing
    # ones, as in `\r\n` line ends, rewrite nothing); `skip` counts the text before it.
    # Sequences go first: an OSC string may itself hold a carriage return.
    skip = 0
    if "\r" in line:
        skip = _SEQUENCE.sub("", line).rstrip("\r").rfind("\r") + 1

    # Text between sequences, each piece with the rendition it is drawn in.
    pieces: list[tuple[str, AnsiState]] = []
    now = state
    last = 0
    for match in _SEQUENCE.finditer(line):
        if match.start() > last:
            pieces.append((line[last:match.start()], now))
        sequence = match.group()
        if sequence[-1] == "m" and _SGR.fullmatch(sequence):
            now = _after(sequence[2:-1], now)
        last = match.end()
    if last < len(line):
        pieces.append((line[last:], now))

    out: list[str] = []
    run: list[str] = []
    shown = state
    for piece, rendition in pieces:
        if skip:
            dropped = min(skip, len(piece))
            skip -= dropped
            piece = piece[dropped:]
        piece = _CONTROLS.sub("", piece)
        if not piece:
            continue
        if rendition != shown and run:
            out.append(_span("".join(run), shown))
            run = []
        shown = rendition
        run.append(piece)
    if run:
        out.append(_span("".join(run), shown))
    return "".join(out), now


def ansi_to_html(text: str, state: AnsiState = PLAIN) -> str:
    """A whole log (lines separated by `\\n`) as HTML, colours carried across lines."""
    lines = []
    for line in text.split("\n"):
        html, state = ansi_line_to_html(line, state)
        lines.append(html)
    return "\n".join(lines)


def strip_ansi(text: str) -> str:
    """What a terminal would show of `text` as plain text: escape sequences and control
    characters removed, each line cut to what follows its last carriage return; newlines
    and tabs kept. The text of `ansi_to_html(text)`, exactly."""
    if not _UNSAFE.search(text):
        return text
    lines = []
    for line in text.split("\n"):
        line = _SEQUENCE.sub("", line)
        line = line[line.rstrip("\r").rfind("\r") + 1:]
        lines.append(_CONTROLS.sub("", line))
    return "\n".join(lines)
