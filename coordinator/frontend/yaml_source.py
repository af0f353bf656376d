"""The YAML source loader: pipeline file text to plain Python data plus a source map.

The loader composes a node graph with libyaml (or PyYAML's pure Python composer when
libyaml is missing) and builds the Python values itself, so that it decides what the
YAML means rather than PyYAML's YAML 1.1 rules:

* scalars are typed with the YAML 1.2 core schema (``yes``, ``on`` and ``2024-01-01`` stay
  strings; quoted scalars are always strings);
* only the standard tags for those types are accepted; every other tag is an error;
* aliases are copied at every use and merge keys (``<<``) are applied, under limits on
  node count and nesting depth so that hostile files fail fast instead of exhausting memory;
* every problem becomes a diagnostic with a line and column, never an exception.

See ``docs/yaml.md`` for the user-facing description.
"""
from __future__ import annotations

import gc
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple

import yaml
from yaml.composer import Composer, ComposerError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.scanner import Scanner

from coordinator.frontend.diagnostics import Diagnostics, Position

try:
    from yaml._yaml import CParser
except ImportError:  # PyYAML built without libyaml: the pure Python composer is used.
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
    return _load(text, diagnostics, use_libyaml=True)


# --------------------------------------------------------------------------- loading


def _load(text: str | bytes, diagnostics: Diagnostics, use_libyaml: bool) -> LoadedYaml | None:
    source = _decode(text, diagnostics)
    if source is None or not _check_characters(source, diagnostics):
        return None
    errors_before = len(diagnostics.errors)
    try:
        with _gc_paused():
            loaded = _build_document(source, diagnostics, use_libyaml)
    except RecursionError:
        # Loading recurses once or twice per level, at most MAX_DEPTH levels; only a
        # caller already near the interpreter's limit gets here.
        diagnostics.error(Position(1, 1), "the document is nested too deeply to load "
                                          "from this call stack")
        return None
    if loaded is None or len(diagnostics.errors) > errors_before:
        return None
    return loaded


def _build_document(source: str, diagnostics: Diagnostics, use_libyaml: bool) -> LoadedYaml | None:
    # The node graph is local to this function so that it is freed before the garbage
    # collector runs again, which then only has the result left to look at.
    composed = _compose(source, diagnostics, use_libyaml)
    if composed is None:
        return None
    root, nodes = composed
    try:
        uses = _AliasScan(source, nodes).run(root) if _MAY_HAVE_ALIAS.search(source) else {}
        builder = _Builder(diagnostics, uses)
        data = builder.node(root, (), 1, None)
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


class _PythonComposer(Reader, Scanner, Parser, Composer, _ComposerHooks):
    def __init__(self, text: str) -> None:
        Reader.__init__(self, text)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        self._init_hooks()


# Every alias token matches this (libyaml and PyYAML require a name character after
# "*"), so a text without a match has no aliases and needs no alias scan.
_MAY_HAVE_ALIAS = re.compile(r"\*[0-9A-Za-z_-]")
_ANCHOR_AT = re.compile(r"(?:![^\s]*\s+)?&([0-9A-Za-z_-]+)")
_ALIAS_AT = re.compile(r"\*([0-9A-Za-z_-]+)")


def _compose(text: str, diagnostics: Diagnostics,
             use_libyaml: bool) -> tuple[Node, int] | None:
    """The root node of the one document in ``text`` and its number of value nodes.

    None after reporting why there is no such document.
    """
    composer_class = _LibyamlComposer if use_libyaml and _LibyamlComposer is not None \
        else _PythonComposer
    composer = composer_class(text)
    try:
        root = composer.get_single_node()
    except _TooDeep as exc:
        diagnostics.error(_node_position(exc.parent),
                          f"the document is nested more than {MAX_DEPTH} levels deep")
        return None
    except _TooMany as exc:
        diagnostics.error(_node_position(exc.parent),
                          f"the document has more than {MAX_NODES:,} nodes")
        return None
    except yaml.MarkedYAMLError as exc:
        _report_yaml_error(text, exc, diagnostics)
        return None
    except yaml.YAMLError as exc:  # a ReaderError, which the character check should prevent
        diagnostics.error(Position(1, 1), f"cannot read the file: {exc}")
        return None
    if root is None:
        diagnostics.error(Position(1, 1), "expected one YAML document, but the file has none")
        return None
    return root, composer._count


def _node_position(node: Node | None) -> Position:
    if node is None:
        return Position(1, 1)
    return Position(node.start_mark.line + 1, node.start_mark.column + 1)


def _report_yaml_error(text: str, exc: yaml.MarkedYAMLError, diagnostics: Diagnostics) -> None:
    mark = exc.problem_mark or exc.context_mark
    position = _position(mark) or Position(1, 1)
    problem = exc.problem or exc.context or "invalid YAML"
    if isinstance(exc, ComposerError):
        if problem == "but found another document":
            diagnostics.error(position, "expected one YAML document",
                              "a second document starts here")
            return
        if problem.startswith("found undefined alias"):
            name = _ALIAS_AT.match(text, mark.index) if mark is not None else None
            label = f" '*{name.group(1)}'" if name else ""
            diagnostics.error(position, f"undefined alias{label}",
                              "an anchor must be defined before its aliases")
            return
        if (exc.context or "").startswith("found duplicate anchor"):
            name = _ANCHOR_AT.match(text, mark.index) if mark is not None else None
            label = f" '&{name.group(1)}'" if name else ""
            first = exc.context_mark.line + 1 if exc.context_mark is not None else "?"
            diagnostics.error(position, f"duplicate anchor{label} (first defined at line {first})")
            return
    hint = None
    if exc.context and exc.problem:
        hint = exc.context
        context_mark = exc.context_mark
        if context_mark is not None and _position(context_mark) != position:
            hint += f" at line {context_mark.line + 1}, column {context_mark.column + 1}"
    diagnostics.error(position, problem, hint)


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
_MISSING = object()
_NUMBER_START = frozenset("0123456789+-.")
_DECIMAL = re.compile(r"[-+]?[0-9]+")
_OCTAL = re.compile(r"0o[0-7]+")
_HEX = re.compile(r"0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")


class _BadScalar(Exception):
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


class _Builder:
    """Builds plain Python values from a composed node graph, recording the source map.

    ``site`` is None while building what the document spells out, and the alias use
    while building a copy of an anchor: a copy is recorded at the alias, with its
    ``origin`` where the anchor's content is written. Problems are reported where they
    are written, once however often the anchor is copied.
    """

    def __init__(self, diagnostics: Diagnostics, uses: dict[Node, dict[int, _AliasUse]]) -> None:
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
        if value is _MISSING:
            self.report(node.start_mark, f"'{node.value}' is not a valid {_show_tag(tag)} value")
            return None
        return value

    # -- sequences

    def sequence(self, node: SequenceNode, path: Path, depth: int, site: object) -> list:
        uses = self.uses.get(node) if site is None else None
        values, scalar = self.values, self.scalar
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
                append(scalar(child))
            else:
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
                out[key] = scalar(value_node)
            else:
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
