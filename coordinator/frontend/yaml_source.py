"""The YAML source loader: pipeline file text to plain Python data plus a source map.

The loader composes a node graph with libyaml and builds the Python values itself, so
that it decides what the YAML means rather than PyYAML's YAML 1.1 rules:

* scalars are typed with the YAML 1.2 core schema (``yes``, ``on`` and ``2024-01-01`` stay
  strings; quoted scalars are always strings);
* only the standard tags for those types are accepted; every other tag is an error;
* aliases are copied at every use and merge keys (``<<``) are applied, under limits on
  node count and nesting depth so that hostile files fail fast instead of exhausting memory;
* where libyaml accepts text that YAML 1.2 forbids, or reads valid YAML 1.2 as something
  else, the loader refuses it with an error of its own instead of loading wrong data
  (``tests/coordinator/frontend/test_yaml_test_suite.py`` holds the cases);
* every problem becomes a diagnostic with a line and column, never an exception.

See ``docs/yaml.md`` for the user-facing description.
"""
from __future__ import annotations

import gc
import math
import re
from bisect import bisect_right
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple

import yaml
from yaml.composer import ComposerError
from yaml.events import (CollectionEndEvent, CollectionStartEvent, ScalarEvent,
                         StreamEndEvent)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.scanner import Scanner, ScannerError
from yaml.tokens import (AliasToken, AnchorToken, DirectiveToken, KeyToken, ScalarToken,
                         TagToken)

from coordinator.frontend.diagnostics import Diagnostics, Position

try:
    from yaml._yaml import CParser
except ImportError:  # PyYAML built without libyaml: load_yaml reports it (docs/yaml.md).
    CParser = None

MAX_INPUT_BYTES = 10 * 1024 * 1024
MAX_DEPTH = 200
MAX_NODES = 1_000_000

Path = tuple[str | int, ...]

# The source map packs a 0-based line and column into one int: ints are not tracked by
# the garbage collector and are smaller than the composers' mark objects. Columns fit
# because the input is capped at 10 MiB.
_LINE_SHIFT = 24
_COLUMN_MASK = (1 << _LINE_SHIFT) - 1

_STD = "tag:yaml.org,2002:"
STR_TAG = _STD + "str"
INT_TAG = _STD + "int"
FLOAT_TAG = _STD + "float"
BOOL_TAG = _STD + "bool"
NULL_TAG = _STD + "null"
SEQ_TAG = _STD + "seq"
MAP_TAG = _STD + "map"

# Tags the composer gives untagged nodes. They are compared by identity, so a user who
# writes the same text as an explicit tag gets an equal but distinct string and is
# treated as having written an unknown tag.
_PLAIN = "conveyor:plain-scalar"
_QUOTED = "conveyor:quoted-scalar"
_SEQ = "conveyor:sequence"
_MAP = "conveyor:mapping"


# --------------------------------------------------------------------------- public API


class SourceMap:
    """Where each node of a loaded document is written, looked up by its path.

    A path is the tuple of mapping keys and sequence indexes leading from the root to a
    node, e.g. ``("jobs", "build", "steps", 0, "script")``; the root is ``()``. Positions
    are 1-based. A node that came from an alias or a merge key is reported at the alias
    (the use site); ``origin`` tells where its value is actually written.
    """

    __slots__ = ("_values", "_keys", "_origins")

    def __init__(self, values: dict | None = None, keys: dict | None = None,
                 origins: dict | None = None) -> None:
        # The dicts hold packed 0-based positions (see _LINE_SHIFT); Position objects
        # are made on lookup because most nodes are never looked up.
        self._values = values if values is not None else {}
        self._keys = keys if keys is not None else {}
        self._origins = origins if origins is not None else {}

    def value(self, path: Path) -> Position | None:
        """The position of the value at ``path``, or None if there is no such node."""
        return _unpack(self._values.get(tuple(path)))

    def key(self, path: Path) -> Position | None:
        """The position of the mapping key whose value is at ``path``."""
        return _unpack(self._keys.get(tuple(path)))

    def origin(self, path: Path) -> Position | None:
        """Where the value at ``path`` is written when it was copied from an anchor."""
        return _unpack(self._origins.get(tuple(path)))

    def nearest(self, path: Path) -> Position:
        """The position of ``path``, else of its closest recorded ancestor, else 1:1."""
        path = tuple(path)
        for end in range(len(path), -1, -1):
            packed = self._values.get(path[:end])
            if packed is not None:
                return _unpack(packed)  # type: ignore[return-value]
        return Position(1, 1)

    def __len__(self) -> int:
        return len(self._values)


@dataclass(frozen=True)
class LoadedYaml:
    """A loaded YAML document: its plain Python data and where each node was written."""

    data: object
    source_map: SourceMap


def load_yaml(text: str | bytes, diagnostics: Diagnostics) -> LoadedYaml | None:
    """Load one YAML document into plain Python data and a source map.

    Returns None when any error was found; every error is added to ``diagnostics``.
    Never raises for bad input, whatever the bytes.
    """
    if _LibyamlComposer is None:
        # The pure Python parser of PyYAML reads a different YAML than libyaml in dozens
        # of corner cases (see docs/yaml.md), so a pipeline would mean different things
        # depending on how PyYAML was installed. Refusing is the honest outcome.
        diagnostics.error(Position(1, 1), "cannot read YAML: this PyYAML was built without "
                          "libyaml, which Conveyor needs",
                          "reinstall it from a wheel: pip install --force-reinstall "
                          "--only-binary=:all: pyyaml")
        return None
    source = _decode(text, diagnostics)
    if source is None or not _check_characters(source, diagnostics):
        return None
    errors_before = len(diagnostics.errors)
    try:
        with _gc_paused():
            loaded = _build_document(source, diagnostics)
    except RecursionError:
        # Loading recurses once or twice per level, at most MAX_DEPTH levels; only a
        # caller already near the interpreter's limit gets here.
        diagnostics.error(Position(1, 1), "the document is nested too deeply to load "
                                          "from this call stack")
        return None
    if loaded is None or len(diagnostics.errors) > errors_before:
        return None
    return loaded


# --------------------------------------------------------------------------- loading


def _ends_in_a_blank_line(text: str) -> bool:
    """Whether the last line is blanks without a line break after them.

    libyaml drops such a line, while YAML (and the yaml-test-suite) count it: inside a
    block scalar it is content.
    """
    content = text.rstrip(" \t")
    return len(content) < len(text) and (not content or content[-1] in _BREAKS)


def _build_document(source: str, diagnostics: Diagnostics) -> LoadedYaml | None:
    # The node graph is local to this function so that it is freed before the garbage
    # collector runs again, which then only has the result left to look at.
    text = source + "\n" if _ends_in_a_blank_line(source) else source
    composed = _compose(text, len(source), diagnostics)
    if composed is None:
        return None
    root, nodes = composed
    if (any(pattern.search(source) for pattern in _MAY_NEED_TOKEN_CHECK)
            and not _TokenCheck(text, diagnostics).run()):
        return None
    try:
        uses = _AliasScan(text, nodes).run(root) if _MAY_HAVE_ALIAS.search(text) else {}
        builder = _Builder(text, diagnostics, uses)
        data = builder.root(root)
    except _Fatal as fatal:
        diagnostics.error(_position(fatal.mark), fatal.message, fatal.hint)
        return None
    return LoadedYaml(data, SourceMap(builder.values, builder.keys, builder.origins))


@contextmanager
def _gc_paused() -> Iterator[None]:
    # Loading allocates one container per node and keeps them all; the cyclic collector
    # would rescan that growing heap again and again (a 60k-line file loads ~4x slower).
    # The graph is dropped right after loading, so pausing it costs nothing afterwards.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _decode(text: str | bytes, diagnostics: Diagnostics) -> str | None:
    """The text as a str without a leading BOM, or None after reporting why not."""
    if isinstance(text, str):
        # Cheap first: a str has at least one byte per character.
        size = len(text)
        if size <= MAX_INPUT_BYTES and not text.isascii():
            size = len(text.encode("utf-8", "surrogatepass"))
    else:
        text = bytes(text)
        size = len(text)
    if size > MAX_INPUT_BYTES:
        diagnostics.error(Position(1, 1),
                          f"the file is too large ({size:,} bytes; the limit is "
                          f"{MAX_INPUT_BYTES // (1024 * 1024)} MiB)")
        return None
    if isinstance(text, str):
        return text[1:] if text.startswith("\ufeff") else text
    try:
        return text.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        valid = text[:exc.start].decode("utf-8-sig")
        line, col = _advance(valid, 0, len(valid), 0, 0)
        diagnostics.error(Position(line + 1, col + 1),
                          f"the file is not valid UTF-8 (byte 0x{text[exc.start]:02x} at "
                          f"offset {exc.start}: {exc.reason})")
        return None


# YAML's printable set; libyaml and PyYAML both reject anything else.
_NOT_PRINTABLE = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# Line breaks as libyaml counts them, so that positions computed here agree with its marks.
_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")


def _check_characters(text: str, diagnostics: Diagnostics) -> bool:
    # Checked here rather than left to the parser because libyaml reports a byte offset
    # without a line, and a lone surrogate would make the UTF-8 encoding itself fail.
    bad = _NOT_PRINTABLE.search(text)
    if bad is None:
        return True
    line, col = _advance(text, 0, bad.start(), 0, 0)
    diagnostics.error(Position(line + 1, col + 1),
                      f"character U+{ord(bad.group()):04X} is not allowed in a YAML file")
    return False


def _advance(text: str, start: int, end: int, line: int, col: int) -> tuple[int, int]:
    """The 0-based line and column of ``text[end]``, given those of ``text[start]``."""
    breaks = 0
    last = -1
    for match in _BREAK.finditer(text, start, end):
        breaks += 1
        last = match.end()
    if last < 0:
        return line, col + end - start
    return line + breaks, end - last


def _unpack(packed: int | None) -> Position | None:
    if packed is None:
        return None
    return Position((packed >> _LINE_SHIFT) + 1, (packed & _COLUMN_MASK) + 1)


def _position(mark: object) -> Position | None:
    if mark is None:
        return None
    return Position(mark.line + 1, mark.column + 1)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- composing


class _TooDeep(Exception):
    def __init__(self, parent: Node | None) -> None:
        self.parent = parent


class _TooMany(Exception):
    def __init__(self, parent: Node | None) -> None:
        self.parent = parent


class _ComposerHooks:
    """The callbacks PyYAML's composers make for every node, used as guards and tagger.

    ``descend_resolver``/``ascend_resolver`` bracket the composition of every non-alias
    node, which makes them the place to stop libyaml's recursive C composer before deep
    nesting overflows the C stack (100,000 ``[`` crash the process otherwise).
    """

    _depth: int
    _count: int

    def _init_hooks(self) -> None:
        self._depth = 0
        self._count = 0

    def resolve(self, kind: type, value: str | None, implicit: object) -> str:
        # Only nodes without an explicit tag get here. Plain scalars are typed later by
        # the YAML 1.2 core schema; quoted ones (and the non-specific "!") are strings.
        if kind is ScalarNode:
            return _PLAIN if implicit[0] else _QUOTED  # type: ignore[index]
        return _SEQ if kind is SequenceNode else _MAP

    def descend_resolver(self, parent: Node | None, index: object) -> None:
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _TooDeep(parent)
        # Values only (a mapping key is composed with index None), as in the source map.
        if index is not None or parent is None:
            self._count += 1
            if self._count > MAX_NODES:
                raise _TooMany(parent)

    def ascend_resolver(self) -> None:
        self._depth -= 1


if CParser is not None:
    class _LibyamlComposer(CParser, _ComposerHooks):
        def __init__(self, text: str) -> None:
            CParser.__init__(self, text)
            self._init_hooks()
else:  # pragma: no cover - depends on how PyYAML was built
    _LibyamlComposer = None  # type: ignore[assignment,misc]


class _PythonEvents(Reader, Scanner, Parser):
    """PyYAML's pure Python parser, used only to measure nesting (see _nesting_crossed)."""

    def __init__(self, text: str) -> None:
        Reader.__init__(self, text)
        Scanner.__init__(self)
        Parser.__init__(self)


# Every alias token matches this (libyaml requires a name character after "*"), so a
# text without a match has no aliases and needs no alias scan.
_MAY_HAVE_ALIAS = re.compile(r"\*[0-9A-Za-z_-]")
_ANCHOR_AT = re.compile(r"(?:![^\s]*\s+)?&([0-9A-Za-z_-]+)")
_ALIAS_AT = re.compile(r"\*([0-9A-Za-z_-]+)")
_NAME_AT = re.compile(r"[^\s]*")
_YAML_VERSION_AT = re.compile(r"%YAML[ \t]+([0-9]+)\.([0-9]+)")
_DOCUMENT_MARKER_AT = re.compile(r"(?:---|\.\.\.)(?:[\s]|\Z)")
_BREAKS = "\r\n\x85\u2028\u2029"


def _compose(text: str, source_length: int,
             diagnostics: Diagnostics) -> tuple[Node, int] | None:
    """The root node of the one document in ``text`` and its number of value nodes.

    None after reporting why there is no such document. ``source_length`` is the length
    of the file's text, which ``text`` may extend by a line break.
    """
    composer = _LibyamlComposer(text)
    try:
        root = composer.get_single_node()
    except _TooDeep as exc:
        diagnostics.error(_node_position(exc.parent), _TOO_DEEP)
        return None
    except _TooMany as exc:
        diagnostics.error(_node_position(exc.parent),
                          f"the document has more than {MAX_NODES:,} nodes")
        return None
    except yaml.MarkedYAMLError as exc:
        _report_yaml_error(text, source_length, exc, diagnostics)
        return None
    except yaml.YAMLError as exc:  # a ReaderError, which the character check should prevent
        diagnostics.error(Position(1, 1), f"cannot read the file: {exc}")
        return None
    if root is None:
        diagnostics.error(Position(1, 1), "expected one YAML document, but the file has none")
        return None
    return root, composer._count


_TOO_DEEP = f"the document is nested more than {MAX_DEPTH} levels deep"


def _node_position(node: Node | None) -> Position:
    if node is None:
        return Position(1, 1)
    return Position(node.start_mark.line + 1, node.start_mark.column + 1)


def _report_yaml_error(text: str, source_length: int, exc: yaml.MarkedYAMLError,
                       diagnostics: Diagnostics) -> None:
    """Reports a libyaml error, in Conveyor's words wherever the error is recognised.

    Errors are recognised by their class and by the text at their marks, never by
    libyaml's or PyYAML's wording, which changes between versions.
    """
    mark = exc.problem_mark or exc.context_mark
    if mark is not None and mark.index >= source_length:
        # At the line break _build_document added, or at the end: the end of the file.
        line, col = _advance(text, 0, source_length, 0, 0)
        position = Position(line + 1, col + 1)
    else:
        position = _position(mark) or Position(1, 1)
    index = mark.index if mark is not None else 0
    if isinstance(exc, ComposerError):
        _report_composer_error(text, exc, index, position, diagnostics)
        return
    if isinstance(exc, ScannerError) and text.startswith(("[", "{"), index):
        # libyaml 0.2.6 (in PyYAML 6.0.4 wheels) stops at 1,000 nested levels; its
        # scanner reads ahead of the composer on a line of "[" and can get there before
        # the composer reaches level 201. Whether the document is too deep for us is
        # measured, not inferred from libyaml's words.
        too_deep = _nesting_crossed(text, index)
        if too_deep is not None:
            diagnostics.error(too_deep, _TOO_DEEP)
            return
    known = _known_syntax_problem(text, exc)
    if known is not None:
        at, message, known_hint = known
        diagnostics.error(at or position, message, known_hint)
        return
    problem = exc.problem or exc.context or "the text cannot be parsed"
    hint = None
    if exc.context and exc.problem:
        hint = exc.context
        context_mark = exc.context_mark
        if context_mark is not None and _position(context_mark) != position:
            hint += f" at line {context_mark.line + 1}, column {context_mark.column + 1}"
    diagnostics.error(position, f"invalid YAML: {problem}", hint)


def _report_composer_error(text: str, exc: yaml.MarkedYAMLError, index: int,
                           position: Position, diagnostics: Diagnostics) -> None:
    # The composer fails at an alias it cannot resolve, at a node whose anchor is
    # already defined, or at the start of a second document.
    if text.startswith("*", index):
        name = _ALIAS_AT.match(text, index)
        label = f" '*{name.group(1)}'" if name else ""
        diagnostics.error(position, f"undefined alias{label}",
                          "an anchor must be defined before its aliases")
        return
    anchor = _ANCHOR_AT.match(text, index)
    first = exc.context_mark
    if anchor is not None and first is not None and not _starts_document(text, index):
        diagnostics.error(position, f"duplicate anchor '&{anchor.group(1)}' "
                                    f"(first defined at line {first.line + 1})")
        return
    diagnostics.error(position, "expected one YAML document", "a second document starts here")


def _line_start(text: str, index: int) -> int:
    """The index where the line holding ``text[index]`` starts."""
    return max(text.rfind(c, 0, index) for c in _BREAKS) + 1


def _starts_document(text: str, index: int) -> bool:
    """Whether a document starts at ``index``: a marker or directive, or after "..."."""
    if _line_start(text, index) != index:
        return False
    if text.startswith("%", index) or _DOCUMENT_MARKER_AT.match(text, index):
        return True
    before = text[:index].rstrip()
    return before.endswith("...")


def _known_syntax_problem(text: str, exc: yaml.MarkedYAMLError
                          ) -> tuple[Position | None, str, str] | None:
    """Conveyor's position (None: libyaml's), message and hint for an error with a clear
    cause, else None."""
    problem, context = exc.problem_mark, exc.context_mark
    at = text[problem.index] if problem is not None and problem.index < len(text) else ""
    if isinstance(exc, ScannerError) and at == "\t":
        if context is not None and text.startswith(("|", ">"), context.index):
            return (None, "a tab character cannot indent the text of a block scalar",
                    "libyaml only accepts spaces there; indent with spaces")
        index = problem.index  # type: ignore[union-attr]
        if not text[_line_start(text, index):index].strip(" \t"):
            return (None, "a tab character cannot indent a line",
                    "libyaml rejects tabs at the start of a line, even a blank one; use spaces")
    if (isinstance(exc, ScannerError) and context is not None and context.column == 0
            and text.startswith("%", context.index)):
        name = _NAME_AT.match(text, context.index + 1).group()  # type: ignore[union-attr]
        if name not in ("YAML", "TAG"):
            return (_position(context), f"directive '%{name}' is not supported",
                    "only %YAML and %TAG directives are allowed")
    if not isinstance(exc, ScannerError) and problem is not None:
        version = _YAML_VERSION_AT.match(text, problem.index)
        if version is not None and version.group(1, 2) not in (("1", "1"), ("1", "2")):
            return (None, f"YAML version {version.group(1)}.{version.group(2)} is not supported",
                    "write %YAML 1.2 or leave the directive out")
    return None


def _nesting_crossed(text: str, until: int) -> Position | None:
    """Where the document nests more than MAX_DEPTH levels before ``until``, or None.

    Counted on PyYAML's pure Python parser, which builds no recursion and has no nesting
    limit of its own, exactly as the composer hook counts: the root is level 1 and every
    node one level deeper than its collection. The position is that of the collection
    whose child crosses the limit, as the hook reports it.
    """
    events = _PythonEvents(text)
    open_collections: list = []
    try:
        while True:
            event = events.get_event()
            if event.__class__ is StreamEndEvent or event.start_mark.index > until:
                return None
            if isinstance(event, (CollectionStartEvent, ScalarEvent)):
                if len(open_collections) >= MAX_DEPTH:
                    return _position(open_collections[-1])
                if isinstance(event, CollectionStartEvent):
                    open_collections.append(event.start_mark)
            elif isinstance(event, CollectionEndEvent):
                open_collections.pop()
    except yaml.YAMLError:
        return None


# --------------------------------------------------------------------------- aliases


class _Fatal(Exception):
    """A limit was hit: report this one error and stop."""

    def __init__(self, mark: object, message: str, hint: str | None = None) -> None:
        self.mark, self.message, self.hint = mark, message, hint


class _AliasUse(NamedTuple):
    """One ``*name`` in the document and what copying its anchor would cost."""

    name: str
    line: int  # 0-based, like the composers' marks
    column: int
    size: int  # value nodes the copy adds
    height: int  # levels the copy spans (a scalar is 1)
    recursive: bool  # the anchor contains this very alias
    tainted: bool  # the anchor contains a recursive alias somewhere


# Between the end of the previous token and an alias only these can occur: blanks,
# comments, flow and block indicators, and the enclosing collection's tag and anchor.
_TO_ALIAS = re.compile(
    r"(?:[\s,\[{?:-]|\#[^\r\n\x85\u2028\u2029]*|![^\s]*|&[0-9A-Za-z_-]+)*+"
    r"\*([0-9A-Za-z_-]+)"
)


class _AliasScan:
    """Finds every alias in a composed document and measures what it refers to.

    The composers hand back a graph in which an alias is simply the anchored node again,
    without its position. Walking the graph in document order, the first occurrence of a
    node is its definition and any later one is an alias; its ``*name`` is found in the
    text right after the preceding node. The walk also measures every node (value count,
    height, whether it reaches a recursive alias) so expansion limits are checked before
    anything is copied.
    """

    def __init__(self, text: str, nodes: int) -> None:
        self.text = text
        # Value nodes of the document once every alias is copied; ``nodes`` is the
        # count without copies.
        self.total = nodes
        # Keyed by the nodes themselves: they hash by identity, and better than their ids.
        self.seen: set[Node] = set()
        self.open: set[Node] = set()
        self.measures: dict[Node, tuple[int, int, bool]] = {}
        self.uses: dict[Node, dict[int, _AliasUse]] = {}

    def run(self, root: Node) -> dict[Node, dict[int, _AliasUse]]:
        """Alias uses by the collection holding them, then by slot.

        A sequence's slots are its indexes; a mapping's are ``2*i`` for the i-th key and
        ``2*i + 1`` for its value.
        """
        self.seen.add(root)
        if root.__class__ is not ScalarNode:
            self._walk(root)
        return self.uses

    def _walk(self, node: Node) -> tuple[int, int, bool]:
        # The hot loop of the scan: it touches every node, so it avoids per-child work
        # beyond one set lookup; positions are only computed for aliases.
        seen = self.seen
        self.open.add(node)
        size, height, tainted = 1, 1, False
        previous: object = node.start_mark
        if node.__class__ is SequenceNode:
            children: list = node.value
            keys = 0  # no slot holds a key
        else:
            children = [child for pair in node.value for child in pair]
            keys = 1  # even slots hold keys, odd ones values
        for slot, child in enumerate(children):
            if child not in seen:
                seen.add(child)
                if child.__class__ is ScalarNode:
                    if not keys or slot & 1:
                        size += 1
                    if height == 1:
                        height = 2
                    previous = child.end_mark
                    continue
                c_size, c_height, c_tainted = self._walk(child)
                previous = child.end_mark
            else:
                use, previous = self._locate(node, slot, child, previous)
                c_size, c_height, c_tainted = use.size, use.height, use.recursive or use.tainted
                if not keys or slot & 1:
                    self._count_copy(use)
            if not keys or slot & 1:
                size += c_size
            if c_height >= height:
                height = c_height + 1
            if c_tainted:
                tainted = True
        self.open.discard(node)
        measure = (min(size, MAX_NODES + 1), height, tainted)
        self.measures[node] = measure
        return measure

    def _count_copy(self, use: _AliasUse) -> None:
        # Checked here, before anything is built, so that a "billion laughs" document
        # fails at once instead of after building up to the limit.
        self.total += use.size
        if self.total > MAX_NODES:
            raise _Fatal(use, f"alias '*{use.name}' expands the document to more than "
                              f"{MAX_NODES:,} nodes", "every use of an alias is a full copy")

    def _locate(self, parent: Node, slot: int, target: Node,
                previous: object) -> tuple[_AliasUse, object]:
        """Records the alias in ``slot`` of ``parent``; returns it and where it ends.

        ``previous`` marks the end of the token before the alias.
        """
        recursive = target in self.open
        if recursive or target.__class__ is ScalarNode:
            size, height, tainted = 1, 1, False
        else:
            size, height, tainted = self.measures[target]
        index = previous.index  # type: ignore[attr-defined]
        line, col = previous.line, previous.column  # type: ignore[attr-defined]
        found = _TO_ALIAS.match(self.text, index)
        name = "?"
        end = previous
        if found is not None:
            name = found.group(1)
            line, col = _advance(self.text, index, found.start(1) - 1, line, col)
            # An alias is one token on one line, so its end is easy to place.
            end = _Mark(found.end(), line, col + 1 + len(name))
        # Else the alias is reported at the preceding token: approximate, never lost.
        use = _AliasUse(name, line, col, size, height, recursive, tainted)
        self.uses.setdefault(parent, {})[slot] = use
        return use, end


class _Mark(NamedTuple):
    """A position in the text, shaped like the composers' marks (0-based)."""

    index: int
    line: int
    column: int


# --------------------------------------------------------------------------- token check


# Text that may hold something only the token check finds: "#" right after another
# character, "?" right before one, or an anchor or alias name running into a character
# at which libyaml ends names. Most files have none and skip the check. (Each pattern
# starts with a literal character, which the regex engine finds fast.)
_COMMENT_CANDIDATE = re.compile(r"#(?<=[^\s]#)")
_MAY_NEED_TOKEN_CHECK = (_COMMENT_CANDIDATE, re.compile(r"\?[^\s]"),
                         re.compile(r"&[0-9A-Za-z_-]+[?:%@`]"),
                         re.compile(r"\*[0-9A-Za-z_-]+[?:%@`]"))
_BLOCK_HEADER_COMMENT = re.compile(r"[|>][0-9+-]*#")
# What YAML 1.2 reads as one anchor, alias or plain scalar: up to a blank or a flow indicator.
_YAML_NAME_AT = re.compile(r"[^\s,\[\]{}]*")
_BLANK_OR_END = frozenset(" \t\r\n\x85\u2028\u2029")


class _TokenCheck:
    """Refuses text that libyaml's scanner reads differently from YAML 1.2.

    The composed nodes cannot show these cases, so libyaml's token stream is read once
    more, only for files that contain one of the patterns above:

    * a comment right after other text (``"a"# c``, ``[a]#c``, ``>#c``): libyaml drops it
      as a comment, YAML requires whitespace before ``#``;
    * ``?x`` in a flow collection: libyaml reads an explicit key, YAML the scalar "?x";
    * an anchor or alias name containing ``:``, ``?``, ``%``, ``@`` or a backquote:
      libyaml ends the name there and reads the rest as a scalar, YAML keeps one name.
    """

    def __init__(self, text: str, diagnostics: Diagnostics) -> None:
        self.text = text
        self.diagnostics = diagnostics
        self.ok = True

    def report(self, index: int, message: str, hint: str | None = None) -> None:
        line, col = _advance(self.text, 0, index, 0, 0)
        self.diagnostics.error(Position(line + 1, col + 1), message, hint)
        self.ok = False

    def run(self) -> bool:
        """Whether the text passed; every problem found is reported."""
        text = self.text
        # Where tokens with text (scalars, tags, anchors, directives) start and end: a
        # "#" inside one is text, anywhere else a comment.
        starts: list[int] = []
        ends: list[int] = []
        scanner = CParser(text)
        try:
            token = scanner.get_token()
            while token is not None:
                kind = token.__class__
                if kind is KeyToken:
                    self.key(token.start_mark.index, token.end_mark.index)
                elif kind in (ScalarToken, TagToken, AnchorToken, AliasToken, DirectiveToken):
                    start, end = token.start_mark.index, token.end_mark.index
                    starts.append(start)
                    ends.append(end)
                    if kind is ScalarToken and token.style in ("|", ">"):
                        header = _BLOCK_HEADER_COMMENT.match(text, start)
                        if header is not None:
                            self.comment(header.end() - 1)
                    elif kind is AnchorToken or kind is AliasToken:
                        self.name(kind is AnchorToken, start, end)
                token = scanner.get_token()
        except yaml.YAMLError:  # pragma: no cover - the same text composed without error
            return self.ok

        def outside_tokens(index: int) -> bool:
            inside = bisect_right(starts, index) - 1
            return inside < 0 or ends[inside] <= index

        for candidate in _COMMENT_CANDIDATE.finditer(text):
            index = candidate.start()
            if not outside_tokens(index):
                continue
            # The first "#" outside tokens on a line starts a comment: any later one on
            # the line is comment text.
            earlier = text.find("#", _line_start(text, index), index)
            while earlier != -1 and not outside_tokens(earlier):
                earlier = text.find("#", earlier + 1, index)
            if earlier == -1:
                self.comment(index)
        return self.ok

    def comment(self, index: int) -> None:
        self.report(index, "a comment must follow a space or a tab",
                    "add a space before '#', or quote the text if '#' belongs to it")

    def key(self, start: int, end: int) -> None:
        text = self.text
        if end == start + 1 and text[start] == "?" and end < len(text) \
                and text[end] not in _BLANK_OR_END:
            scalar = _YAML_NAME_AT.match(text, start).group()  # type: ignore[union-attr]
            scalar = scalar.split(":")[0]
            self.report(start, f"'{scalar}' in a flow collection must be quoted",
                        "libyaml reads '?' followed by a non-space as an explicit key; "
                        "put a space after '?' if a key is what you mean")

    def name(self, anchor: bool, start: int, end: int) -> None:
        text = self.text
        if end < len(text) and text[end] in "?:%@`":
            written = _YAML_NAME_AT.match(text, start).group()  # type: ignore[union-attr]
            kind = "anchor" if anchor else "alias"
            self.report(start, f"{kind} name '{written}' is not supported",
                        f"libyaml ends the name before '{text[end]}'; anchor and alias "
                        "names may use letters, digits, '-' and '_'")


# --------------------------------------------------------------------------- building


_CONSTANTS: dict[str, object] = {
    "": None, "~": None, "null": None, "Null": None, "NULL": None,
    "true": True, "True": True, "TRUE": True,
    "false": False, "False": False, "FALSE": False,
    ".inf": math.inf, ".Inf": math.inf, ".INF": math.inf,
    "+.inf": math.inf, "+.Inf": math.inf, "+.INF": math.inf,
    "-.inf": -math.inf, "-.Inf": -math.inf, "-.INF": -math.inf,
    ".nan": math.nan, ".NaN": math.nan, ".NAN": math.nan,
}
# An indicator alone is no plain scalar in YAML 1.2 ("[-]", "- [-, -]"), but libyaml
# reads "-" followed by "," or "]" as the string "-".
_LONE_INDICATOR = object()
_CONSTANTS.update({"-": _LONE_INDICATOR, "?": _LONE_INDICATOR, ":": _LONE_INDICATOR})
_MISSING = object()
_NUMBER_START = frozenset("0123456789+-.")
_DECIMAL = re.compile(r"[-+]?[0-9]+")
_OCTAL = re.compile(r"0o[0-7]+")
_HEX = re.compile(r"0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")


class _BadScalar(Exception):
    pass


class _LoneIndicator(Exception):
    pass


def _core_int(text: str) -> object:
    if _DECIMAL.fullmatch(text):
        try:
            return int(text)
        except ValueError:  # Python refuses decimal strings over 4300 digits.
            raise _BadScalar(f"integer with {len(text)} digits is too long") from None
    if _HEX.fullmatch(text):
        return int(text[2:], 16)
    if _OCTAL.fullmatch(text):
        return int(text[2:], 8)
    return _MISSING


def _plain(text: str) -> object:
    """The YAML 1.2 core schema value of a plain scalar."""
    value = _CONSTANTS.get(text, _MISSING)
    if value is not _MISSING:
        if value is _LONE_INDICATOR:
            raise _LoneIndicator
        return value
    if text[0] in _NUMBER_START:
        value = _core_int(text)
        if value is not _MISSING:
            return value
        if _FLOAT.fullmatch(text):
            return float(text)
    return text


def _explicit_float(text: str) -> object:
    value = _CONSTANTS.get(text, _MISSING)
    if isinstance(value, float):
        return value
    if _FLOAT.fullmatch(text):
        return float(text)
    return _MISSING


def _explicit_bool(text: str) -> object:
    value = _CONSTANTS.get(text, _MISSING)
    return value if isinstance(value, bool) else _MISSING


def _explicit_null(text: str) -> object:
    return None if text in _CONSTANTS and _CONSTANTS[text] is None else _MISSING


_EXPLICIT_SCALARS: dict[str, Callable[[str], object]] = {
    INT_TAG: _core_int,
    FLOAT_TAG: _explicit_float,
    BOOL_TAG: _explicit_bool,
    NULL_TAG: _explicit_null,
}
_SCALAR_TAGS = frozenset((STR_TAG, INT_TAG, FLOAT_TAG, BOOL_TAG, NULL_TAG))


def _show_tag(tag: str) -> str:
    return "!!" + tag[len(_STD):] if tag.startswith(_STD) else tag


# A "!" that is a whole tag: the non-specific tag, which makes a scalar a string. The
# composers hand such a scalar over as if it had no tag, so the text is looked at.
_MAY_HAVE_BARE_TAG = re.compile(r"!(?=[\s,\[\]{}]|\Z)")
_PROPERTY_AT = re.compile(r"([!&][^\s,\[\]{}]*)(?:\s|#[^\r\n\x85\u2028\u2029]*)*")
_BLOCK_HEADER_AT = re.compile(r"(?:(?:![^\s]*|&[^\s]+)\s+)*[|>]([0-9+-]*)")
_SPACES_AT = re.compile(r" *")
_CLOSING_LINE = re.compile(r"[\]}][\]}, \t]*(?:#[^\r\n\x85\u2028\u2029]*)?"
                           r"(?:[\r\n\x85\u2028\u2029]|\Z)")


class _Builder:
    """Builds plain Python values from a composed node graph, recording the source map.

    ``site`` is None while building what the document spells out, and the alias use
    while building a copy of an anchor: a copy is recorded at the alias, with its
    ``origin`` where the anchor's content is written. Problems are reported where they
    are written, once however often the anchor is copied.
    """

    def __init__(self, text: str, diagnostics: Diagnostics,
                 uses: dict[Node, dict[int, _AliasUse]]) -> None:
        self.text = text
        self.bare_tags = _MAY_HAVE_BARE_TAG.search(text) is not None
        self.diagnostics = diagnostics
        self.uses = uses
        self.values: dict[Path, int] = {}
        self.keys: dict[Path, int] = {}
        self.origins: dict[Path, int] = {}
        self.reported: set[tuple[int, int, str]] = set()

    def report(self, mark: object, message: str, hint: str | None = None) -> None:
        line, column = mark.line, mark.column  # type: ignore[attr-defined]
        if (line, column, message) not in self.reported:
            self.reported.add((line, column, message))
            self.diagnostics.error(Position(line + 1, column + 1), message, hint)

    def root(self, node: Node) -> object:
        """The value of the document whose root node is ``node``."""
        if node.__class__ is ScalarNode and node.end_mark.line != node.start_mark.line:
            self.lines(node, None)
        return self.node(node, (), 1, None)

    def node(self, node: Node, path: Path, depth: int, site: object) -> object:
        mark = node.start_mark
        if site is None:
            self.values[path] = mark.line << _LINE_SHIFT | mark.column
        else:
            self.values[path] = site.line << _LINE_SHIFT | site.column  # type: ignore[attr-defined]
            self.origins[path] = mark.line << _LINE_SHIFT | mark.column
        kind = node.__class__
        if kind is ScalarNode:
            return self.scalar(node)
        tag = node.tag
        if kind is SequenceNode:
            if tag is _SEQ or tag == SEQ_TAG:
                return self.sequence(node, path, depth, site)
            self.report(mark, _tag_problem(tag, "a sequence"))
            return None
        if tag is _MAP or tag == MAP_TAG:
            # Straight to fill(): one Python frame per level keeps 200 levels well
            # inside the interpreter's recursion limit.
            out: dict = {}
            self.fill(out, node, path, depth, site, None)
            return out
        self.report(mark, _tag_problem(tag, "a mapping"))
        return None

    def admit(self, use: _AliasUse, depth: int) -> bool:
        """Whether the anchor of ``use`` may be copied at ``depth``; raises at a limit."""
        if use.recursive:
            self.report(use, f"alias '*{use.name}' is recursive: it is used inside its own anchor")
            return False
        if use.tainted:
            self.report(use, f"alias '*{use.name}' refers to an anchor that contains a "
                             "recursive alias")
            return False
        if depth - 1 + use.height > MAX_DEPTH:
            raise _Fatal(use, f"alias '*{use.name}' nests the document more than "
                              f"{MAX_DEPTH} levels deep")
        if len(self.values) + use.size > MAX_NODES:  # The scan stops this first.
            raise _Fatal(use, f"alias '*{use.name}' expands the document to more than "
                              f"{MAX_NODES:,} nodes", "every use of an alias is a full copy")
        return True

    def alias(self, target: Node, path: Path, depth: int, use: _AliasUse) -> object:
        if not self.admit(use, depth):
            self.values[path] = use.line << _LINE_SHIFT | use.column
            return None
        return self.node(target, path, depth, use)

    # -- scalars

    def scalar(self, node: ScalarNode) -> object:
        tag = node.tag
        try:
            if tag is _PLAIN:
                if self.bare_tags and self.non_specific(node):
                    return node.value
                return _plain(node.value)
            if tag is _QUOTED or tag == STR_TAG:
                return node.value
            convert = _EXPLICIT_SCALARS.get(tag)
            if convert is None:
                self.report(node.start_mark, _tag_problem(tag, "a scalar"))
                return None
            value = convert(node.value)
        except _BadScalar as exc:
            self.report(node.start_mark, str(exc))
            return None
        except _LoneIndicator:
            # Followed by ":" it is a key, as YAML 1.2 reads "-: x"; else libyaml took
            # an indicator that YAML forbids there for a scalar.
            if self.text.startswith(":", node.end_mark.index):
                return node.value
            self.report(node.start_mark, f"'{node.value}' alone is not a plain scalar",
                        f"quote it: '{node.value}'")
            return None
        if value is _MISSING:
            self.report(node.start_mark, f"'{node.value}' is not a valid {_show_tag(tag)} value")
            return None
        return value

    def non_specific(self, node: ScalarNode) -> bool:
        """Whether ``node`` is tagged with the non-specific tag "!" (a string then)."""
        text, index = self.text, node.start_mark.index
        # Without properties, the node starts with its text, which for a plain scalar
        # cannot be "!" or "&".
        if not text.startswith(("!", "&"), index):
            return False
        for _ in range(2):  # a tag and an anchor at most
            found = _PROPERTY_AT.match(text, index)
            if found is None:
                return False
            if found.group(1) == "!":
                return True
            index = found.end()
        return False

    # -- lines of multi-line nodes

    def lines(self, node: Node, parent: Node | None) -> None:
        """Checks a node written over several lines inside block collection ``parent``.

        libyaml does not check that the lines of a flow collection or quoted scalar are
        indented more than the block collection around them, nor that a block scalar's
        leading empty lines are no longer than its first line; YAML requires both.
        """
        if node.__class__ is ScalarNode:
            style = node.style
            if style == "|" or style == ">":
                self.block_scalar(node, -1 if parent is None else self.block_column(parent))
            elif (style == '"' or style == "'") and parent is not None:
                self.flow_lines(node, self.block_column(parent), "quoted string")
        elif node.flow_style and parent is not None:  # type: ignore[attr-defined]
            kind = "sequence" if node.__class__ is SequenceNode else "mapping"
            self.flow_lines(node, self.block_column(parent), f"flow {kind}")

    def block_column(self, parent: Node) -> int:
        """The indentation of a block collection: the column of its keys or dashes."""
        text, mark = self.text, parent.start_mark
        entries = parent.value
        if not text.startswith(("!", "&"), mark.index) or not entries:
            return mark.column
        # The collection starts with its tag or anchor, on an earlier line than its
        # entries: the first entry, or the "-" or "?" before it, gives the column.
        first = entries[0][0] if parent.__class__ is MappingNode else entries[0]
        index, column = first.start_mark.index, first.start_mark.column
        before = index
        while before > 0 and text[before - 1] in " \t":
            before -= 1
        if before > 0 and text[before - 1] in "-?":
            return column - (index - before + 1)
        return column

    def flow_lines(self, node: Node, indent: int, what: str) -> None:
        """Reports the first line of ``node`` indented ``indent`` spaces or less."""
        text = self.text
        start, end = node.start_mark, node.end_mark
        line = start.line
        for found in _BREAK.finditer(text, start.index, end.index):
            line += 1
            begin = found.end()
            after = _SPACES_AT.match(text, begin).end()  # type: ignore[union-attr]
            spaces = after - begin
            rest = text[after:after + 1]
            if spaces > indent or rest == "" or rest in _BREAKS:
                continue
            if rest == "\t":
                line_end = _BREAK.search(text, after)
                if not text[after:line_end.start() if line_end else len(text)].strip(" \t"):
                    continue  # a line of blanks is an empty line
                self.report(_Mark(after, line, spaces), "a tab character cannot indent a line",
                            "YAML indents with spaces only")
                return
            if what != "quoted string" and (rest == "#" or _CLOSING_LINE.match(text, after)):
                # A comment line; or the closing brackets alone, as JSON-style files write
                # them: YAML wants one more space there, but nothing reads differently.
                continue
            self.report(_Mark(after, line, spaces),
                        f"this line must be indented by at least {indent + 1} "
                        f"space{'s' if indent else ''}",
                        f"it continues the {what} from line {start.line + 1}")
            return

    def block_scalar(self, node: ScalarNode, indent: int) -> None:
        """Reports a leading empty line longer than the block scalar's first line."""
        text = self.text
        header = _BLOCK_HEADER_AT.match(text, node.start_mark.index)
        if header is None or any(c.isdigit() for c in header.group(1)):
            return  # an explicit indentation leaves nothing to detect
        found = _BREAK.search(text, header.end())
        line = node.start_mark.line
        longest = longest_line = 0
        while found is not None:
            line += 1
            begin = found.end()
            after = _SPACES_AT.match(text, begin).end()  # type: ignore[union-attr]
            spaces = after - begin
            if after < len(text) and text[after] not in _BREAKS:
                if indent < spaces < longest:
                    self.report(_Mark(begin, longest_line, 0),
                                f"this empty line has {longest} spaces, more than the "
                                f"{spaces} that indent the block scalar's first line",
                                f"the block scalar starts at line {node.start_mark.line + 1}")
                return
            if spaces > longest:
                longest, longest_line = spaces, line
            found = _BREAK.match(text, after)

    # -- sequences

    def sequence(self, node: SequenceNode, path: Path, depth: int, site: object) -> list:
        uses = self.uses.get(node) if site is None else None
        values, scalar = self.values, self.scalar
        # Lines are checked where they are written (not in copies), and only in block
        # collections: a flow collection's own lines are checked as a whole.
        block = site is None and not node.flow_style
        out: list = []
        append = out.append
        depth += 1
        for index, child in enumerate(node.value):
            child_path = path + (index,)
            if uses is not None and index in uses:
                append(self.alias(child, child_path, depth, uses[index]))
            elif site is None and child.__class__ is ScalarNode:
                # Inlined node() for the most common case: a scalar in the document.
                mark = child.start_mark
                values[child_path] = mark.line << _LINE_SHIFT | mark.column
                # Plain scalars (style '') keep to their indentation in libyaml.
                if block and child.style and child.end_mark.line != mark.line:
                    self.lines(child, node)
                append(scalar(child))
            else:
                if block and child.flow_style and child.end_mark.line != child.start_mark.line:
                    self.lines(child, node)
                append(self.node(child, child_path, depth, site))
        return out

    # -- mappings

    def fill(self, out: dict, node: MappingNode, path: Path, depth: int, site: object,
             blocked: set | None) -> None:
        """Adds the entries of ``node`` to ``out`` in document order.

        A merge key adds its sources' entries where it stands, except keys that are
        already there (written before it, or by an earlier source) and keys written
        after it. ``blocked`` is None for a mapping of the document itself, and for a
        merge source the set of keys that the mappings merging it write after their
        merge keys; a source's entries never overwrite anything.
        """
        uses = self.uses.get(node) if site is None else None
        values, keys, scalar = self.values, self.keys, self.scalar
        block = site is None and not node.flow_style  # see sequence()
        child_depth = depth + 1
        first_merge: Node | None = None
        defined: set | None = None if blocked is None else set()
        for i, (key_node, value_node) in enumerate(node.value):
            key_use = value_use = None
            if uses is not None:
                key_use = uses.get(2 * i)
                value_use = uses.get(2 * i + 1)
            if (key_use is None and key_node.tag is _PLAIN and key_node.value == "<<"
                    and key_node.__class__ is ScalarNode):
                if first_merge is not None:
                    self.report(key_node.start_mark, "duplicate key '<<' (first defined at "
                                f"line {first_merge.start_mark.line + 1})")
                    continue
                first_merge = key_node
                later = self.later_keys(node, i + 1)
                if blocked:
                    later |= blocked
                for source, source_site in self.merge_sources(value_node, value_use, depth, site):
                    self.fill(out, source, path, depth, source_site, later)
                continue
            if key_node.__class__ is not ScalarNode:
                kind = "sequence" if key_node.__class__ is SequenceNode else "mapping"
                self.report(key_use or key_node.start_mark,
                            f"a mapping key must be a scalar, not a {kind}")
                continue
            key = scalar(key_node)
            child_path = path + (key,)
            if defined is not None:  # A merge source: it only fills what is missing.
                if key in defined:
                    self.report(key_node.start_mark, f"duplicate key '{key}'")
                    continue
                defined.add(key)
                if key in out or key in blocked:  # type: ignore[operator]
                    continue
            elif key in out:
                self.report(key_node.start_mark, f"duplicate key '{key}' (first defined at "
                            f"line {self.first_line(node, i, key, site, child_path)})")
                continue
            key_site = key_use or site
            key_mark = key_node.start_mark if key_site is None else key_site
            keys[child_path] = key_mark.line << _LINE_SHIFT | key_mark.column
            if value_use is not None:
                out[key] = self.alias(value_node, child_path, child_depth, value_use)
            elif site is None and value_node.__class__ is ScalarNode:
                # Inlined node() for the most common case: a scalar in the document.
                mark = value_node.start_mark
                values[child_path] = mark.line << _LINE_SHIFT | mark.column
                if block and value_node.style and value_node.end_mark.line != mark.line:
                    self.lines(value_node, node)
                out[key] = scalar(value_node)
            else:
                if (block and value_node.flow_style
                        and value_node.end_mark.line != value_node.start_mark.line):
                    self.lines(value_node, node)
                out[key] = self.node(value_node, child_path, child_depth, site)

    def first_line(self, node: MappingNode, before: int, key: object, site: object,
                   path: Path) -> int:
        """The 1-based line where ``key`` is first written in ``node``."""
        if site is None:
            return (self.keys[path] >> _LINE_SHIFT) + 1
        # In a copy the source map holds the alias, so look the key up in the anchor.
        for key_node, _ in node.value[:before]:
            if key_node.__class__ is ScalarNode and self.scalar(key_node) == key:
                return key_node.start_mark.line + 1
        return key_node.start_mark.line + 1  # pragma: no cover - the key is always found

    def later_keys(self, node: MappingNode, start: int) -> set:
        """The scalar keys ``node`` writes from its ``start``-th entry on."""
        return {self.scalar(key_node) for key_node, _ in node.value[start:]
                if key_node.__class__ is ScalarNode}

    def merge_sources(self, value: Node, use: _AliasUse | None, depth: int,
                      site: object) -> list[tuple[MappingNode, object]]:
        """The mappings a ``<<`` value names, each with the site to record it at."""
        if use is not None:
            if not self.admit(use, depth):
                return []
            site = use
        if value.__class__ is MappingNode:
            return [(value, site)] if self.merge_tag_ok(value) else []
        if value.__class__ is not SequenceNode or (value.tag is not _SEQ and value.tag != SEQ_TAG):
            self.report(use or value.start_mark, _MERGE_PROBLEM)
            return []
        uses = self.uses.get(value) if site is None else None
        sources = []
        for index, item in enumerate(value.value):
            item_site = site
            item_use = uses.get(index) if uses is not None else None
            if item_use is not None:
                if not self.admit(item_use, depth):
                    continue
                item_site = item_use
            if item.__class__ is not MappingNode:
                self.report(item_use or item.start_mark, _MERGE_PROBLEM)
            elif self.merge_tag_ok(item):
                sources.append((item, item_site))
        return sources

    def merge_tag_ok(self, node: MappingNode) -> bool:
        if node.tag is _MAP or node.tag == MAP_TAG:
            return True
        self.report(node.start_mark, _tag_problem(node.tag, "a mapping"))
        return False


_MERGE_PROBLEM = "a merge key '<<' takes a mapping or a list of mappings"


def _tag_problem(tag: str, what: str) -> str:
    if tag in _SCALAR_TAGS or tag in (SEQ_TAG, MAP_TAG):
        return f"tag '{_show_tag(tag)}' cannot be used on {what}"
    return f"tag '{_show_tag(tag)}' is not allowed"
