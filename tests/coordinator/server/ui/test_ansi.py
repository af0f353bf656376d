"""Log lines to HTML: terminal colours as spans, everything else text, nothing a browser obeys."""
from __future__ import annotations

import html
import re
from html.parser import HTMLParser

import pytest
from hypothesis import given, settings, strategies as st

from coordinator.server.ui.ansi import PLAIN, AnsiState, ansi_line_to_html, ansi_to_html, strip_ansi

ESC = "\x1b"
CLASS = re.compile(r"ansi-(?:fg|bg)-(?:[0-9]|1[0-5])|ansi-(?:bold|dim|italic|underline|strike)")
STYLE = re.compile(r"(?:color|background-color):#[0-9a-f]{6}")


class Checked(HTMLParser):
    """Parses our output and fails on anything but balanced, un-nested, well-formed spans."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.depth = 0
        self.spans = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        assert tag == "span" and self.depth == 0, (tag, attrs)
        names = [name for name, _ in attrs]
        assert names and len(names) == len(set(names)) and set(names) <= {"class", "style"}, attrs
        for name, value in attrs:
            assert value, attrs
            if name == "class":
                assert all(CLASS.fullmatch(c) for c in value.split(" ")), value
            else:
                assert all(STYLE.fullmatch(s) for s in value.split(";")), value
        self.depth += 1
        self.spans += 1

    def handle_endtag(self, tag: str) -> None:
        assert tag == "span" and self.depth == 1, tag
        self.depth -= 1

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        raise AssertionError(f"self-closing <{tag}>")

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def handle_comment(self, data: str) -> None:
        raise AssertionError(f"comment {data!r}")

    def handle_decl(self, decl: str) -> None:
        raise AssertionError(f"declaration {decl!r}")

    def handle_pi(self, data: str) -> None:
        raise AssertionError(f"processing instruction {data!r}")

    def unknown_decl(self, data: str) -> None:
        raise AssertionError(f"declaration {data!r}")


def check(out: str) -> str:
    """Assert `out` is only text and our spans; return its text."""
    # No `<` or `>` but those of our own tags, whatever the parser makes of the rest.
    bare = re.sub(r'<span(?: class="[a-z0-9 -]+")?(?: style="[a-z#0-9:;-]+")?>|</span>', "", out)
    assert "<" not in bare and ">" not in bare, out
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", out), repr(out)
    parser = Checked()
    parser.feed(out)
    parser.close()
    assert parser.depth == 0
    return "".join(parser.text)


def spans(out: str) -> list[tuple[str, str]]:
    """(opening tag attributes, text) of each span; plain text as ("", text)."""
    found = []
    for match in re.finditer(r"<span([^>]*)>([^<]*)</span>|([^<]+)", out):
        if match.group(3) is not None:
            found.append(("", html.unescape(match.group(3))))
        else:
            found.append((match.group(1).strip(), html.unescape(match.group(2))))
    return found


# -- colours and styles -----------------------------------------------------------------


@pytest.mark.parametrize("code, css", [
    *((str(30 + n), f"ansi-fg-{n}") for n in range(8)),
    *((str(90 + n), f"ansi-fg-{n + 8}") for n in range(8)),
    *((str(40 + n), f"ansi-bg-{n}") for n in range(8)),
    *((str(100 + n), f"ansi-bg-{n + 8}") for n in range(8)),
    ("1", "ansi-bold"), ("2", "ansi-dim"), ("3", "ansi-italic"), ("4", "ansi-underline"), ("9", "ansi-strike"),
])
def test_basic_codes_become_classes(code: str, css: str) -> None:
    out = ansi_to_html(f"{ESC}[{code}mx{ESC}[0my")
    assert out == f'<span class="{css}">x</span>y'
    check(out)


def test_reset_forms() -> None:
    assert ansi_to_html(f"{ESC}[31ma{ESC}[mb") == '<span class="ansi-fg-1">a</span>b'  # ESC[m is reset
    assert ansi_to_html(f"{ESC}[31;42ma{ESC}[39mb{ESC}[49mc") == (
        '<span class="ansi-fg-1 ansi-bg-2">a</span><span class="ansi-bg-2">b</span>c')
    assert ansi_to_html(f"{ESC}[1;2;3;4;9ma{ESC}[22mb{ESC}[23mc{ESC}[24md{ESC}[29me") == (
        '<span class="ansi-bold ansi-dim ansi-italic ansi-underline ansi-strike">a</span>'
        '<span class="ansi-italic ansi-underline ansi-strike">b</span>'
        '<span class="ansi-underline ansi-strike">c</span><span class="ansi-strike">d</span>e')
    assert ansi_to_html(f"{ESC}[31;1;4ma{ESC}[0;32mb") == (
        '<span class="ansi-fg-1 ansi-bold ansi-underline">a</span><span class="ansi-fg-2">b</span>')


def test_overlapping_attributes_become_flat_spans() -> None:
    # bold on, red on, bold off, underline on, red off: never nested, always balanced.
    out = ansi_to_html(f"{ESC}[1mA{ESC}[31mB{ESC}[22mC{ESC}[4mD{ESC}[39mE{ESC}[0mF")
    assert spans(out) == [('class="ansi-bold"', "A"), ('class="ansi-fg-1 ansi-bold"', "B"), ('class="ansi-fg-1"', "C"),
                          ('class="ansi-fg-1 ansi-underline"', "D"), ('class="ansi-underline"', "E"), ("", "F")]
    check(out)


def test_redundant_sequences_do_not_split_spans() -> None:
    assert ansi_to_html(f"{ESC}[31ma{ESC}[31mb{ESC}[1m{ESC}[22mc") == '<span class="ansi-fg-1">abc</span>'
    assert ansi_to_html(f"{ESC}[31m{ESC}[0m") == ""


@pytest.mark.parametrize("sequence, style", [
    ("38;5;16", "color:#000000"), ("38;5;196", "color:#ff0000"), ("38;5;208", "color:#ff8700"),
    ("38;5;231", "color:#ffffff"), ("38;5;232", "color:#080808"), ("38;5;255", "color:#eeeeee"),
    ("48;5;21", "background-color:#0000ff"), ("38;2;1;2;3", "color:#010203"),
    ("48;2;255;128;0", "background-color:#ff8000"), ("38:2::10:20:30", "color:#0a141e"),
    ("38:2:10:20:30", "color:#0a141e"), ("38:5:208", "color:#ff8700"), ("48:2:0:0:0:255", "background-color:#0000ff"),
])
def test_256_colours_and_truecolor_are_inline_styles(sequence: str, style: str) -> None:
    out = ansi_to_html(f"{ESC}[{sequence}mx")
    assert out == f'<span style="{style}">x</span>'
    check(out)


def test_the_first_16_of_256_are_the_themed_palette() -> None:
    assert ansi_to_html(f"{ESC}[38;5;1mx{ESC}[48;5;9my") == (
        '<span class="ansi-fg-1">x</span><span class="ansi-fg-1 ansi-bg-9">y</span>')


def test_colour_codes_and_others_in_one_sequence() -> None:
    out = ansi_to_html(f"{ESC}[1;38;5;208;48;2;0;0;255;4mx")
    assert out == '<span class="ansi-bold ansi-underline" style="color:#ff8700;background-color:#0000ff">x</span>'


@pytest.mark.parametrize("sequence", ["38;5;256", "38;5;99999999999999", "38;2;256;0;0", "38;2;1;2", "38;5",
                                      "38;7;1", "38", "38;2;" + "9" * 5000 + ";0;0", "9" * 5000])
def test_malformed_colours_change_nothing_and_never_fail(sequence: str) -> None:
    out = ansi_to_html(f"{ESC}[32ma{ESC}[{sequence}mb")
    check(out)
    assert out.startswith('<span class="ansi-fg-2">a') and strip_ansi(f"{ESC}[{sequence}mb") == "b"


def test_underline_sub_parameters() -> None:
    assert ansi_to_html(f"{ESC}[4:3mx{ESC}[4:0my") == '<span class="ansi-underline">x</span>y'


def test_ignored_renditions_are_dropped() -> None:
    assert ansi_to_html(f"{ESC}[5;7;8mblink") == "blink"  # blink, inverse, hidden: not drawn


# -- carriage returns ---------------------------------------------------------------------


def test_only_what_follows_the_last_carriage_return_is_kept() -> None:
    assert ansi_to_html("10%\r 50%\r100% done") == "100% done"
    assert strip_ansi("10%\r 50%\r100% done") == "100% done"


def test_trailing_carriage_returns_rewrite_nothing() -> None:
    assert ansi_to_html("windows line\r") == "windows line"
    assert ansi_to_html("progress 1\rprogress 2\r\r") == "progress 2"
    assert ansi_to_html("a\r\nb\r") == "a\nb"
    assert strip_ansi("a\r\nb\r") == "a\nb"


def test_colour_set_before_a_carriage_return_still_counts() -> None:
    assert ansi_to_html(f"{ESC}[32mworking\r{ESC}[1mdone") == '<span class="ansi-fg-2 ansi-bold">done</span>'
    html_, state = ansi_line_to_html(f"{ESC}[31m 10%\r{ESC}[0m100%")
    assert html_ == "100%" and state == PLAIN


def test_a_carriage_return_hidden_in_a_removed_sequence_is_no_carriage_return() -> None:
    line = f"keep {ESC}]0;title\rstill title{ESC}\\this"
    assert ansi_to_html(line) == "keep this" and strip_ansi(line) == "keep this"


# -- across lines -------------------------------------------------------------------------


def test_state_carries_across_lines() -> None:
    first, state = ansi_line_to_html(f"{ESC}[1;34mheader")
    assert first == '<span class="ansi-fg-4 ansi-bold">header</span>'
    assert state == AnsiState(fg=4, bold=True)
    second, state = ansi_line_to_html("body", state)
    assert second == '<span class="ansi-fg-4 ansi-bold">body</span>'
    third, state = ansi_line_to_html(f"tail{ESC}[0m", state)
    assert third == '<span class="ansi-fg-4 ansi-bold">tail</span>' and state is not None and state == PLAIN
    fourth, state = ansi_line_to_html("plain", state)
    assert fourth == "plain" and state == PLAIN


def test_ansi_to_html_is_the_lines_in_turn() -> None:
    text = f"{ESC}[31mred\nstill red{ESC}[0m\n\nplain\n{ESC}[38;5;208morange"
    out = ansi_to_html(text)
    assert out.split("\n") == ['<span class="ansi-fg-1">red</span>', '<span class="ansi-fg-1">still red</span>', "",
                               "plain", '<span style="color:#ff8700">orange</span>']
    state = PLAIN
    for line, expected in zip(text.split("\n"), out.split("\n")):
        got, state = ansi_line_to_html(line, state)
        assert got == expected


def test_an_unchanged_state_is_returned_as_is() -> None:
    state = AnsiState(fg="#010203")
    assert ansi_line_to_html("x", state) == ('<span style="color:#010203">x</span>', state)
    assert ansi_line_to_html("", state)[1] is state


# -- other sequences ----------------------------------------------------------------------


@pytest.mark.parametrize("sequence", [
    f"{ESC}[2J", f"{ESC}[H", f"{ESC}[10;20H", f"{ESC}[?25l", f"{ESC}[K", f"{ESC}[1A", f"{ESC}[?1049h",
    f"{ESC}]0;window title\x07", f"{ESC}]2;title{ESC}\\", f"{ESC}P1$r{ESC}\\", f"{ESC}(B", f"{ESC}7", f"{ESC}c",
    "\x9b31m", "\x9b2J", "\x07", "\x00", "\x7f", "\x85", f"{ESC}[>4;1m",
])
def test_other_sequences_and_controls_are_removed(sequence: str) -> None:
    out = ansi_to_html(f"a{sequence}b")
    assert out == "ab", repr(out)
    assert strip_ansi(f"a{sequence}b") == "ab"


def test_a_lone_escape_is_removed() -> None:
    # Followed by a final byte it is a two-character sequence (ESC b), removed whole.
    assert ansi_to_html(f"ab{ESC}") == "ab" and ansi_to_html(f"a{ESC}\x01b") == "ab"
    assert ansi_to_html(f"a{ESC}b") == "a" and strip_ansi(f"ab{ESC}\ncd{ESC}") == "ab\ncd"


def test_an_unterminated_osc_swallows_the_rest_of_the_line_only() -> None:
    assert ansi_to_html(f"a{ESC}]0;title never ended\nb") == "a\nb"


def test_tabs_are_kept() -> None:
    assert ansi_to_html("a\tb") == "a\tb" and strip_ansi(f"{ESC}[1ma\tb") == "a\tb"


# -- security -----------------------------------------------------------------------------


@pytest.mark.parametrize("line, text", [
    ("<script>alert(1)</script>", "<script>alert(1)</script>"),
    ('<img src=x onerror="alert(1)">', '<img src=x onerror="alert(1)">'),
    ("a & b &amp; c &lt;", "a & b &amp; c &lt;"),
    ("\"quoted\" 'single'", "\"quoted\" 'single'"),
    (f"{ESC}]8;;javascript:alert(document.cookie){ESC}\\click me{ESC}]8;;{ESC}\\", "click me"),
    (f"{ESC}]8;;javascript:alert(1)\x07x{ESC}]8;;\x07", "x"),
    # Not CSI (`>` after an intermediate byte is no final byte): ESC [ is a sequence of
    # its own, removed; the rest is text.
    (f'{ESC}[31">m<b>', '31">m<b>'),
    (f'{ESC}[38;2;1;2;3"><script>m', '38;2;1;2;3"><script>m'),
    (f'{ESC}[38;2;1;2;3" m"><script>', '"><script>'),  # a CSI with an intermediate: removed
    (f"{ESC}[31m<{ESC}[0mscript>", "<script>"),
    (f"{ESC}[31m</span><span onclick=x>", "</span><span onclick=x>"),
    ("\x9b31m<svg onload=alert(1)>", "<svg onload=alert(1)>"),
    ("]]><!-- -->", "]]><!-- -->"),
])
def test_hostile_lines_render_as_text(line: str, text: str) -> None:
    out = ansi_to_html(line)
    assert check(out) == text
    for raw in ("javascript", "alert(document", "<script", "<img", "<b>", "<svg"):
        assert raw not in out
    assert strip_ansi(line) == text


def test_state_from_a_hostile_line_carries_nothing_but_numbers() -> None:
    _, state = ansi_line_to_html(f"{ESC}[38;2;255;0;0m{ESC}[48;5;208m")
    assert state == AnsiState(fg="#ff0000", bg="#ff8700")


# -- properties ---------------------------------------------------------------------------

FRAGMENTS = [
    ESC, f"{ESC}[", "[", "]", ";", ":", "m", "0", "1", "2", "3", "5", "8", "9", "38", "48", "255", "256", "\r", "\n",
    "\x07", "\\", f"{ESC}\\", f"{ESC}]8;;", "<", ">", "&", '"', "'", "amp;", "script", "\x9b", "\x9c", "\t",
    f"{ESC}[31m", f"{ESC}[0m", f"{ESC}[1;4m", f"{ESC}[38;5;", f"{ESC}[38;2;", f"{ESC}[2K", "x", "é", "\x00",
]
logs = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), max_size=40).map("".join)


@settings(max_examples=400, deadline=None)
@given(logs)
def test_any_text_gives_only_our_spans_and_the_terminals_text(text: str) -> None:
    out = ansi_to_html(text)
    assert check(out) == strip_ansi(text)
    assert out.count("\n") == text.count("\n")


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_any_unicode_text(text: str) -> None:
    assert check(ansi_to_html(text)) == strip_ansi(text)


@settings(max_examples=200, deadline=None)
@given(st.lists(logs, max_size=6))
def test_line_by_line_is_the_same_as_whole(lines: list[str]) -> None:
    lines = [line.replace("\n", "") for line in lines]
    state = PLAIN
    parts = []
    for line in lines:
        out, state = ansi_line_to_html(line, state)
        check(out)
        parts.append(out)
    assert "\n".join(parts) == ansi_to_html("\n".join(lines))


@settings(max_examples=200, deadline=None)
@given(logs)
def test_strip_ansi_leaves_no_control_but_tab_and_newline(text: str) -> None:
    plain = strip_ansi(text)
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", plain)
    assert strip_ansi(plain) == plain


@pytest.mark.parametrize("state", [AnsiState(fg='red;background:url("javascript:x")'), AnsiState(bg="#12345g"),
                                   AnsiState(fg=16), AnsiState(bg=-1), AnsiState(fg=2.5)])
def test_a_hand_made_state_cannot_put_text_in_the_markup(state: AnsiState) -> None:
    out, _ = ansi_line_to_html("x", state)
    assert out == "x"


@settings(max_examples=300, deadline=None)
@given(logs)
def test_sequences_are_the_terminal_modules(text: str) -> None:
    # ansi.py scans with coordinator/terminal.py's pattern behind a lookahead; same matches.
    from coordinator.server.ui.ansi import _SEQUENCE
    from coordinator.terminal import _SEQUENCES, clean

    assert [m.span() for m in _SEQUENCE.finditer(text)] == [m.span() for m in _SEQUENCES.finditer(text)]
    line = text.replace("\r", "").replace("\n", "")
    assert strip_ansi(line) == clean(line)  # what the CLI prints of the line, colours aside
