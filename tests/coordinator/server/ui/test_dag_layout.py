"""The run page's DAG: placement (columns, rows, crossings, matrix boxes) and safe SVG."""
from __future__ import annotations

import json
import random
import re
import time
import xml.etree.ElementTree as ET
from typing import Any, Mapping

import pytest

from coordinator.frontend import load_text
from coordinator.server.ui.dag_layout import (
    STATUS_GLYPHS,
    Layout,
    job_dom_id,
    layout,
    render_svg,
)

SVG = "{http://www.w3.org/2000/svg}"


def compile_yaml(text: str) -> dict[str, Any]:
    result = load_text(text, "pipeline.yml")
    assert result.ok, result.diagnostics[:3]
    # As the server has it: stored as JSON, read back.
    return json.loads(json.dumps(result.plan.to_dict()))


def generate_pipeline(levels: int = 20, per_level: int = 25, seed: int = 1) -> str:
    """A pipeline of `levels` x `per_level` jobs: per level three matrix jobs of three
    (`PY`), the rest plain; each job depends on a job of the level before (so its level is
    exact) and on up to two of the three levels before that."""
    rng = random.Random(seed)
    lines = ["name: big", "jobs:"]
    bases: list[list[str]] = []
    for level in range(levels):
        here = []
        plain = per_level - 9
        for i in range(3 + plain):
            matrix = i < 3
            base = f"l{level}-{'m' if matrix else 'j'}{i}"
            here.append(base)
            lines.append(f"  {base}:")
            lines.append("    image: alpine:3")
            if level:
                deps = {rng.choice(bases[level - 1])}
                for _ in range(rng.randint(0, 2)):
                    back = rng.randint(1, min(3, level))
                    deps.add(rng.choice(bases[level - back]))
                lines.append("    depends_on: [" + ", ".join(sorted(deps)) + "]")
            if matrix:
                lines.append('    matrix: {PY: ["3.11", "3.12", "3.13"]}')
            lines.append("    steps: [{name: s, script: [echo hi]}]")
        bases.append(here)
    return "\n".join(lines) + "\n"


def plan_of(jobs: Mapping[str, list[str]], levels: list[list[str]], critical: list[str] = (),
            bases: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A hand-made plan dict, for what the compiler would never produce."""
    bases = bases or {}
    return {
        "jobs": {name: {"base_name": bases.get(name, name), "depends_on": deps, "matrix": []}
                 for name, deps in jobs.items()},
        "levels": levels,
        "critical_path": list(critical),
        "dependents": {},
    }


def crossings(drawn: Layout) -> int:
    """Pairs of edges between the same two columns whose ends are in opposite orders."""
    at = drawn.by_name
    count = 0
    for i, a in enumerate(drawn.edges):
        for b in drawn.edges[i + 1:]:
            sa, ta, sb, tb = at[a.source], at[a.target], at[b.source], at[b.target]
            if (sa.column, ta.column) == (sb.column, tb.column) and (sa.y - sb.y) * (ta.y - tb.y) < 0:
                count += 1
    return count


def naive_crossings(plan: Mapping[str, Any]) -> int:
    """The same count with every column in the plan's own (name) order."""
    row = {name: i for level in plan["levels"] for i, name in enumerate(level)}
    col = {name: c for c, level in enumerate(plan["levels"]) for name in level}
    edges = [(dep, name) for name, job in plan["jobs"].items() for dep in job["depends_on"]]
    count = 0
    for i, (s1, t1) in enumerate(edges):
        for s2, t2 in edges[i + 1:]:
            if (col[s1], col[t1]) == (col[s2], col[t2]) and (row[s1] - row[s2]) * (row[t1] - row[t2]) < 0:
                count += 1
    return count


@pytest.fixture(scope="module")
def big_plan() -> dict[str, Any]:
    return compile_yaml(generate_pipeline())


# -- placement --------------------------------------------------------------------------


def test_empty_plan_gives_an_empty_picture() -> None:
    drawn = layout({"jobs": {}, "levels": [], "critical_path": [], "dependents": {}})
    assert drawn.nodes == () and drawn.edges == () and drawn.groups == () and drawn.columns == ()
    assert layout({}) == drawn
    root = ET.fromstring(render_svg(drawn, {}))
    assert root.tag == SVG + "svg" and root.get("viewBox") == f"0 0 {drawn.width} {drawn.height}"
    assert root.findall(f".//{SVG}g[@data-job]") == []


def test_one_job() -> None:
    plan = compile_yaml("name: one\njobs:\n  only:\n    steps: [{name: s, script: [echo]}]\n")
    drawn = layout(plan)
    assert drawn.columns == (("only",),) and drawn.edges == () and drawn.groups == ()
    (node,) = drawn.nodes
    assert (node.name, node.column, node.row, node.critical) == ("only", 0, 0, True)
    assert 0 <= node.x and node.x + node.width <= drawn.width and node.y + node.height <= drawn.height


def test_every_job_once_columns_follow_levels_edges_point_right(big_plan: dict[str, Any]) -> None:
    drawn = layout(big_plan)
    names = [node.name for node in drawn.nodes]
    assert len(names) == 500 and sorted(names) == sorted(big_plan["jobs"])
    assert [sorted(column) for column in drawn.columns] == [sorted(level) for level in big_plan["levels"]]
    assert len(drawn.columns) == 20
    at = drawn.by_name
    for c, column in enumerate(drawn.columns):
        assert [at[name].row for name in column] == list(range(len(column)))
        assert all(at[name].column == c for name in column)
        ys = [at[name].y for name in column]
        assert ys == sorted(ys) and all(b - a >= at[column[0]].height for a, b in zip(ys, ys[1:]))
    expected = {(dep, name) for name, job in big_plan["jobs"].items() for dep in job["depends_on"]}
    assert {(e.source, e.target) for e in drawn.edges} == expected and len(drawn.edges) == len(expected)
    for box in (*drawn.nodes, *drawn.groups):  # everything inside the picture
        assert 0 < box.x and box.x + box.width < drawn.width and 0 < box.y and box.y + box.height < drawn.height
    for a, b in zip(drawn.groups, drawn.groups[1:]):  # group boxes never overlap
        assert a.column != b.column or a.y + a.height < b.y or b.y + b.height < a.y
    for edge in drawn.edges:
        source, target = at[edge.source], at[edge.target]
        assert source.column < target.column
        # From the middle of the source's right side to the middle of the target's left.
        start, end = re.fullmatch(r"M(\d+) (\d+)C.* (\d+) (\d+)", edge.path).group(1, 2), edge.path.split()[-2:]
        assert tuple(map(int, start)) == (source.x + source.width, source.y + source.height // 2)
        assert tuple(map(int, end)) == (target.x, target.y + target.height // 2)
        assert re.fullmatch(r"M\d+ \d+C\d+ \d+ \d+ \d+ \d+ \d+", edge.path)


def test_the_heuristic_removes_a_crossing_the_name_order_has() -> None:
    # Name order: a over b, x over y, p over q; but a feeds y, b feeds x, y feeds p and
    # x feeds q: two crossings, none needed.
    plan = compile_yaml(
        "name: cross\njobs:\n"
        "  a: {steps: [{name: s, script: [echo]}]}\n"
        "  b: {steps: [{name: s, script: [echo]}]}\n"
        "  x: {depends_on: [b], steps: [{name: s, script: [echo]}]}\n"
        "  y: {depends_on: [a], steps: [{name: s, script: [echo]}]}\n"
        "  p: {depends_on: [y], steps: [{name: s, script: [echo]}]}\n"
        "  q: {depends_on: [x], steps: [{name: s, script: [echo]}]}\n"
    )
    assert plan["levels"] == [["a", "b"], ["x", "y"], ["p", "q"]]
    assert naive_crossings(plan) == 2
    drawn = layout(plan)
    assert crossings(drawn) == 0
    assert drawn.columns == (("a", "b"), ("y", "x"), ("p", "q"))


def test_a_reversed_ladder_is_straightened() -> None:
    jobs = {"r1": [], "r2": [], "r3": [], "m1": ["r3"], "m2": ["r2"], "m3": ["r1"],
            "e1": ["m1"], "e2": ["m2"], "e3": ["m3"]}
    plan = plan_of(jobs, [["r1", "r2", "r3"], ["m1", "m2", "m3"], ["e1", "e2", "e3"]])
    assert naive_crossings(plan) == 3
    assert crossings(layout(plan)) == 0


def test_a_crossing_only_a_sweep_back_removes() -> None:
    # x's parents a and c average to b's row, so no order of the second column helps:
    # the first column must change (c next to a), which only the right-to-left pass does.
    plan = plan_of({"a": [], "b": [], "c": [], "x": ["a", "c"], "y": ["b"]}, [["a", "b", "c"], ["x", "y"]])
    assert naive_crossings(plan) == 1
    drawn = layout(plan)
    assert crossings(drawn) == 0
    assert drawn.columns == (("a", "c", "b"), ("x", "y"))


@pytest.mark.parametrize("seed", range(12))
def test_never_more_crossings_than_the_name_order(seed: int) -> None:
    # Random layered graphs with edges between neighbouring levels only, where the
    # layout's own measure and the test's count agree.
    rng = random.Random(seed)
    levels = [[f"n{c}-{i}" for i in range(rng.randint(2, 7))] for c in range(rng.randint(2, 5))]
    jobs = {name: [] for name in levels[0]}
    for before, level in zip(levels, levels[1:]):
        for name in level:
            jobs[name] = sorted(set(rng.sample(before, rng.randint(1, min(3, len(before))))))
    plan = plan_of(jobs, levels)
    assert crossings(layout(plan)) <= naive_crossings(plan)


def test_matrix_members_are_adjacent_inside_their_group_box() -> None:
    plan = compile_yaml(
        "name: m\njobs:\n"
        "  lint: {steps: [{name: s, script: [echo]}]}\n"
        "  docs: {steps: [{name: s, script: [echo]}]}\n"
        "  test:\n    depends_on: [lint]\n    matrix: {PY: ['3.11', '3.12', '3.13'], OS: [linux, mac]}\n"
        "    steps: [{name: s, script: [echo]}]\n"
        "  a-check: {depends_on: [docs], steps: [{name: s, script: [echo]}]}\n"
        "  z-check: {depends_on: [docs], steps: [{name: s, script: [echo]}]}\n"
        "  ship: {depends_on: [test, a-check], steps: [{name: s, script: [echo]}]}\n"
    )
    drawn = layout(plan)
    members = [name for name, job in plan["jobs"].items() if job["base_name"] == "test"]
    assert len(members) == 6
    (group,) = drawn.groups
    assert group.name == "test" and sorted(group.members) == sorted(members) and group.column == 1
    column = drawn.columns[1]
    rows = sorted(column.index(name) for name in members)
    assert rows == list(range(rows[0], rows[0] + 6))  # consecutive
    at = drawn.by_name
    for name in members:
        node = at[name]
        assert node.group == "test" and node.label == name[len("test["):-1]
        assert group.x < node.x and node.x + node.width < group.x + group.width
        assert group.y < node.y and node.y + node.height < group.y + group.height
    for name in ("a-check", "z-check"):  # outside the box
        node = at[name]
        assert node.group is None and node.label == name
        assert node.y + node.height <= group.y or node.y >= group.y + group.height
    # Natural order of the members: the order the matrix values sort in.
    assert list(group.members) == sorted(members)


def test_deterministic_whatever_the_order_of_the_plans_dicts(big_plan: dict[str, Any]) -> None:
    first = layout(big_plan)
    assert layout(big_plan) == first
    rng = random.Random(7)
    names = list(big_plan["jobs"])
    rng.shuffle(names)
    shuffled = {**big_plan, "jobs": {name: big_plan["jobs"][name] for name in names},
                "levels": [rng.sample(level, len(level)) for level in big_plan["levels"]]}
    assert layout(shuffled) == first
    assert render_svg(layout(shuffled), {}) == render_svg(first, {})


def test_critical_path_nodes_and_edges_are_flagged(big_plan: dict[str, Any]) -> None:
    drawn = layout(big_plan)
    path = big_plan["critical_path"]
    assert len(path) == 20
    assert {n.name for n in drawn.nodes if n.critical} == set(path)
    assert {(e.source, e.target) for e in drawn.edges if e.critical} == set(zip(path, path[1:]))
    # Painted last, on top of the others.
    flags = [e.critical for e in drawn.edges]
    assert flags == sorted(flags)
    svg = ET.fromstring(render_svg(drawn, {}))
    assert len(svg.findall(f".//{SVG}path[@class='edge critical']")) == 19
    assert {g.get("data-job") for g in svg.iter(f"{SVG}g") if "critical" in (g.get("class") or "").split()} == set(path)


def test_missing_level_and_unknown_dependencies() -> None:
    plan = plan_of({"a": [], "b": ["a", "ghost"], "lost": ["a"], "c": ["b", "nowhere"]},
                   [["a", "phantom"], ["b"], ["c"], ["not-a-job"]], critical=["a", "b", "c"])
    drawn = layout(plan)
    assert drawn.columns == (("a",), ("b",), ("c",), ("lost",))  # the job no level has: last
    assert {(e.source, e.target) for e in drawn.edges} == {("a", "b"), ("b", "c"), ("a", "lost")}
    assert all(n.name not in ("ghost", "phantom", "nowhere", "not-a-job") for n in drawn.nodes)
    ET.fromstring(render_svg(drawn, {}))


def test_a_plan_without_levels_puts_every_job_in_one_column() -> None:
    drawn = layout({"jobs": {"b": {"depends_on": ["a"]}, "a": {}, "job-10": {}, "job-9": {}}})
    assert drawn.columns == (("a", "b", "job-9", "job-10"),) and drawn.edges == ()


def test_a_dependency_that_does_not_point_right_is_not_drawn() -> None:
    # Corrupt: b is listed before the job it depends on, and d depends on itself.
    plan = plan_of({"a": [], "b": ["c"], "c": ["a"], "d": ["d"]}, [["a", "b", "d"], ["c"]])
    drawn = layout(plan)
    assert {(e.source, e.target) for e in drawn.edges} == {("a", "c")}


# -- SVG --------------------------------------------------------------------------------


HOSTILE = ["<script>alert(1)</script>", '"onmouseover=alert(1) x="', "]]>", "&amp;", "it's",
           "ctl\x01\x1b[31mred\ud800", "build [linux, 3.12]"]


def test_hostile_names_are_escaped_and_the_svg_parses() -> None:
    jobs = {HOSTILE[0]: [], HOSTILE[1]: [HOSTILE[0]], HOSTILE[2]: [HOSTILE[0]], HOSTILE[3]: [HOSTILE[1], HOSTILE[2]],
            HOSTILE[4]: [HOSTILE[3]], HOSTILE[5]: [HOSTILE[3]], HOSTILE[6]: [HOSTILE[5]]}
    plan = plan_of(jobs, [[HOSTILE[0]], [HOSTILE[1], HOSTILE[2]], [HOSTILE[3]], [HOSTILE[4], HOSTILE[5]], [HOSTILE[6]]],
                   critical=[HOSTILE[0], HOSTILE[1]], bases={HOSTILE[6]: "<b>"})
    svg = render_svg(layout(plan), {HOSTILE[0]: "failed", HOSTILE[1]: '"><script>'},
                     link=lambda name: "/jobs/" + name)
    assert "<script" not in svg and "<b>" not in svg and "]]>" not in svg
    assert 'onmouseover=alert(1) x="' not in svg and "\x01" not in svg and "\x1b" not in svg
    root = ET.fromstring(svg)
    # Every element is one we write; no attribute came from a name except data-*, href.
    allowed = {"svg", "g", "title", "rect", "text", "path", "a"}
    assert {el.tag.removeprefix(SVG) for el in root.iter()} <= allowed
    by_job = {g.get("data-job"): g for g in root.iter(f"{SVG}g") if g.get("data-job") is not None}
    clean = {name: name.replace("\x01", "\ufffd").replace("\x1b", "\ufffd").replace("\ud800", "\ufffd")
             for name in HOSTILE}
    assert set(by_job) == set(clean.values())
    for name, shown in clean.items():
        g = by_job[shown]
        assert g.get("id") == job_dom_id(name) and re.fullmatch(r"job-[0-9a-f]+", g.get("id"))
        assert g.find(f"{SVG}title").text.startswith(shown + " (")
        assert g.find(f"{SVG}a").get("href") == "/jobs/" + shown
    assert by_job[HOSTILE[0]].get("class") == "job status-failed critical"
    assert by_job[HOSTILE[1]].get("class") == "job status-pending critical"  # unknown status: pending
    assert by_job[HOSTILE[1]].get("data-status") == "pending"
    edges = root.findall(f".//{SVG}path")
    assert {(p.get("data-from"), p.get("data-to")) for p in edges} >= {(HOSTILE[0], HOSTILE[1])}


def test_hostile_matrix_values_from_a_real_pipeline() -> None:
    plan = compile_yaml(
        "name: evil\njobs:\n  t:\n    matrix:\n"
        "      V: ['<script>alert(1)</script>', '\"><img src=x onerror=alert(1)>', ']]>&amp;']\n"
        "    steps: [{name: s, script: [echo]}]\n"
    )
    drawn = layout(plan)
    svg = render_svg(drawn, {name: "running" for name in plan["jobs"]})
    assert "<script" not in svg and "<img" not in svg
    root = ET.fromstring(svg)
    assert sorted(g.get("data-job") for g in root.iter(f"{SVG}g") if g.get("data-job")) == sorted(plan["jobs"])
    labels = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "job-name"]
    assert "V=<script>alert(1)</s…" in labels  # matrix values only, cut to fit


def test_long_names_are_cut_with_an_ellipsis_and_kept_whole_in_the_title() -> None:
    name = "a-very-long-job-name-that-does-not-fit-in-a-box"
    root = ET.fromstring(render_svg(layout(plan_of({name: []}, [[name]])), {}))
    text = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "job-name"][0]
    assert text.endswith("…") and name.startswith(text[:-1]) and len(text) == 22
    assert root.find(f".//{SVG}title").text == f"{name} (pending)"


@pytest.mark.parametrize("status", sorted(STATUS_GLYPHS))
def test_each_status_has_a_class_a_glyph_and_a_word(status: str) -> None:
    root = ET.fromstring(render_svg(layout(plan_of({"j": []}, [["j"]])), {"j": status}))
    g = root.find(f".//{SVG}g[@data-job='j']")
    assert g.get("class") == f"job status-{status}" and g.get("data-status") == status
    assert g.find(f"{SVG}text[@class='job-icon']").text == STATUS_GLYPHS[status]
    assert g.find(f"{SVG}title").text == f"j ({status})"
    assert g.find(f"{SVG}a") is None  # no link asked for


def test_glyphs_are_distinct() -> None:
    assert len(set(STATUS_GLYPHS.values())) == len(STATUS_GLYPHS) == 7


def test_find_a_node_by_job_name_as_the_page_does() -> None:
    name = "test[PY=3.12,OS=ünïcode]"
    root = ET.fromstring(render_svg(layout(plan_of({name: []}, [[name]])), {}))
    # In the page: "job-" + hex of the UTF-8 bytes, or [data-job="…"] with CSS.escape.
    hexed = "job-" + "".join(f"{b:02x}" for b in name.encode())
    assert root.find(f".//{SVG}g[@id='{hexed}']").get("data-job") == name


@pytest.mark.parametrize("href", ["javascript:alert(1)", " JavaScript:alert(1)", "data:text/html,x",
                                  "java\tscript:alert(1)", "\x01\njavascript:alert(1)", "vbscript:x"])
def test_a_link_with_a_dangerous_scheme_is_refused(href: str) -> None:
    with pytest.raises(ValueError):
        render_svg(layout(plan_of({"j": []}, [["j"]])), {}, link=lambda name: href)


def test_relative_and_http_links_are_kept() -> None:
    drawn = layout(plan_of({"j": [], "k": ["j"]}, [["j"], ["k"]]))
    for href in ("/runs/1/jobs/j?x=1&y=2", "https://ci.example/j", "jobs/j#log"):
        root = ET.fromstring(render_svg(drawn, {}, link=lambda name: href))
        assert {a.get("href") for a in root.iter(f"{SVG}a")} == {href}


def test_the_svg_of_the_big_plan_parses_and_has_every_job(big_plan: dict[str, Any]) -> None:
    drawn = layout(big_plan)
    root = ET.fromstring(render_svg(drawn, {}))
    assert len([g for g in root.iter(f"{SVG}g") if g.get("data-job")]) == 500
    assert len(root.findall(f".//{SVG}g[@class='group']")) == 60
    assert len({g.get("id") for g in root.iter(f"{SVG}g") if g.get("data-job")}) == 500


def test_layout_and_render_of_500_jobs_is_fast(big_plan: dict[str, Any]) -> None:
    # A sanity bound only (shared, busy CI machines); bench/ui_bench.py measures.
    start = time.perf_counter()
    render_svg(layout(big_plan), {})
    assert time.perf_counter() - start < 1.0
