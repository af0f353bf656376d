"""Algorithms over a pipeline's job graph.

A job graph is ``deps: Mapping[str, Sequence[str]]``: each job maps to the jobs it
depends on, and every job is a key. Job names are arbitrary strings. Every function is
pure and deterministic: wherever the order is otherwise free, names are sorted.

Direction convention: a loop is written in the direction of ``depends_on``, so
``['build', 'test', 'package', 'build']`` (printed ``build -> test -> package -> build``)
means build depends on test, test on package, and package on build. Read ``a -> b`` as
"a's depends_on lists b".

Large graphs (thousands of jobs) stay fast because ancestor sets are bitsets (Python
ints) keyed by topological index, and nothing recurses per job.
"""
from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import compress
from typing import Any

Deps = Mapping[str, Sequence[str]]


class CycleError(ValueError):
    """The graph has a dependency loop; ``cycle`` is its shortest one (see module doc)."""

    def __init__(self, cycle: list[str]) -> None:
        self.cycle = cycle
        super().__init__("circular dependency: " + " -> ".join(cycle))


# -- indexing --------------------------------------------------------------------------


def _by_name(deps: Deps) -> tuple[list[str], list[list[int]]]:
    """Sorted names and each job's deduplicated dependencies as indices into them.

    Indexing by sorted name makes "smallest index" mean "smallest name", which is what
    every tie-break below wants.
    """
    names = sorted(deps)
    index = {name: i for i, name in enumerate(names)}
    out: list[list[int]] = []
    for name in names:
        listed = deps[name]
        # a bare string is a Sequence[str] too, and would silently become its letters
        if isinstance(listed, str):
            raise TypeError(f"dependencies of job {name!r} must be a list of names, not a string")
        row: set[int] = set()
        for dep in listed:
            j = index.get(dep)
            if j is None:
                raise ValueError(f"job {name!r} depends on unknown job {dep!r}")
            row.add(j)
        out.append(sorted(row))
    return names, out


def _reverse(edges: list[list[int]]) -> list[list[int]]:
    """Reverse adjacency lists; each comes out sorted because rows are read in index order."""
    rev: list[list[int]] = [[] for _ in edges]
    for v, row in enumerate(edges):
        for w in row:
            rev[w].append(v)
    return rev


@dataclass(frozen=True)
class _Dag:
    """An acyclic job graph re-indexed in topological order (Kahn levels, sorted within)."""

    names: list[str]
    levels: list[list[int]]
    preds: list[list[int]]  # dependencies
    succs: list[list[int]]  # dependents


def _dag(deps: Deps) -> _Dag:
    """Index ``deps`` topologically, or raise CycleError naming its shortest loop."""
    names, preds = _by_name(deps)
    succs = _reverse(preds)
    waiting = [len(row) for row in preds]
    level = [v for v, n in enumerate(waiting) if n == 0]
    levels: list[list[int]] = []
    while level:
        levels.append(level)
        nxt: list[int] = []
        for v in level:
            for w in succs[v]:
                waiting[w] -= 1
                if waiting[w] == 0:
                    nxt.append(w)
        nxt.sort()
        level = nxt
    placed = sum(len(lv) for lv in levels)
    if placed != len(names):
        loops = _cycles(preds, succs)
        raise CycleError([names[v] for v in min(loops, key=lambda c: (len(c), c))])
    order = [v for lv in levels for v in lv]
    pos = [0] * len(order)
    for new, old in enumerate(order):
        pos[old] = new
    topo_preds = [sorted(pos[p] for p in preds[old]) for old in order]
    return _Dag(
        names=[names[v] for v in order],
        levels=[[pos[v] for v in lv] for lv in levels],
        preds=topo_preds,
        succs=_reverse(topo_preds),
    )


def _ancestors(dag: _Dag) -> list[int]:
    """Bitset of every job's strict ancestors (transitive dependencies)."""
    anc = [0] * len(dag.names)
    for v, row in enumerate(dag.preds):
        a = 0
        for p in row:
            a |= anc[p] | (1 << p)
        anc[v] = a
    return anc


def _bits(mask: int) -> list[int]:
    """Indices of the set bits of ``mask``, ascending."""
    # Both ways scan the binary text in C; peeling bits off a 2,000-bit int one at a
    # time would copy the whole int per bit. Dense masks are cheapest through
    # compress() (NUL bytes are falsy), sparse ones through find().
    if mask & (mask - 1) == 0:
        return [mask.bit_length() - 1] if mask else []
    skip = (mask & -mask).bit_length() - 1
    text = bin(mask >> skip)[:1:-1]
    if mask.bit_count() * 6 > len(text):
        return list(compress(range(skip, skip + len(text)), text.replace("0", "\0").encode()))
    out = []
    i = text.find("1")
    while i != -1:
        out.append(i + skip)
        i = text.find("1", i + 1)
    return out


# -- cycles ----------------------------------------------------------------------------


def _sccs(roots: Sequence[int], edges: list[list[int]], inside: set[int] | None) -> list[list[int]]:
    """Strongly connected components of the subgraph on ``inside`` (all if None).

    Tarjan's algorithm with an explicit stack, so a 5,000-job loop does not hit the
    recursion limit.
    """
    order: dict[int, int] = {}
    low: dict[int, int] = {}
    on_stack: set[int] = set()
    stack: list[int] = []
    out: list[list[int]] = []
    for root in roots:
        if root in order:
            continue
        order[root] = low[root] = len(order)
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(edges[root]))]
        while work:
            v, it = work[-1]
            descended = False
            for w in it:
                if inside is not None and w not in inside:
                    continue
                if w not in order:
                    order[w] = low[w] = len(order)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(edges[w])))
                    descended = True
                    break
                if w in on_stack:
                    low[v] = min(low[v], order[w])
            if descended:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
            if low[v] == order[v]:
                comp: list[int] = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                out.append(comp)
    return out


def _loop_through(s: int, comp: set[int], edges: list[list[int]], rev: list[list[int]],
                  max_len: int) -> list[int] | None:
    """The lexicographically smallest shortest loop from ``s`` back to ``s`` inside ``comp``.

    Only loops of at most ``max_len`` edges are looked for. A backward BFS gives every
    job's distance to ``s``; walking forward from ``s`` always to the smallest job that
    is still on a shortest way back then yields the smallest such loop.
    """
    targets = set(edges[s])
    dist: dict[int, int] = {}
    frontier = [p for p in rev[s] if p in comp and p != s]
    for p in frontier:
        dist[p] = 1
    d = 1
    while frontier and not targets.intersection(frontier):
        if d + 1 >= max_len:  # a loop found next would have more than max_len edges
            return None
        d += 1
        nxt = []
        for v in frontier:
            for p in rev[v]:
                if p in comp and p != s and p not in dist:
                    dist[p] = d
                    nxt.append(p)
        frontier = nxt
    if not frontier:
        return None
    loop, cur, remaining = [s], s, d + 1
    while remaining > 1:
        cur = min(w for w in edges[cur] if dist.get(w) == remaining - 1)
        loop.append(cur)
        remaining -= 1
    loop.append(s)
    return loop


def _shortest_in(comp: list[int], edges: list[list[int]], rev: list[list[int]]) -> list[int]:
    """The smallest of the shortest loops in one strongly connected component.

    Loops are compared by length, then as lists starting at their smallest job. Jobs are
    tried smallest first, each looking only for loops in which it is the smallest job;
    it is then removed and the component re-split, so a long loop is walked only once.
    """
    selfloops = [v for v in comp if v in edges[v]]
    if selfloops:
        s = min(selfloops)
        return [s, s]
    best: list[int] | None = None
    heap = [(min(comp), 0, set(comp))]
    tiebreak = 1
    while heap:
        s, _, part = heapq.heappop(heap)
        # later starts are larger, so they can only win by being strictly shorter
        max_len = len(part) if best is None else min(len(part), len(best) - 2)
        if max_len < 2:
            continue
        found = _loop_through(s, part, edges, rev, max_len)
        if found is not None:
            best = found
        part.discard(s)
        for sub in _sccs(sorted(part), edges, part):
            if len(sub) > 1:
                heapq.heappush(heap, (min(sub), tiebreak, set(sub)))
                tiebreak += 1
    assert best is not None, "a strongly connected component of 2+ jobs has a loop"
    return best


def _cycles(edges: list[list[int]], rev: list[list[int]]) -> list[list[int]]:
    """One smallest shortest loop per strongly connected component that has a loop."""
    loops = []
    for comp in _sccs(range(len(edges)), edges, None):
        if len(comp) > 1 or comp[0] in edges[comp[0]]:
            loops.append(_shortest_in(comp, edges, rev))
    return loops


def cycles(deps: Deps) -> list[list[str]]:
    """Every independent dependency loop: the shortest one of each tangle, sorted.

    A tangle is a strongly connected component (jobs that all reach each other); each
    contributes its shortest loop, as in :func:`shortest_cycle`, so a validator can
    report every separate problem in one pass. Empty for an acyclic graph.
    """
    names, edges = _by_name(deps)
    loops = _cycles(edges, _reverse(edges))
    return sorted([names[v] for v in loop] for loop in loops)


def shortest_cycle(deps: Deps) -> list[str] | None:
    """The shortest dependency loop, or None when the graph is acyclic.

    The loop starts and ends at its lexicographically smallest job and follows
    ``depends_on``: ``['build', 'test', 'package', 'build']`` means build depends on
    test, test on package and package on build; print it with ``" -> ".join(loop)``. A
    job that depends on itself gives ``['a', 'a']``. Among loops of equal length the
    lexicographically smallest list wins.
    """
    names, edges = _by_name(deps)
    loops = _cycles(edges, _reverse(edges))
    if not loops:
        return None
    return [names[v] for v in min(loops, key=lambda c: (len(c), c))]


# -- orderings and paths ---------------------------------------------------------------


def kahn_levels(deps: Deps) -> tuple[tuple[str, ...], ...]:
    """Jobs grouped into levels: level 0 has no dependencies, level k+1 depends only on
    levels up to k (so a job's level is its longest dependency chain). Names are sorted
    within a level. Raises CycleError (a ValueError) on a loop."""
    dag = _dag(deps)
    return tuple(tuple(dag.names[v] for v in level) for level in dag.levels)


def dependents(deps: Deps) -> dict[str, tuple[str, ...]]:
    """Reverse edges: each job (every job is a key) to the sorted jobs that depend on it."""
    names, edges = _by_name(deps)
    return {name: tuple(names[w] for w in row) for name, row in zip(names, _reverse(edges))}


def critical_path(deps: Deps, weight: Mapping[str, float]) -> tuple[tuple[str, ...], float]:
    """The heaviest chain of dependencies and its total weight (sum of its jobs' weights).

    The path runs from a job with no dependencies to a job nothing depends on, in run
    order. Weights must be finite and non-negative, one per job. Among equally heavy
    paths the lexicographically smallest (compared job by job from the start) wins.
    Raises CycleError on a loop; an empty graph gives ``((), 0.0)``.
    """
    dag = _dag(deps)
    names = dag.names
    w: list[float] = []
    for name in names:
        if name not in weight:
            raise ValueError(f"no weight for job {name!r}")
        value = weight[name]
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"weight of job {name!r} must be finite and >= 0, got {value!r}")
        w.append(value)
    # tail[v]: heaviest path starting at v; comparing with `==` against the very value
    # that max() picked is exact, so float rounding cannot break ties differently
    tail: list[float] = [0.0] * len(names)
    nxt: list[int] = [-1] * len(names)
    for v in range(len(names) - 1, -1, -1):
        after = dag.succs[v]
        if after:
            top = max(tail[s] for s in after)
            nxt[v] = min((s for s in after if tail[s] == top), key=names.__getitem__)
            tail[v] = w[v] + top
        else:
            tail[v] = w[v]
    starts = dag.levels[0] if dag.levels else []
    if not starts:
        return (), 0.0
    top = max(tail[s] for s in starts)
    v = min((s for s in starts if tail[s] == top), key=names.__getitem__)
    path = []
    while v != -1:
        path.append(names[v])
        v = nxt[v]
    return tuple(path), float(top)


def transitive_reduction(deps: Deps) -> dict[str, tuple[str, ...]]:
    """The same ordering with redundant edges removed: a dependency is dropped when it
    is already reached through another dependency. Keys and values are sorted. Raises
    CycleError on a loop."""
    dag = _dag(deps)
    anc = _ancestors(dag)
    out: dict[str, tuple[str, ...]] = {}
    for v, row in enumerate(dag.preds):
        implied = 0
        for p in row:
            implied |= anc[p]
        kept = sorted(dag.names[p] for p in row if not (implied >> p) & 1)
        out[dag.names[v]] = tuple(kept)
    return dict(sorted(out.items()))


# -- series-parallel decomposition -----------------------------------------------------


@dataclass(frozen=True)
class Leaf:
    """One job."""

    job: str


@dataclass(frozen=True)
class Series:
    """Parts that run one after another: each starts when the previous one has finished."""

    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Parallel:
    """Parts that run side by side, independently of each other."""

    parts: tuple[Node, ...]


Node = Leaf | Series | Parallel


@dataclass(frozen=True)
class Barrier:
    """A place where the decomposition is stricter than the graph.

    A connected part that was not series-parallel had its ``sources`` (jobs with no
    dependency inside the part) run as one parallel step before the rest of the part.
    ``waits`` lists, sorted by job, each job that starts right after that step with
    the sources it now waits for although it does not depend on them. Later jobs of the
    part wait only through those jobs: adding each listed wait as a dependency gives
    exactly the order the decomposition enforces.
    """

    sources: tuple[str, ...]
    waits: tuple[tuple[str, tuple[str, ...]], ...]


@dataclass(frozen=True)
class Decomposition:
    """A series-parallel tree over all jobs, plus the barriers it had to add."""

    root: Node
    barriers: tuple[Barrier, ...]


class _Decomposer:
    """Splits job sets (bitsets over topological indices) into series/parallel parts.

    Every set it meets is convex (it holds every job on a path between two of its
    jobs), so ancestors within a set are the global ancestors masked by the set. Each
    set is also "level-aligned": the longest path inside it from its sources to a job is
    that job's global Kahn level minus the set's lowest level. Components, series parts
    and peeled rests all keep both properties, which makes a set's sources its lowest
    level and its possible series cuts the boundaries between its levels.
    """

    def __init__(self, dag: _Dag) -> None:
        self.names = dag.names
        self.anc = _ancestors(dag)
        self.desc = [0] * len(dag.names)
        for v in range(len(dag.names) - 1, -1, -1):
            for w in dag.succs[v]:
                self.desc[v] |= self.desc[w] | (1 << w)
        self.preds = dag.preds
        self._near: list[int] | None = None
        self.level_of: list[int] = []
        self.level_mask: list[int] = []
        self.below: list[int] = []  # per level: every job of a lower level
        start = 0
        for depth, level in enumerate(dag.levels):
            self.level_of.extend([depth] * len(level))
            self.below.append((1 << start) - 1)
            end = start + len(level)
            self.level_mask.append((1 << end) - (1 << start))
            start = end
        self.barriers: list[Barrier] = []

    def components(self, part: int) -> list[int]:
        """Weakly connected components of ``part``, ordered by their smallest name."""
        lo = self.level_of[(part & -part).bit_length() - 1]
        sources = _bits(part & self.level_mask[lo])
        if len(sources) == 1:  # everything descends from it
            return [part]
        comps = self._merge_descendants(part, sources)
        if comps is None:
            comps = self._flood(part)
        if len(comps) > 1:
            names = self.names.__getitem__
            comps.sort(key=lambda comp: min(map(names, _bits(comp))))
        return comps

    def _merge_descendants(self, part: int, sources: list[int]) -> list[int] | None:
        """Components as unions of overlapping source-descendant sets: a few bitset
        operations per source and group, where a flood fill costs some per job. None
        when there are so many groups that the flood fill is cheaper."""
        groups: list[int] = []
        for s in sources:
            if len(groups) > 32:
                return None
            reach = (self.desc[s] | (1 << s)) & part
            apart = []
            for group in groups:
                if group & reach:
                    reach |= group
                else:
                    apart.append(group)
            apart.append(reach)
            groups = apart
        return groups

    def _flood(self, part: int) -> list[int]:
        """Components by flood fill through dependencies and dependents."""
        if self._near is None:
            self._near = [0] * len(self.names)
            for v, row in enumerate(self.preds):
                for p in row:
                    self._near[v] |= 1 << p
                    self._near[p] |= 1 << v
        near = self._near
        comps = []
        rest = part
        while rest:
            comp = frontier = rest & -rest
            while frontier:
                grown = 0
                for v in _bits(frontier):
                    grown |= near[v]
                frontier = grown & rest & ~comp
                comp |= frontier
            comps.append(comp)
            rest &= ~comp
        return comps

    def series_cuts(self, part: int) -> list[int]:
        """The series parts of a connected ``part``, in run order (one if it has none).

        A cut before level k of ``part`` is valid when every job of that level depends
        on every job of ``part`` below it: then, as every later job depends on a job of
        level k, everything after the cut depends on everything before it.
        """
        lo = self.level_of[(part & -part).bit_length() - 1]
        hi = self.level_of[part.bit_length() - 1]
        cuts = []
        for k in range(lo + 1, hi + 1):
            earlier = part & self.below[k]
            members = part & self.level_mask[k]
            # one job not depending on all of them rules the cut out, and usually the
            # first one tried does, so jobs are taken one at a time
            while members:
                low = members & -members
                if earlier & ~self.anc[low.bit_length() - 1]:
                    break
                members ^= low
            else:
                cuts.append(k)
        parts, low = [], 0
        for k in cuts:
            parts.append(part & self.below[k] & ~low)
            low = self.below[k]
        parts.append(part & ~low)
        return parts

    def peel(self, part: int) -> list[int]:
        """Fallback for a connected ``part`` with no series cut: sources first, then the rest.

        Only the jobs starting right after the sources are recorded as waiting: every
        later job depends on one of them, so it is held back through them, and listing
        it again would grow the plan quadratically.
        """
        lo = self.level_of[(part & -part).bit_length() - 1]
        sources = part & self.level_mask[lo]
        names = self.names
        waits = []
        # names are sorted within a level, so ascending indices give sorted names
        for v in _bits(part & self.level_mask[lo + 1]):
            missing = sources & ~self.anc[v]
            if missing:
                waits.append((names[v], tuple(map(names.__getitem__, _bits(missing)))))
        self.barriers.append(Barrier(tuple(map(names.__getitem__, _bits(sources))), tuple(waits)))
        return [sources, part & ~sources]

    def split(self, part: int, connected: bool) -> tuple[type[Series] | type[Parallel], list[int]] | None:
        """How ``part`` divides: None for a single job, else the kind and the sub-parts."""
        if part & (part - 1) == 0:
            return None
        if not connected:
            comps = self.components(part)
            if len(comps) > 1:
                return Parallel, comps
        cuts = self.series_cuts(part)
        if len(cuts) > 1:
            return Series, cuts
        return Series, self.peel(part)

    def run(self, everything: int) -> Node:
        # post-order over an explicit stack: nesting can be as deep as the graph is long
        todo: list[tuple[int, Any]] = [(0, everything)]
        done: list[Node] = []
        while todo:
            step, item = todo.pop()
            if step == 2:
                kind, count = item
                children = done[len(done) - count:]
                del done[len(done) - count:]
                done.append(_joined(kind, children))
                continue
            how = self.split(item, connected=step == 1)
            if how is None:
                done.append(Leaf(self.names[item.bit_length() - 1]))
                continue
            kind, parts = how
            todo.append((2, (kind, len(parts))))
            # components are known to be connected; other parts are checked again
            todo.extend((int(kind is Parallel), p) for p in reversed(parts))
        return done[0]


def _joined(kind: type[Series] | type[Parallel], children: list[Node]) -> Node:
    """``kind`` of ``children``, splicing in children of the same kind (associativity)."""
    parts: list[Node] = []
    for child in children:
        if isinstance(child, kind):
            parts.extend(child.parts)
        else:
            parts.append(child)
    return kind(tuple(parts))


def series_parallel(deps: Deps) -> Decomposition:
    """Decompose the graph into nested series (one after another) and parallel parts.

    Independent parts run in parallel; a connected part is cut into its finest series
    steps, where each step depends entirely on every earlier one. A connected part with
    no such cut is not series-parallel: its sources run first as a parallel step and
    the rest after them, recorded as a :class:`Barrier`. Every job appears exactly once
    and never before its dependencies; a series-parallel graph gets no barriers and no
    job waits for anything it does not depend on. Parallel parts are ordered by their
    smallest job name. An empty graph gives ``Parallel(())``. Raises CycleError.
    """
    dag = _dag(deps)
    if not dag.names:
        return Decomposition(Parallel(()), ())
    decomposer = _Decomposer(dag)
    root = decomposer.run((1 << len(dag.names)) - 1)
    return Decomposition(root, tuple(decomposer.barriers))


# -- JSON-able forms -------------------------------------------------------------------


def to_dict(node: Node) -> dict[str, Any]:
    """``{"job": name}``, ``{"series": [...]}`` or ``{"parallel": [...]}``, nested."""
    todo: list[tuple[Node, bool]] = [(node, False)]
    done: list[dict[str, Any]] = []
    while todo:
        cur, children_done = todo.pop()
        if isinstance(cur, Leaf):
            done.append({"job": cur.job})
        elif not isinstance(cur, (Series, Parallel)):
            raise TypeError(f"not a decomposition node: {cur!r}")
        elif children_done:
            count = len(cur.parts)
            children = done[len(done) - count:]
            del done[len(done) - count:]
            done.append({"series" if isinstance(cur, Series) else "parallel": children})
        else:
            todo.append((cur, True))
            todo.extend((p, False) for p in reversed(cur.parts))
    return done[0]


def from_dict(data: Mapping[str, Any]) -> Node:
    """The node that :func:`to_dict` turned into ``data`` (lists may be tuples and
    dicts any mapping); ValueError if malformed."""
    todo: list[tuple[Any, bool]] = [(data, False)]
    done: list[Node] = []
    while todo:
        cur, children_done = todo.pop()
        if not isinstance(cur, Mapping) or len(cur) != 1:
            raise ValueError(f"a node is a mapping with one key (job, series or parallel), got {cur!r}")
        (key, value), = cur.items()
        if key == "job":
            if not isinstance(value, str):
                raise ValueError(f"'job' must be a job name, got {value!r}")
            done.append(Leaf(value))
        elif key not in ("series", "parallel"):
            raise ValueError(f"unknown node kind {key!r} (expected job, series or parallel)")
        # tuples too: a frozen plan (shared.plan.freeze) stores lists as tuples
        elif not isinstance(value, (list, tuple)):
            raise ValueError(f"{key!r} must be a list of nodes, got {value!r}")
        elif children_done:
            children = tuple(done[len(done) - len(value):])
            del done[len(done) - len(value):]
            done.append(Series(children) if key == "series" else Parallel(children))
        else:
            todo.append((cur, True))
            todo.extend((p, False) for p in reversed(value))
    return done[0]


def barrier_to_dict(barrier: Barrier) -> dict[str, Any]:
    """``{"sources": [...], "waits": {job: [source, ...]}}``, JSON-able."""
    return {
        "sources": list(barrier.sources),
        "waits": {job: list(extra) for job, extra in barrier.waits},
    }
