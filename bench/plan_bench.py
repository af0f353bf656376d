"""Plan a generated 2000-job DAG and compare with a bare `yaml.safe_load` of the same file.

    python bench/plan_bench.py [--jobs 2000] [--seed 1] [--repeat 3]

Prints the ratio (target <= 0.5: composing with libyaml and validating per job must beat
the pure-Python loader alone) and the start-up time of `conveyor --help`.
"""
from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coordinator.frontend import load_file  # noqa: E402
from coordinator.render import RENDERERS  # noqa: E402
from measure import best_of, timed  # noqa: E402


def generate(jobs: int, seed: int) -> str:
    rng = random.Random(seed)
    lines = ["name: bench", "global_env:", "  REGISTRY: registry.local", "jobs:"]
    for i in range(jobs):
        lines.append(f"  job-{i}:")
        lines.append("    image: ${REGISTRY}/builder:1")
        if i:
            deps = sorted(set(rng.randrange(max(0, i - 50), i) for _ in range(rng.randint(1, 4))))
            lines.append("    depends_on: [" + ", ".join(f"job-{d}" for d in deps) + "]")
        lines.append(f"    timeout: {rng.randint(60, 3600)}")
        lines.append("    environment:")
        lines.append(f"      SHARD: \"{i}\"")
        lines.append("      TARGET: ${REGISTRY}/out")
        lines.append("    steps:")
        for s in range(2):
            lines.append(f"      - name: step-{s}")
            lines.append("        script:")
            lines.append(f"          - echo job {i} step {s}")
            lines.append("          - make -j2 all")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yml"
        path.write_text(generate(args.jobs, args.seed))
        size = path.stat().st_size

        def plan_json() -> None:
            result = load_file(path)
            assert result.ok, result.diagnostics[:3]
            RENDERERS["json"](result.plan)

        def safe_load() -> None:
            yaml.safe_load(path.read_text())

        ours = best_of(args.repeat, plan_json)
        base = best_of(args.repeat, safe_load)
    print(f"file: {args.jobs} jobs, {size / 1e6:.2f} MB")
    print(f"plan --format json : {ours * 1000:8.1f} ms")
    print(f"yaml.safe_load     : {base * 1000:8.1f} ms")
    print(f"ratio              : {ours / base:8.2f}x  (target <= 0.50)")
    starts = [timed(lambda: subprocess.run([sys.executable, "-m", "coordinator", "--help"], check=True,
                                           capture_output=True)) for _ in range(5)]
    print(f"conveyor --help    : {statistics.median(starts) * 1000:8.1f} ms (median of 5)")


if __name__ == "__main__":
    main()
