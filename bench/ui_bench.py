"""The web UI's pure building blocks, each against a baseline measured in the same run.

    python bench/ui_bench.py [--runs 50] [--lines 100000]

- DAG: `layout` + `render_svg` of a 500-job plan (20 levels, three 3-way matrix jobs per
  level, compiled from generated YAML), p50 of `--runs`, against `json.dumps` of the same
  plan dict (what the API would send instead); the run page's budget is 200 ms for the
  whole server render, so this part should stay well under 100 ms.
- Logs: `ansi_line_to_html` over `--lines` coloured log lines, state carried from line to
  line as the log view streams them, against `html.escape` of the same lines (the least
  any safe rendering must do), p50 of 5.

One line each. The plan generator is the tests' own (tests/coordinator/server/ui/).
"""
from __future__ import annotations

import argparse
import html
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from coordinator.server.ui.ansi import PLAIN, ansi_line_to_html  # noqa: E402
from coordinator.server.ui.dag_layout import layout, render_svg  # noqa: E402
from measure import percentile  # noqa: E402
from tests.coordinator.server.ui.test_dag_layout import compile_yaml, generate_pipeline  # noqa: E402


def p50(runs: int, fn) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return percentile(times, 50)


def log_lines(count: int, seed: int = 1) -> list[str]:
    """Coloured lines like a build prints (pytest, compilers, npm): every one has at least
    one SGR sequence; a tenth use 256-colour and truecolor, a tenth are progress bars."""
    rng = random.Random(seed)
    words = ["compiling", "src/module.py", "PASSED", "tests/test_api.py::test_login", "warning:", "unused",
             "variable", "0.42s", "<T>", "a && b", "\"quoted\""]
    lines = []
    for i in range(count):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(4, 12)))
        kind = i % 10
        if kind < 4:
            line = f"\x1b[32mPASSED\x1b[0m {text}"
        elif kind < 7:
            line = f"\x1b[3{rng.randint(1, 6)}m{text}\x1b[0m"
        elif kind == 7:
            line = f"\x1b[1;31mFAILED\x1b[0m {text} \x1b[2m({i} ms)\x1b[22m"
        elif kind == 8:
            line = f"\x1b[38;5;{rng.randint(16, 255)}m{text}\x1b[38;2;10;200;30m ok\x1b[39m"
        else:
            line = f"\x1b[36m 10%|#   |\r 50%|##  |\r100%|####|\x1b[0m {text}"
        lines.append(line)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--lines", type=int, default=100_000)
    args = parser.parse_args()

    plan = compile_yaml(generate_pipeline(levels=20, per_level=25))
    statuses = {name: random.Random(name).choice(["success", "failed", "running", "pending"]) for name in plan["jobs"]}
    ours = p50(args.runs, lambda: render_svg(layout(plan), statuses, link=lambda name: "/jobs/" + name))
    base = p50(args.runs, lambda: json.dumps(plan))
    print(f"dag: layout+render_svg {len(plan['jobs'])} jobs p50 {ours * 1000:.1f} ms; "
          f"json.dumps p50 {base * 1000:.1f} ms; ratio {ours / base:.2f}x (target: well under 100 ms)")

    lines = log_lines(args.lines)

    def render() -> None:
        state = PLAIN
        for line in lines:
            _, state = ansi_line_to_html(line, state)

    def escape() -> None:
        for line in lines:
            html.escape(line)

    ours = p50(5, render)
    base = p50(5, escape)
    print(f"ansi: ansi_line_to_html {len(lines)} lines p50 {ours * 1000:.0f} ms "
          f"({len(lines) / ours / 1e6:.2f} M lines/s); html.escape p50 {base * 1000:.0f} ms; ratio {ours / base:.1f}x")


if __name__ == "__main__":
    main()
