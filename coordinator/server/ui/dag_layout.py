"""A run's job graph as an SVG picture: where each job goes, and the markup that draws it.

`layout(plan)` reads the stored plan (`Plan.to_dict()`) and places every job: one column
per Kahn level, left to right, so every dependency points right; rows ordered within a
column to reduce edge crossings (the barycenter heuristic of Sugiyama-style drawing);
the jobs a matrix expanded kept together in a box titled with their base name; edges as
cubic curves from the right side of a dependency to the left side of its dependent; the
critical path's jobs and edges flagged. `render_svg(layout, statuses)` turns that into
SVG markup in which every job is a `<g class="job status-…">` the page can recolour live.

Both are pure and deterministic: the same plan gives the same picture, whatever the
order of its dictionaries, because every free choice is broken by job name.

Job names are untrusted text (matrix values are whatever the pipeline says: `<script>`,
quotes, `&`, control characters), so every string from the plan passes `_xml` before it
reaches the markup, and element ids are an encoding of the name, never the name itself.
"""
from __future__ import annotations

import re
from bisect import bisect_right, insort
from dataclasses import dataclass
from functools import cached_property
from html import escape
from typing import Any, Callable, Iterable, Mapping

# Job statuses (shared/state/base.py), each with a glyph so that status is never told by
# colour alone; the word itself is in the node's <title>.
STATUS_GLYPHS: Mapping[str, str] = {
    "pending": "○",
    "running": "●",
    "retrying": "↻",
    "success": "✓",
    "failed": "✗",
    "cancelled": "⊘",
    "skipped": "↷",
}
UNKNOWN_STATUS = "pending"

# Geometry, in SVG user units (pixels at scale 1). Labels are cut to LABEL_CHARS so that
# they fit NODE_WIDTH next to the glyph at the 12-unit font the SVG asks for.
NODE_WIDTH = 180
NODE_HEIGHT = 34
COLUMN_GAP = 64  # between the boxes of neighbouring columns: room for the curves
ROW_GAP = 10
GROUP_PAD = 6  # a matrix box around its members, left, right and below
GROUP_HEADER = 22  # the matrix box's title above its first member
MARGIN = 16
LABEL_CHARS = 22
FONT_SIZE = 12

# Sweeps of the barycenter heuristic (each: one pass left to right, one right to left).
# Gains after the first few are rare; the best order seen is kept, so more never hurts
# except in time.
SWEEPS = 4


@dataclass(frozen=True)
class Node:
    """One job's box. `row` counts jobs from the top of its column."""

    name: str
    label: str  # what the box shows: the matrix values inside a group, else the name
    column: int
    row: int
    x: int
    y: int
    width: int
    height: int
    group: str | None  # the base name, when the job is drawn inside a matrix box
    critical: bool


@dataclass(frozen=True)
class Edge:
    """`target` depends on `source`; `path` is the SVG path data of the curve."""

    source: str
    target: str
    path: str
    critical: bool


@dataclass(frozen=True)
class Group:
    """The box around the jobs one matrix expanded to, in one column."""

    name: str  # the base name
    members: tuple[str, ...]
    column: int
    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class Layout:
    nodes: tuple[Node, ...]  # by column, then row
    edges: tuple[Edge, ...]  # critical ones last, so they are painted on top
    groups: tuple[Group, ...]
    columns: tuple[tuple[str, ...], ...]  # job names per column, top to bottom
    width: int
    height: int

    @cached_property
    def by_name(self) -> Mapping[str, Node]:
        return {node.name: node for node in self.nodes}


# -- ordering ---------------------------------------------------------------------------

_DIGITS = re.compile(r"(\d+)")


def _name_key(name: str) -> tuple[tuple[Any, ...], str]:
    """Names in natural order (`shard-9` before `shard-10`), then exactly, so no two tie."""
    parts = _DIGITS.split(name)
    # split() puts text at even and digits at odd positions: the tuples always compare.
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name


@dataclass(frozen=True)
class _Unit:
    """What the ordering moves: one job, or a matrix group that moves as one block."""

    key: tuple[tuple[Any, ...], str]
    members: tuple[str, ...]
    group: str | None


def _columns(jobs: Mapping[str, Any], levels: Iterable[Iterable[str]]) -> dict[str, int]:
    """Each job's column: its level's index among the levels holding known jobs; jobs no
    level names go to one column after all of them (a plan that misses one is corrupt,
    but the run page must still show every job)."""
    column: dict[str, int] = {}
    used = 0
    for level in levels or ():
        placed = False
        for name in level:
            if name in jobs and name not in column:
                column[name] = used
                placed = True
        used += placed
    for name in sorted((name for name in jobs if name not in column), key=_name_key):
        column[name] = used
    return column


def _units(names: list[str], jobs: Mapping[str, Any]) -> list[_Unit]:
    """One column's jobs as units: the members of a matrix (same base name, expanded
    names) together, sorted by name; everything in natural name order to start with."""
    by_base: dict[str, list[str]] = {}
    for name in names:
        by_base.setdefault(str(jobs[name].get("base_name") or name), []).append(name)
    units = []
    for base, members in by_base.items():
        if len(members) > 1 or members[0] != base:
            keyed = sorted((_name_key(name), name) for name in members)
            units.append(_Unit(_name_key(base), tuple(name for _, name in keyed), base))
        else:
            units.append(_Unit(_name_key(base), (base,), None))
    # A lone job and a group of the same name cannot both come from the compiler; if a
    # hand-made plan has them, `group` is None for the job, which sorts it first.
    return sorted(units, key=lambda u: (u.key, u.group is not None))


def _place(order: list[list[_Unit]]) -> dict[str, float]:
    """Each job's row, centred on its column's middle, so that columns of different
    heights compare (they are drawn centred too)."""
    pos: dict[str, float] = {}
    for units in order:
        count = sum(len(u.members) for u in units)
        row = -(count - 1) / 2
        for unit in units:
            for name in unit.members:
                pos[name] = row
                row += 1
    return pos


def _sweep(order: list[list[_Unit]], neighbours: Mapping[str, list[str]], columns: range) -> None:
    """Reorder each column in `columns` (in that sequence) by the mean row of each unit's
    neighbours, which are already placed; a unit without any keeps its row."""
    pos = _place(order)
    for c in columns:
        keyed = []
        for unit in order[c]:
            total = 0.0
            count = 0
            for name in unit.members:
                for other in neighbours[name]:
                    total += pos[other]
                    count += 1
            here = sum(pos[name] for name in unit.members) / len(unit.members)
            keyed.append((total / count if count else here, unit.key, unit.group is not None, unit))
        keyed.sort(key=lambda k: k[:3])
        order[c] = [k[3] for k in keyed]
        row = -(sum(len(u.members) for u in order[c]) - 1) / 2
        for unit in order[c]:
            for name in unit.members:
                pos[name] = row
                row += 1


_Gaps = list[list[tuple[str, str, float, float]]]


def _gaps(edges: list[tuple[str, str]], column: Mapping[str, int], columns: int) -> _Gaps:
    """For each gap between neighbouring columns, the edges through it, each with where
    it enters and leaves the gap as fractions of its own run (0 and 1 for a short edge)."""
    gaps: _Gaps = [[] for _ in range(max(columns - 1, 0))]
    for source, target in edges:
        cs, ct = column[source], column[target]
        span = ct - cs
        for g in range(cs, ct):
            gaps[g].append((source, target, (g - cs) / span, (g + 1 - cs) / span))
    return gaps


def _crossings(order: list[list[_Unit]], gaps: _Gaps) -> int:
    """Crossings of the edges drawn as straight lines between row positions, counted per
    gap between neighbouring columns: two lines cross in a gap when their order at its
    left side differs from their order at its right side (an inversion count)."""
    pos = _place(order)
    total = 0
    for through in gaps:
        segments = []
        for source, target, enter, leave in through:
            ys = pos[source]
            rise = pos[target] - ys
            segments.append((ys + rise * enter, ys + rise * leave))
        # Sorted by left end, then right: lines sharing an end are never counted.
        segments.sort()
        seen: list[float] = []
        for _, right in segments:
            total += len(seen) - bisect_right(seen, right)
            insort(seen, right)
    return total


def _order(columns: list[list[_Unit]], edges: list[tuple[str, str]], column: Mapping[str, int]) -> list[list[_Unit]]:
    preds: dict[str, list[str]] = {name: [] for units in columns for u in units for name in u.members}
    succs: dict[str, list[str]] = {name: [] for name in preds}
    for source, target in edges:
        preds[target].append(source)
        succs[source].append(target)
    gaps = _gaps(edges, column, len(columns))
    order = [list(units) for units in columns]
    best, fewest = [list(units) for units in order], _crossings(order, gaps)
    right, left = range(1, len(order)), range(len(order) - 2, -1, -1)
    for _ in range(SWEEPS):
        if fewest == 0:
            break
        for neighbours, columns_in_turn in ((preds, right), (succs, left)):
            _sweep(order, neighbours, columns_in_turn)
            count = _crossings(order, gaps)
            if count < fewest:  # strictly: the earliest of equally good orders wins
                best, fewest = [list(units) for units in order], count
    return best


# -- layout -----------------------------------------------------------------------------


def _label(name: str, group: str | None) -> str:
    """Inside its matrix box a job shows only its matrix values (`PY=3.12`): the box
    already says the base name, and the full name is in the tooltip."""
    if group is not None and name.startswith(group + "[") and name.endswith("]") and len(name) > len(group) + 2:
        return name[len(group) + 1:-1]
    return name


def _curve(x1: int, y1: int, x2: int, y2: int) -> str:
    # Horizontal tangents at both ends: the curve leaves and enters the boxes level.
    bend = (x2 - x1) // 2
    return f"M{x1} {y1}C{x1 + bend} {y1} {x2 - bend} {y2} {x2} {y2}"


def layout(plan: Mapping[str, Any]) -> Layout:
    """Where every job of `plan` (a `Plan.to_dict()`) goes; see the module's doc.

    Dependencies on jobs the plan does not have are ignored, and so is a dependency that
    does not point to a later column (only a corrupt plan has one).
    """
    jobs: Mapping[str, Any] = plan.get("jobs") or {}
    column = _columns(jobs, plan.get("levels") or ())
    width_in_columns = max(column.values(), default=-1) + 1
    names_by_column: list[list[str]] = [[] for _ in range(width_in_columns)]
    for name, c in column.items():
        names_by_column[c].append(name)

    edges: list[tuple[str, str]] = []
    # Plain sorted order: any fixed order keeps the barycenter sums, and so the picture,
    # independent of the plan's dictionary order.
    for name in sorted(jobs):
        for dep in dict.fromkeys(jobs[name].get("depends_on") or ()):
            if dep in column and column[dep] < column[name]:
                edges.append((dep, name))

    order = _order([_units(names, jobs) for names in names_by_column], edges, column)

    path = [name for name in plan.get("critical_path") or () if name in jobs]
    critical_nodes = set(path)
    critical_edges = set(zip(path, path[1:]))

    # Stack each column's units from y = 0, then centre the columns on the tallest one.
    stacked: list[tuple[list[tuple[str, int, str | None]], list[tuple[_Unit, int, int]], int]] = []
    for units in order:
        placed_nodes: list[tuple[str, int, str | None]] = []
        placed_groups: list[tuple[_Unit, int, int]] = []
        y = 0
        for unit in units:
            if unit.group is None:
                placed_nodes.append((unit.members[0], y, None))
                y += NODE_HEIGHT + ROW_GAP
                continue
            top = y
            y += GROUP_HEADER
            for name in unit.members:
                placed_nodes.append((name, y, unit.group))
                y += NODE_HEIGHT + ROW_GAP
            height = y - ROW_GAP + GROUP_PAD - top
            placed_groups.append((unit, top, height))
            y = top + height + ROW_GAP
        stacked.append((placed_nodes, placed_groups, max(y - ROW_GAP, 0)))
    tallest = max((h for _, _, h in stacked), default=0)

    nodes: list[Node] = []
    groups: list[Group] = []
    for c, (placed_nodes, placed_groups, height) in enumerate(stacked):
        x = MARGIN + GROUP_PAD + c * (NODE_WIDTH + COLUMN_GAP)
        shift = MARGIN + (tallest - height) // 2
        for row, (name, y, group) in enumerate(placed_nodes):
            nodes.append(Node(name=name, label=_label(name, group), column=c, row=row, x=x, y=y + shift,
                              width=NODE_WIDTH, height=NODE_HEIGHT, group=group, critical=name in critical_nodes))
        for unit, top, h in placed_groups:
            groups.append(Group(name=unit.group or "", members=unit.members, column=c, x=x - GROUP_PAD,
                                y=top + shift, width=NODE_WIDTH + 2 * GROUP_PAD, height=h))

    at = {node.name: node for node in nodes}
    drawn = []
    for source, target in edges:
        s, t = at[source], at[target]
        critical = (source, target) in critical_edges
        drawn.append(((critical, s.column, s.row, t.column, t.row),
                      Edge(source, target, _curve(s.x + s.width, s.y + s.height // 2, t.x, t.y + t.height // 2),
                           critical)))
    drawn.sort(key=lambda d: d[0])

    width = 2 * MARGIN + (2 * GROUP_PAD + width_in_columns * NODE_WIDTH + (width_in_columns - 1) * COLUMN_GAP
                          if width_in_columns else 0)
    return Layout(
        nodes=tuple(nodes),
        edges=tuple(edge for _, edge in drawn),
        groups=tuple(groups),
        columns=tuple(tuple(name for unit in units for name in unit.members) for units in order),
        width=width,
        height=2 * MARGIN + tallest,
    )


# -- SVG --------------------------------------------------------------------------------

# Characters XML 1.0 does not allow at all (a parser rejects the whole document).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
# A link given by the caller may be relative or http(s); anything else with a scheme
# (`javascript:`, `data:`) is refused, whatever built it. Browsers drop tabs and newlines
# anywhere in a URL and controls and spaces before it (`java\tscript:` runs), so the
# scheme is read as they read it.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_URL_DROPPED = re.compile(r"[\t\n\r]")
_URL_LEADING = "".join(map(chr, range(0x21)))


def _xml(text: str) -> str:
    """`text` safe as XML (and HTML) character data and as a quoted attribute value."""
    return escape(_NOT_XML.sub("\ufffd", text), quote=True)


def _checked_link(href: str, name: str) -> str:
    scheme = _SCHEME.match(_URL_DROPPED.sub("", href).lstrip(_URL_LEADING))
    if scheme and scheme.group(1).lower() not in ("http", "https"):
        raise ValueError(f"refusing a {scheme.group(1)!r} link for job {name!r}")
    return href


def _cut(text: str, limit: int = LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def job_dom_id(name: str) -> str:
    """The `id` of a job's `<g>`: `job-` and the hex of the name's UTF-8 bytes. Unique per
    name, safe in any selector or URL fragment, and simple to compute in the page's JS."""
    return "job-" + name.encode("utf-8", "surrogatepass").hex()


def status_of(statuses: Mapping[str, str], name: str) -> str:
    """A job's status for drawing: unknown or absent ones are drawn as pending."""
    status = statuses.get(name, UNKNOWN_STATUS)
    return status if status in STATUS_GLYPHS else UNKNOWN_STATUS


def render_svg(layout: Layout, statuses: Mapping[str, str], *, link: Callable[[str], str] | None = None) -> str:
    """The layout as an `<svg>` element; `statuses` maps job names to job statuses, and
    `link(name)`, when given, is where clicking a job goes (relative or http(s) only).

    Markup the page's script relies on to recolour jobs live (find a job by
    `id = job_dom_id(name)`, or by `[data-job="…"]`):
    `<g class="job status-S[ critical]" data-job="NAME" data-status="S" id="job-HEX">`
    holding `<title>NAME (S)</title>`, then (inside `<a href>` when linked) a
    `<rect class="job-box">`, `<text class="job-icon">GLYPH</text>` and
    `<text class="job-name">LABEL</text>`; edges are `<path class="edge[ critical]"
    data-from="NAME" data-to="NAME">`; matrix boxes `<g class="group" data-group="BASE">`.
    Colours are left to the page's CSS; presentation attributes give a legible default
    (boxes filled with the page's `Canvas` colour, so that all of a box is clickable and
    edges passing behind it do not cross its text).
    """
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="dag" viewBox="0 0 {layout.width} {layout.height}" '
        f'width="{layout.width}" height="{layout.height}" font-size="{FONT_SIZE}" '
        f'font-family="system-ui, sans-serif" role="group" aria-label="Pipeline jobs">'
    ]
    out.append('<g class="groups">')
    for group in layout.groups:
        name = _xml(group.name)
        out.append(
            f'<g class="group" data-group="{name}"><title>{name}</title>'
            f'<rect class="group-box" x="{group.x}" y="{group.y}" width="{group.width}" height="{group.height}" '
            f'rx="8" fill="none" stroke="currentColor" stroke-dasharray="4 3"/>'
            f'<text class="group-name" x="{group.x + GROUP_PAD}" y="{group.y + GROUP_HEADER // 2 + 1}" '
            f'dominant-baseline="central" fill="currentColor">{_xml(_cut(group.name, LABEL_CHARS + 2))}</text></g>'
        )
    out.append('</g><g class="edges" fill="none" stroke="currentColor">')
    for edge in layout.edges:
        css = "edge critical" if edge.critical else "edge"
        out.append(f'<path class="{css}" d="{edge.path}" data-from="{_xml(edge.source)}" '
                   f'data-to="{_xml(edge.target)}"/>')
    out.append('</g><g class="jobs">')
    for node in layout.nodes:
        status = status_of(statuses, node.name)
        name = _xml(node.name)
        css = f"job status-{status} critical" if node.critical else f"job status-{status}"
        out.append(f'<g class="{css}" data-job="{name}" data-status="{status}" id="{job_dom_id(node.name)}">'
                   f'<title>{name} ({status})</title>')
        if link is not None:
            out.append(f'<a href="{_xml(_checked_link(link(node.name), node.name))}">')
        middle = node.y + node.height // 2
        out.append(
            f'<rect class="job-box" x="{node.x}" y="{node.y}" width="{node.width}" height="{node.height}" '
            f'rx="6" fill="Canvas" stroke="currentColor"/>'
            f'<text class="job-icon" x="{node.x + 10}" y="{middle}" dominant-baseline="central" '
            f'fill="currentColor">{STATUS_GLYPHS[status]}</text>'
            f'<text class="job-name" x="{node.x + 28}" y="{middle}" dominant-baseline="central" '
            f'fill="currentColor">{_xml(_cut(node.label))}</text>'
        )
        if link is not None:
            out.append("</a>")
        out.append("</g>")
    out.append("</g></svg>")
    return "".join(out)
