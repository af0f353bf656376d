"""Tests for shared.dag: cycles, levels, critical path, reduction, series-parallel form."""
from __future__ import annotations

import json
import random
import time
from collections import Counter
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import dag
from shared.dag import Leaf, Parallel, Series

FAST = settings(max_examples=60, deadline=None)


# -- helpers ---------------------------------------------------------------------------


def ancestors(deps) -> dict[str, set[str]]:
    """Every job's transitive dependencies, by plain search (the reference)."""
    out = {}
    for job in deps:
        seen, todo = set(), list(deps[job])
        while todo:
            d = todo.pop()
            if d not in seen:
                seen.add(d)
                todo.extend(deps[d])
        out[job] = seen
    return out


def leaves(node) -> list[str]:
    if isinstance(node, Leaf):
        return [node.job]
    return [job for part in node.parts for job in leaves(part)]


def waits(node, before: frozenset = frozenset()) -> dict[str, frozenset]:
    """For each job, every job the decomposition makes it wait for."""
    if isinstance(node, Leaf):
        return {node.job: before}
    out = {}
    done = set(before)
    for part in node.parts:
        out.update(waits(part, before if isinstance(node, Parallel) else frozenset(done)))
        done.update(leaves(part))
    return out


def check_shape(node) -> None:
    """Canonical form: no 1-part groups, no group directly inside one of its own kind,
    parallel parts ordered by their smallest job."""
    if isinstance(node, Leaf):
        return
    assert len(node.parts) >= 2, node
    for part in node.parts:
        assert type(part) is not type(node), node
        check_shape(part)
    if isinstance(node, Parallel):
        firsts = [min(leaves(p)) for p in node.parts]
        assert firsts == sorted(firsts)


def check_decomposition(deps) -> dag.Decomposition:
    """The invariants every decomposition must meet; returns it for further checks."""
    result = dag.series_parallel(deps)
    jobs = leaves(result.root)
    assert Counter(jobs) == Counter(list(deps)), "every job appears exactly once"
    check_shape(result.root)
    anc = ancestors(deps)
    held = waits(result.root)
    for job in deps:
        assert anc[job] <= held[job], f"{job} could start before one of its dependencies"
    # the barriers are exactly the extra waits: adding them as dependencies gives the
    # order the decomposition enforces, no more and no less
    augmented = {job: list(deps[job]) for job in deps}
    for barrier in result.barriers:
        assert list(barrier.sources) == sorted(barrier.sources)
        for job, extra in barrier.waits:
            assert extra and set(extra) <= set(barrier.sources)
            assert not set(extra) & anc[job], "a barrier lists a real dependency"
            augmented[job].extend(extra)
    closure = ancestors(augmented)
    assert {job: set(held[job]) for job in deps} == closure
    return result


def sp_graph(tree, names) -> dict[str, list[str]]:
    """Build a DAG by series/parallel composition of ``tree`` (a leaf or (kind, parts))."""
    deps: dict[str, list[str]] = {}
    counter = iter(names)

    def build(t) -> tuple[list[str], list[str]]:  # (sources, sinks)
        if t == "leaf":
            name = next(counter)
            deps[name] = []
            return [name], [name]
        kind, parts = t
        built = [build(p) for p in parts]
        if kind == "parallel":
            return [s for b in built for s in b[0]], [s for b in built for s in b[1]]
        for (_, sinks), (sources, _) in zip(built, built[1:]):
            for source in sources:
                deps[source].extend(sinks)
        return built[0][0], built[-1][1]

    build(tree)
    return deps


sp_trees = st.recursive(
    st.just("leaf"),
    lambda kids: st.tuples(st.sampled_from(["series", "parallel"]), st.lists(kids, min_size=2, max_size=3)),
    max_leaves=14,
)


@st.composite
def random_dags(draw, max_jobs: int = 10):
    """A random DAG whose names are unrelated to its topological order."""
    n = draw(st.integers(1, max_jobs))
    order = draw(st.permutations([f"j{i}" for i in range(n)]))
    pairs = [(i, j) for i in range(n) for j in range(i)]
    edges = draw(st.lists(st.booleans(), min_size=len(pairs), max_size=len(pairs)))
    deps = {name: [] for name in order}
    for (i, j), edge in zip(pairs, edges):
        if edge:
            deps[order[i]].append(order[j])
    return deps


@st.composite
def random_digraphs(draw, max_jobs: int = 6):
    n = draw(st.integers(1, max_jobs))
    names = [f"n{i}" for i in range(n)]
    # sparse, so loops are few and their lengths vary
    edges = iter(draw(st.lists(st.integers(0, 3), min_size=n * n, max_size=n * n)))
    return {a: [b for b in names if next(edges) == 0] for a in names}


def random_big_dag(n: int, seed: int = 7) -> dict[str, list[str]]:
    rng = random.Random(seed)
    names = [f"test[PY=3.{i}]" for i in range(n)]
    rng.shuffle(names)
    return {names[i]: rng.sample(names[:i], min(i, 4)) for i in range(n)}


def chain(n: int) -> dict[str, list[str]]:
    return {f"j{i:05d}": [f"j{i - 1:05d}"] if i else [] for i in range(n)}


DIAMOND = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}


# -- cycles ----------------------------------------------------------------------------


def test_loop_reads_in_depends_on_direction_from_its_smallest_job():
    deps = {"build": ["package"], "package": ["test"], "test": ["build"]}
    assert dag.shortest_cycle(deps) == ["build", "package", "test", "build"]


def test_shortest_cycle_prefers_the_two_loop_over_the_four_loop():
    # a -> b -> c -> d -> a, with c and d also depending on each other
    deps = {"a": ["b"], "b": ["c"], "c": ["d"], "d": ["a", "c"]}
    assert dag.shortest_cycle(deps) == ["c", "d", "c"]


def test_equally_short_loops_tie_break_on_names():
    # a -> b -> d -> a and a -> c -> d -> a; and the same shape written the other way round
    assert dag.shortest_cycle({"a": ["c", "b"], "b": ["d"], "c": ["d"], "d": ["a"]}) == ["a", "b", "d", "a"]
    assert dag.shortest_cycle({"x": ["y"], "y": ["x"], "a": ["b"], "b": ["a"]}) == ["a", "b", "a"]


def test_self_dependency_is_a_one_job_loop():
    assert dag.shortest_cycle({"a": ["a"], "b": []}) == ["a", "a"]


def test_acyclic_graph_has_no_loop():
    assert dag.shortest_cycle(DIAMOND) is None
    assert dag.cycles(DIAMOND) == []


def test_cycles_reports_each_independent_loop_once():
    deps = {"a": ["b"], "b": ["a"], "c": ["d"], "d": ["e"], "e": ["c", "a"], "f": []}
    assert dag.cycles(deps) == [["a", "b", "a"], ["c", "d", "e", "c"]]


def test_long_loop_needs_no_recursion():
    ring = chain(5000)
    ring["j00000"] = ["j04999"]
    loop = dag.shortest_cycle(ring)
    assert len(loop) == 5001 and loop[0] == loop[-1] == "j00000"
    assert loop[1] == "j04999"


def all_loops(deps) -> list[list[str]]:
    """Every simple loop, started at its smallest job (brute force for tiny graphs)."""
    loops = []
    for start in deps:
        todo = [[start]]
        while todo:
            path = todo.pop()
            for nxt in deps[path[-1]]:
                if nxt == start:
                    loops.append(path + [start])
                elif nxt > start and nxt not in path:
                    todo.append(path + [nxt])
    return loops


@FAST
@given(random_digraphs())
def test_shortest_cycle_is_the_smallest_of_the_shortest_loops(deps):
    loops = all_loops(deps)
    expected = min(loops, key=lambda c: (len(c), c)) if loops else None
    assert dag.shortest_cycle(deps) == expected


@FAST
@given(random_digraphs())
def test_cycles_gives_the_shortest_loop_of_each_tangle(deps):
    anc = ancestors(deps)
    loops = all_loops(deps)
    found = dag.cycles(deps)
    assert found == sorted(found)

    def tangle(job):  # its strongly connected component
        return frozenset(j for j in deps if j == job or (j in anc[job] and job in anc[j]))

    tangles = {tangle(c[0]) for c in loops}
    assert {tangle(c[0]) for c in found} == tangles and len(found) == len(tangles)
    for loop in found:
        same = [c for c in loops if tangle(c[0]) == tangle(loop[0])]
        assert loop == min(same, key=lambda c: (len(c), c))


# -- levels, dependents ----------------------------------------------------------------


def test_levels_of_a_diamond():
    assert dag.kahn_levels(DIAMOND) == (("a",), ("b", "c"), ("d",))


def test_levels_refuse_a_cycle_and_name_it():
    with pytest.raises(ValueError, match=r"circular dependency: a -> b -> a"):
        dag.kahn_levels({"a": ["b"], "b": ["a"], "c": []})


def test_unknown_dependency_is_named():
    with pytest.raises(ValueError, match="'test' depends on unknown job 'biuld'"):
        dag.kahn_levels({"build": [], "test": ["biuld"]})


def test_a_string_is_not_a_dependency_list():
    with pytest.raises(TypeError):
        dag.kahn_levels({"ab": [], "c": "ab"})


@FAST
@given(random_dags())
def test_levels_place_each_job_right_after_its_latest_dependency(deps):
    levels = dag.kahn_levels(deps)
    where = {job: i for i, level in enumerate(levels) for job in level}
    assert sorted(where) == sorted(deps) and sum(map(len, levels)) == len(deps)
    for level in levels:
        assert list(level) == sorted(level)
    for job, ds in deps.items():
        assert where[job] == (1 + max(where[d] for d in ds) if ds else 0)


def test_dependents_reverse_the_edges_for_every_job():
    assert dag.dependents(DIAMOND) == {"a": ("b", "c"), "b": ("d",), "c": ("d",), "d": ()}


# -- critical path ---------------------------------------------------------------------


def test_critical_path_follows_the_heaviest_branch():
    weights = {"a": 1, "b": 5, "c": 2, "d": 1}
    assert dag.critical_path(DIAMOND, weights) == (("a", "b", "d"), 7.0)
    weights["c"] = 9
    assert dag.critical_path(DIAMOND, weights) == (("a", "c", "d"), 11.0)


def test_critical_path_ties_go_to_the_smallest_names():
    deps = {"z": [], "y": [], "x": ["z", "y"], "w": ["z"]}
    assert dag.critical_path(deps, dict.fromkeys(deps, 1.0)) == (("y", "x"), 2.0)


def test_critical_path_rejects_bad_weights():
    with pytest.raises(ValueError, match="no weight for job 'd'"):
        dag.critical_path(DIAMOND, {"a": 1, "b": 1, "c": 1})
    with pytest.raises(ValueError, match="'b'"):
        dag.critical_path(DIAMOND, {"a": 1, "b": -1, "c": 1, "d": 1})


def test_critical_path_of_nothing():
    assert dag.critical_path({}, {}) == ((), 0.0)


@FAST
@given(random_dags(max_jobs=8), st.data())
def test_critical_path_is_the_smallest_heaviest_full_path(deps, data):
    weights = {job: data.draw(st.sampled_from([0, 0.5, 1, 2.25, 3])) for job in deps}
    after = dag.dependents(deps)
    paths, todo = [], [[job] for job in deps if not deps[job]]
    while todo:  # every path from a job without dependencies to one without dependents
        path = todo.pop()
        if not after[path[-1]]:
            paths.append(path)
        todo.extend(path + [n] for n in after[path[-1]])
    best = max(sum(weights[j] for j in p) for p in paths)
    path, total = dag.critical_path(deps, weights)
    assert total == pytest.approx(best)
    assert list(path) == min(p for p in paths if sum(weights[j] for j in p) == pytest.approx(best))


# -- transitive reduction --------------------------------------------------------------


def test_transitive_reduction_drops_implied_edges():
    deps = dict(DIAMOND, d=["b", "c", "a"], e=["d", "a", "b"])
    reduced = dag.transitive_reduction(deps)
    assert reduced == {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c"), "e": ("d",)}


@FAST
@given(random_dags())
def test_transitive_reduction_keeps_the_order_with_no_spare_edge(deps):
    reduced = {job: list(ds) for job, ds in dag.transitive_reduction(deps).items()}
    assert ancestors(reduced) == ancestors(deps)
    for job, ds in reduced.items():
        for d in ds:
            fewer = dict(reduced, **{job: [x for x in ds if x != d]})
            assert ancestors(fewer) != ancestors(deps), f"{job} -> {d} was not needed"


# -- series-parallel decomposition -----------------------------------------------------


def test_diamond_is_series_of_a_parallel_middle():
    result = check_decomposition(DIAMOND)
    assert result.root == Series((Leaf("a"), Parallel((Leaf("b"), Leaf("c"))), Leaf("d")))
    assert result.barriers == ()


def test_chain_is_one_flat_series():
    deps = {"c": ["b"], "b": ["a"], "a": []}
    assert check_decomposition(deps).root == Series((Leaf("a"), Leaf("b"), Leaf("c")))


def test_fan_out_fan_in():
    deps = {"src": [], "sink": ["t1", "t2", "t3"], **{t: ["src"] for t in ("t3", "t1", "t2")}}
    result = check_decomposition(deps)
    middle = Parallel((Leaf("t1"), Leaf("t2"), Leaf("t3")))
    assert result.root == Series((Leaf("src"), middle, Leaf("sink"))) and result.barriers == ()


def test_complete_bipartite_is_two_parallel_steps():
    deps = {"a1": [], "a2": [], **{b: ["a1", "a2"] for b in ("b1", "b2", "b3")}}
    result = check_decomposition(deps)
    expected = Series((Parallel((Leaf("a1"), Leaf("a2"))), Parallel((Leaf("b1"), Leaf("b2"), Leaf("b3")))))
    assert result.root == expected and result.barriers == ()


def test_n_shape_needs_a_barrier():
    # c needs a; d needs a and b: no series-parallel form runs c without waiting for b
    deps = {"a": [], "b": [], "c": ["a"], "d": ["a", "b"]}
    result = check_decomposition(deps)
    assert result.root == Series((Parallel((Leaf("a"), Leaf("b"))), Parallel((Leaf("c"), Leaf("d")))))
    assert result.barriers == (dag.Barrier(sources=("a", "b"), waits=(("c", ("b",)),)),)
    assert dag.barrier_to_dict(result.barriers[0]) == {"sources": ["a", "b"], "waits": {"c": ["b"]}}


def test_independent_parts_run_in_parallel_in_name_order():
    deps = {"z": [], "y": ["z"], "b": [], "m": []}
    assert check_decomposition(deps).root == Parallel((Leaf("b"), Leaf("m"), Series((Leaf("z"), Leaf("y")))))


def test_single_job_and_empty_graph():
    assert dag.series_parallel({"only": []}) == dag.Decomposition(Leaf("only"), ())
    assert dag.series_parallel({}) == dag.Decomposition(Parallel(()), ())


def test_decomposition_refuses_a_cycle():
    with pytest.raises(dag.CycleError) as info:
        dag.series_parallel({"a": ["b"], "b": ["a"]})
    assert info.value.cycle == ["a", "b", "a"]


@FAST
@given(random_dags(max_jobs=11))
def test_decomposition_invariants_on_random_dags(deps):
    check_decomposition(deps)


@FAST
@given(sp_trees, st.data())
def test_series_parallel_graphs_decompose_exactly(tree, data):
    size = str(tree).count("leaf")
    names = data.draw(st.permutations([f"job-{i:02d}" for i in range(size)]))
    deps = sp_graph(tree, names)
    # edges implied by others change nothing about the order, so add a few
    anc = ancestors(deps)
    for job in deps:
        extra = sorted(anc[job])
        if extra:
            deps[job].append(data.draw(st.sampled_from(extra)))
    result = check_decomposition(deps)
    assert result.barriers == ()
    assert {job: set(w) for job, w in waits(result.root).items()} == anc


def test_json_form_round_trips():
    root = dag.series_parallel(DIAMOND).root
    as_dict = dag.to_dict(root)
    assert as_dict == {"series": [{"job": "a"}, {"parallel": [{"job": "b"}, {"job": "c"}]}, {"job": "d"}]}
    assert dag.from_dict(json.loads(json.dumps(as_dict))) == root
    # a frozen plan keeps read-only mappings and tuples
    middle = MappingProxyType({"parallel": ({"job": "b"}, {"job": "c"})})
    frozen = MappingProxyType({"series": ({"job": "a"}, middle, {"job": "d"})})
    assert dag.from_dict(frozen) == root


@FAST
@given(random_dags(max_jobs=11))
def test_json_form_round_trips_for_any_decomposition(deps):
    root = dag.series_parallel(deps).root
    assert dag.from_dict(dag.to_dict(root)) == root


@pytest.mark.parametrize("bad", [
    {"job": 3},
    {"serial": []},
    {"series": {"job": "a"}},
    {"job": "a", "series": []},
    {"parallel": [{"job": "a"}, "b"]},
])
def test_from_dict_rejects_malformed_input(bad):
    with pytest.raises(ValueError):
        dag.from_dict(bad)


# -- size ------------------------------------------------------------------------------


def test_five_thousand_job_chain():
    deps = chain(5000)
    names = sorted(deps)
    assert dag.kahn_levels(deps) == tuple((n,) for n in names)
    assert dag.critical_path(deps, dict.fromkeys(deps, 1.0)) == (tuple(names), 5000.0)
    assert dag.series_parallel(deps).root == Series(tuple(Leaf(n) for n in names))
    assert dag.transitive_reduction(deps) == {n: tuple(d) for n, d in deps.items()}
    assert dag.cycles(deps) == []
    as_dict = {"series": [{"job": n} for n in names]}
    assert dag.to_dict(dag.series_parallel(deps).root) == as_dict


def test_deeply_nested_decomposition_survives_json():
    # alternating series/parallel nesting 2,000 levels deep
    node = Leaf("x0")
    for i in range(1, 2001):
        node = (Series if i % 2 else Parallel)((node, Leaf(f"x{i}")))
    as_dict = dag.to_dict(node)
    depth = 0
    while "job" not in as_dict:
        as_dict = next(iter(as_dict.values()))[0]
        depth += 1
    assert (depth, as_dict) == (2000, {"job": "x0"})
    assert sorted(leaves_iter(dag.from_dict(dag.to_dict(node)))) == sorted(f"x{i}" for i in range(2001))


def leaves_iter(node) -> list[str]:
    out, todo = [], [node]
    while todo:
        cur = todo.pop()
        if isinstance(cur, Leaf):
            out.append(cur.job)
        else:
            todo.extend(cur.parts)
    return out


def test_random_two_thousand_job_dag_is_fast():
    deps = random_big_dag(2000)
    started = time.perf_counter()
    levels = dag.kahn_levels(deps)
    path, _ = dag.critical_path(deps, dict.fromkeys(deps, 1.0))
    result = dag.series_parallel(deps)
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"took {elapsed:.2f}s"
    assert len(path) == len(levels)
    assert sorted(leaves_iter(result.root)) == sorted(deps)


def test_large_random_decomposition_keeps_the_invariants():
    # the fast path (levels, bitsets, batched component search) against the reference
    check_decomposition(random_big_dag(300, seed=3))
