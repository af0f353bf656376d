"""coordinator/terminal.py: what may reach an operator's terminal of untrusted text."""
from __future__ import annotations

import io
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.terminal import RESET, clean, clean_lines, clean_log_line, colour_enabled

PAYLOADS = {
    "title": "\x1b]0;pwned\x07",
    "clear": "\x1b[2J",
    "link": "\x1b]8;;http://evil\x1b\\",
    "c1 csi": "\x9b2J",
    "dcs": "\x1bPq#0;2;0;0;0\x1b\\",
    "apc": "\x1b_payload\x1b\\",
    "charset": "\x1b(0",
    "reset": "\x1bc",
    "cursor save": "\x1b7",
    "8-bit osc": "\x9d0;pwned\x9c",
}
UNSAFE = {chr(c) for c in [*range(0x00, 0x09), *range(0x0a, 0x20), *range(0x7f, 0xa0)]}


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_sequences_are_removed_whole(payload: str) -> None:
    assert clean(f"before{payload}after") == "beforeafter"
    assert clean_log_line(f"before{payload}after", colour=True) == "beforeafter"


def test_an_unterminated_string_sequence_takes_the_rest_of_the_line() -> None:
    # As a terminal would: everything after an unterminated OSC is its payload.
    assert clean("before\x1b]0;pwned after") == "before"


def test_plain_text_and_tabs_pass_unchanged() -> None:
    text = "build[PY=3.12]\tok — ünïcode ✓"
    assert clean(text) is text and clean_log_line(text, colour=True) is text


def test_newlines_go_except_in_clean_lines() -> None:
    assert clean("a\nb\r\nc") == "abc"
    assert clean_lines("a\x1b[2J\nb\x07") == "a\nb"


def test_colour_is_kept_only_when_asked_and_reset_at_the_end() -> None:
    line = "\x1b[1;31mFAIL\x1b[0m test_x \x1b[32mok"
    assert clean_log_line(line) == "FAIL test_x ok"
    assert clean_log_line(line, colour=True) == line + RESET
    # SGR is the only CSI kept: a cursor move dressed like it is not.
    assert clean_log_line("a\x1b[2Ab\x1b[31mc", colour=True) == "ab\x1b[31mc" + RESET


def test_colour_follows_the_terminal_and_no_color() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert colour_enabled(Tty(), environ={})
    assert not colour_enabled(io.StringIO(), environ={})
    assert not colour_enabled(Tty(), environ={"NO_COLOR": "1"})
    assert colour_enabled(Tty(), environ={"NO_COLOR": ""})  # no-color.org: set and non-empty
    assert not colour_enabled(Tty(), no_color=True, environ={})
    assert not colour_enabled(None, environ={})


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(["a", " ", "\t", "\x1b", "[", "]", "\\", "\x07", "\x9b", "\x9c", "\x9d",
                                         "0", ";", "m", "2", "J", "P", "\x00", "\r", "\n", "\x7f", "8"]),
               max_size=40))
def test_nothing_unsafe_survives(text: str) -> None:
    for out in (clean(text), clean_log_line(text)):
        assert not UNSAFE & set(out)
    coloured = clean_log_line(text, colour=True)
    # Only SGR sequences may keep an ESC: take them out and nothing unsafe is left.
    assert not UNSAFE & set(re.sub(r"\x1b\[[0-9;:]*m", "", coloured))
