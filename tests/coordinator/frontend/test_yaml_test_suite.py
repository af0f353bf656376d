"""The official yaml-test-suite (vendored in yaml_test_suite/) against load_yaml.

Every valid case either loads exactly the data the suite expects, or is refused for a
reason listed here and in docs/yaml.md ("What is refused"). Every invalid case is
refused. A refusal is recognised by Conveyor's own words, never by libyaml's: a case
that starts loading, loads other data, or is refused for another reason fails.
"""
from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from coordinator.frontend.diagnostics import Diagnostics
from coordinator.frontend.yaml_source import load_yaml

SUITE = Path(__file__).parent / "yaml_test_suite"


@dataclass(frozen=True)
class Refusal:
    """Why a valid case is refused, and the start of Conveyor's message that says so."""

    message: str  # a regular expression matched at the start of every error's message
    reason: str


# Libyaml's own words follow this prefix; they are not part of the contract.
_SYNTAX = r"invalid YAML: "

REFUSAL_CLASSES: dict[str, Refusal] = {
    # Refused by design.
    "several-documents": Refusal(
        r"expected one YAML document$", "a pipeline file holds exactly one document"),
    "no-document": Refusal(
        r"expected one YAML document, but the file has none$",
        "a pipeline file holds exactly one document"),
    "tag": Refusal(
        r"tag '[^']+' is not allowed$",
        "only the standard tags of plain data; nothing in a file constructs an object"),
    "complex-key": Refusal(
        r"a mapping key must be a scalar, not a (sequence|mapping)$",
        "keys are scalars, so that the data is plain Python (and JSON)"),
    "duplicate-anchor": Refusal(
        r"duplicate anchor '&[^']+' \(first defined at line \d+\)$",
        "redefining an anchor is allowed by YAML 1.2 but refused as confusing"),
    # libyaml reads these as something else than YAML 1.2 does: refused, not misloaded.
    "question-mark-in-flow": Refusal(
        r"'\?[^']*' in a flow collection must be quoted$",
        "libyaml reads '?x' in a flow collection as an explicit key, YAML as the string"),
    "anchor-name": Refusal(
        r"(anchor|alias) name '[&*][^']+' is not supported$",
        "libyaml ends an anchor name at ':' and reads the rest as a scalar"),
    # libyaml cannot parse these valid documents: reported in Conveyor's words.
    "directive": Refusal(
        r"directive '%[^']*' is not supported$",
        "libyaml fails on reserved directives, which YAML says to ignore (W4TN: a line "
        "of a top-level block scalar that starts with '%')"),
    "yaml-version": Refusal(
        r"YAML version \d+\.\d+ is not supported$",
        "libyaml fails on %YAML 1.3, which YAML says to read as 1.2 with a warning"),
    "tab-indentation": Refusal(
        r"a tab character cannot indent a line$",
        "libyaml fails on a tab at the start of a line, even where YAML allows it: "
        "before flow content or on a blank line"),
    "block-scalar-tab": Refusal(
        r"a tab character cannot indent the text of a block scalar$",
        "libyaml fails on a tab in a block scalar's first content line or leading "
        "empty lines, which YAML reads as text"),
    # libyaml cannot parse these valid documents: its syntax error, after Conveyor's prefix.
    "empty-key": Refusal(_SYNTAX, "libyaml fails on an empty (null) implicit key: ': x'"),
    "multi-line-flow-key": Refusal(
        _SYNTAX, "libyaml fails on a flow mapping key over several lines, or with its ':' "
                 "on a later line"),
    "adjacent-colon": Refusal(
        _SYNTAX, "libyaml fails in a flow collection on a plain scalar that starts with "
                 "':' (':x', '::vector') and on a value right after '\"key\":'"),
    "empty-flow-value": Refusal(
        _SYNTAX, "libyaml fails on ':' right before ',' in a flow mapping ('key:,')"),
    "zero-indented-block-scalar": Refusal(
        _SYNTAX, "libyaml fails on a top-level block scalar whose text starts in column 1"),
    "bare-document": Refusal(
        _SYNTAX, "libyaml fails on a document after '...' without a '---' line (these "
                 "files have several documents anyway)"),
    "document-end-only": Refusal(
        _SYNTAX, "libyaml fails on a file that is only a '...' line (a file without a "
                 "document anyway)"),
    "anchor-characters": Refusal(
        _SYNTAX, "libyaml allows only letters, digits, '-' and '_' in anchor names"),
    "tab-separation": Refusal(
        _SYNTAX, "libyaml fails on a tab right after a block indicator ('-\\tx', ':\\tx')"),
}

REFUSED: dict[str, str] = {
    **dict.fromkeys(["35KP", "5TYM", "6WLZ", "6XDY", "6ZKB", "9DXL", "9KAX", "9WXW", "JHB9",
                     "KSS4", "L383", "PUW8", "RZT7", "U9NS"], "several-documents"),
    **dict.fromkeys(["8G76", "98YD", "AVM7"], "no-document"),
    **dict.fromkeys(["2XXW", "565N", "6CK3", "7FWL", "C4HZ", "CC74", "CUP7", "J7PZ", "M5C3",
                     "P76L", "UGM3", "Z67P", "Z9M4"], "tag"),
    **dict.fromkeys(["4FJ6", "6BFJ", "6PBE", "9MMW", "KK5P", "LX3P", "M2N8/01", "M5DY",
                     "Q9WF", "RZP5", "SBG9", "V9D5", "X38W", "XW4D"], "complex-key"),
    **dict.fromkeys(["3GZX", "PW8X"], "duplicate-anchor"),
    **dict.fromkeys(["652Z", "HM87/01"], "question-mark-in-flow"),
    **dict.fromkeys(["Y2GN"], "anchor-name"),
    **dict.fromkeys(["2LFX", "6LVF", "MUS6/05", "MUS6/06", "W4TN"], "directive"),
    **dict.fromkeys(["BEC7"], "yaml-version"),
    **dict.fromkeys(["6CA3", "DK95/00", "DK95/03", "DK95/04", "Q5MG"], "tab-indentation"),
    **dict.fromkeys(["96NN/00", "96NN/01", "R4YG", "Y79Y/001"], "block-scalar-tab"),
    **dict.fromkeys(["2JQS", "6M2F", "CFD4", "M2N8/00", "NHX8", "NKF9", "S3PD", "SM9W/01",
                     "UKK6/00"], "empty-key"),
    **dict.fromkeys(["4MUZ/00", "4MUZ/01", "4MUZ/02", "5MUD", "9SA2", "K3WX", "NJ66", "UT92",
                     "VJP3/01"], "multi-line-flow-key"),
    **dict.fromkeys(["58MP", "5T43", "DBG4", "HM87/00"], "adjacent-colon"),
    **dict.fromkeys(["4ABK", "FRK4"], "empty-flow-value"),
    **dict.fromkeys(["DK3J", "FP8R"], "zero-indented-block-scalar"),
    **dict.fromkeys(["7Z25", "M7A3"], "bare-document"),
    **dict.fromkeys(["HWV9", "QT73"], "document-end-only"),
    **dict.fromkeys(["2SXE", "8XYN", "W5VH"], "anchor-characters"),
    **dict.fromkeys(["6BCT", "A2M4", "Y79Y/010"], "tab-separation"),
}


def _case_ids() -> list[str]:
    return sorted(str(path.parent.relative_to(SUITE)) for path in SUITE.glob("**/in.yaml"))


CASES = _case_ids()
INVALID = [case for case in CASES if (SUITE / case / "error").exists()]
VALID = [case for case in CASES if case not in INVALID]


def _load(case: str) -> tuple[object, list[str]]:
    diagnostics = Diagnostics("in.yaml")
    loaded = load_yaml((SUITE / case / "in.yaml").read_bytes(), diagnostics)
    assert all(d.position.line >= 1 and d.position.col >= 1 for d in diagnostics.items)
    if loaded is None:
        assert diagnostics.items, "a failed load must say why"
        return None, [d.message for d in diagnostics.items]
    assert diagnostics.items == []
    return loaded.data, []


# --------------------------------------------------------------------------- expected data


class _NotComparable(Exception):
    """The expected data has something load_yaml cannot return (e.g. a sequence key)."""


def _expected_documents(case: str) -> list[object]:
    """The documents the suite expects, as load_yaml's data model (JSON keys as strings)."""
    directory = SUITE / case
    if (directory / "in.json").exists():
        text = (directory / "in.json").read_text()
        decoder, documents, index = json.JSONDecoder(), [], 0
        while text[index:].strip():
            index += len(text[index:]) - len(text[index:].lstrip())
            value, index = decoder.raw_decode(text, index)
            documents.append(value)
        return documents
    return _documents_from_events((directory / "test.event").read_text())


# The YAML 1.2.2 core schema (section 10.3.2), written out again so that the expected
# values do not come from the code under test.
_CORE_NULL = re.compile(r"null|Null|NULL|~|")
_CORE_BOOL = re.compile(r"true|True|TRUE|false|False|FALSE")
_CORE_INT = re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")
_CORE_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_CORE_SPECIAL = re.compile(r"[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)")
_ESCAPES = {"\\\\": "\\", "\\0": "\0", "\\b": "\b", "\\n": "\n", "\\r": "\r", "\\t": "\t"}


def _core(text: str) -> object:
    if _CORE_NULL.fullmatch(text):
        return None
    if _CORE_BOOL.fullmatch(text):
        return text.lower() == "true"
    if _CORE_INT.fullmatch(text):
        return int(text, 0) if text[:2] in ("0o", "0x") else int(text)
    if _CORE_SPECIAL.fullmatch(text):
        return float(text.lower().replace(".", ""))  # "-.Inf" is float("-inf")
    if _CORE_FLOAT.fullmatch(text):
        return float(text)
    return text


def _scalar(tag: str | None, style: str, text: str) -> object:
    if tag in ("!", "tag:yaml.org,2002:str") or (tag is None and style != ":"):
        return text
    if tag is None or tag in ("tag:yaml.org,2002:null", "tag:yaml.org,2002:bool",
                              "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
        return _core(text)
    raise _NotComparable(f"tag {tag}")


_NO_KEY = object()


def _documents_from_events(events: str) -> list[object]:
    """The documents of a test.event stream (see the suite's ReadMe for the format)."""
    documents: list[object] = []
    stack: list[list] = []  # [container, pending key] frames
    anchors: dict[str, object] = {}

    def add(value: object) -> None:
        if not stack:
            documents.append(value)
            return
        frame = stack[-1]
        if isinstance(frame[0], list):
            frame[0].append(value)
        elif frame[1] is _NO_KEY:
            if isinstance(value, (list, dict)):
                raise _NotComparable("a collection as a key")
            frame[1] = value
        else:
            frame[0][frame[1]] = value
            frame[1] = _NO_KEY

    for line in events.splitlines():
        event, _, rest = line.partition(" ")
        anchor = tag = None
        while rest[:1] in ("&", "<") or rest[:2] in ("{}", "[]"):
            word, _, rest = rest.partition(" ")
            if word.startswith("&"):
                anchor = word[1:]
            elif word.startswith("<"):
                tag = word[1:-1]
        if event in ("+MAP", "+SEQ"):
            stack.append([{} if event == "+MAP" else [], _NO_KEY, anchor])
        elif event in ("-MAP", "-SEQ"):
            container, _, name = stack.pop()
            if name:
                anchors[name] = container
            add(container)
        elif event == "=VAL":
            text = re.sub(r"\\.", lambda m: _ESCAPES.get(m.group(), m.group()), rest[1:])
            value = _scalar(tag, rest[0], text)
            if anchor:
                anchors[anchor] = value
            add(value)
        elif event == "=ALI":
            add(copy.deepcopy(anchors[rest[1:]]))  # a copy, as load_yaml makes
    return documents


def _as_json(data: object) -> object:
    """``data`` with mapping keys as JSON writes them, to compare with in.json."""
    if isinstance(data, dict):
        return {json.dumps(k) if not isinstance(k, str) else k: _as_json(v)
                for k, v in data.items()}
    if isinstance(data, list):
        return [_as_json(v) for v in data]
    return data


def _same(ours: object, expected: object) -> bool:
    """Equal with equal types: 1, 1.0 and True are three different values here."""
    if isinstance(expected, float) and isinstance(ours, float):
        return (math.isnan(ours) and math.isnan(expected)) or ours == expected
    if type(ours) is not type(expected):
        return False
    if isinstance(expected, dict):
        return ours.keys() == expected.keys() and all(  # type: ignore[attr-defined]
            _same(ours[k], expected[k]) for k in expected)  # type: ignore[index]
    if isinstance(expected, list):
        return len(ours) == len(expected) and all(  # type: ignore[arg-type]
            _same(a, b) for a, b in zip(ours, expected))  # type: ignore[call-overload]
    return ours == expected


# --------------------------------------------------------------------------- the cases


@pytest.mark.parametrize("case", VALID)
def test_a_valid_case_loads_its_data_or_is_refused_as_listed(case: str) -> None:
    data, errors = _load(case)
    refusal = REFUSED.get(case)
    if refusal is not None:
        pattern = re.compile(REFUSAL_CLASSES[refusal].message)
        assert errors, f"{case} is listed as refused ({refusal}) but loads: {data!r}"
        assert all(pattern.match(message) for message in errors), \
            f"{case} should be refused as {refusal}, got {errors}"
        return
    assert not errors, f"{case} is valid YAML but refused: {errors}"
    try:
        expected = _expected_documents(case)
    except _NotComparable as exc:
        pytest.fail(f"{case} loads, but its expected data cannot be compared ({exc}): "
                    f"list it as refused or teach the test")
    assert len(expected) == 1, f"{case} has {len(expected)} documents but loads"
    from_json = (SUITE / case / "in.json").exists()
    ours = _as_json(data) if from_json else data
    assert _same(ours, expected[0]), f"{case} loads {data!r}, expected {expected[0]!r}"


@pytest.mark.parametrize("case", INVALID)
def test_an_invalid_case_is_refused(case: str) -> None:
    data, errors = _load(case)
    assert errors, f"{case} is invalid YAML but loads: {data!r}"


def test_every_refusal_is_a_valid_case_of_a_known_class() -> None:
    assert set(REFUSED) <= set(VALID)
    assert set(REFUSED.values()) == set(REFUSAL_CLASSES)


def test_the_suite_is_all_here() -> None:
    # Counted on the data branch at the commit in yaml_test_suite/README.md.
    assert (len(CASES), len(INVALID)) == (402, 94)
