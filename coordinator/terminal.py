"""Text from pipelines, jobs and the state store, made safe to print on an operator's terminal.

Job names carry matrix values, log lines are whatever a job printed, reasons, worker
names, artifact paths and deployment details come from the state store: all of it is
written by people the CLI must not trust. A terminal obeys escape sequences in what it
prints: OSC sets the window title or plants a hyperlink (`ESC ] 8 ;; url ESC \\`), CSI
clears the screen or moves the cursor to overwrite earlier lines, DCS and friends reach
the terminal's own parsers, and C1 bytes (`\\x9b` is CSI) do the same in one character.

Every text path of the CLI passes untrusted text through this module:

- `clean(text)`: names, reasons, paths, table cells, messages: no control characters or
  sequences at all (C0 but tab, DEL, C1, every ESC sequence), newlines included;
- `clean_log_line(line, colour)`: a job's log line; with `colour` (a terminal, colour not
  disabled: `colour_enabled`) the job's SGR colour sequences are kept and reset at the
  end of the line, everything else goes;
- `clean_lines(text)`: multi-line output we compose (rendered plans): `clean` per line.

JSON output needs none of this: JSON escapes control characters itself, and
`--format json` must stay exactly what was stored.
"""
from __future__ import annotations

import os
import re
from typing import Mapping, TextIO

# Escape sequences, longest forms first; whatever they leave, `_CONTROLS` takes.
_SEQUENCES = re.compile(
    # CSI, 7- and 8-bit: ESC [ params intermediates final (SGR colours are CSI ... m)
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    # OSC, DCS, SOS, PM, APC: a string ended by BEL or ST (ESC \ or 0x9c). Unterminated,
    # it runs to the end of the text, as a terminal would swallow it.
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c|\Z)"
    # Any other escape sequence: ESC, intermediates, final (ESC ( B, ESC 7, ESC c, ...).
    r"|\x1b[ -/]*[0-~]"
)
# C0 controls except tab, DEL, and C1; a lone ESC is among them.
_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_CONTROLS_BUT_NEWLINE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# Select Graphic Rendition: colours and bold/underline, nothing else (`ESC [ 31;1 m`).
_SGR = re.compile(r"\x1b\[[0-9;:]*m")
RESET = "\x1b[0m"
_UNSAFE = _CONTROLS  # every sequence starts with one of these: text without any is safe


def clean(text: str) -> str:
    """`text` without any control character or escape sequence (tabs kept)."""
    if not _UNSAFE.search(text):
        return text  # the common case: one scan, no copy
    return _CONTROLS.sub("", _SEQUENCES.sub("", text))


def clean_lines(text: str) -> str:
    """Multi-line `text` with each line cleaned (the newlines between them kept)."""
    if not _UNSAFE.search(text):
        return text
    return _CONTROLS_BUT_NEWLINE.sub("", _SEQUENCES.sub("", text))


def clean_log_line(line: str, colour: bool = False) -> str:
    """One log line for a terminal: with `colour`, the job's SGR colours kept (and reset
    at the end of the line, so they cannot colour what follows); otherwise plain text."""
    if not _UNSAFE.search(line):
        return line
    if not colour:
        return clean(line)
    kept: list[str] = []
    last = 0
    for match in _SGR.finditer(line):
        kept.append(clean(line[last:match.start()]))
        kept.append(match.group())
        last = match.end()
    kept.append(clean(line[last:]))
    text = "".join(kept)
    return text + RESET if last else text


def colour_enabled(stream: TextIO | None, no_color: bool = False,
                   environ: Mapping[str, str] | None = None) -> bool:
    """Whether to keep a job's colours on `stream`: it is a terminal, `no_color` is off and
    `NO_COLOR` is unset or empty (https://no-color.org)."""
    env = os.environ if environ is None else environ
    if no_color or env.get("NO_COLOR", ""):
        return False
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
