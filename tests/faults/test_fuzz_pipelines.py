"""10,000 fuzzed pipeline files through the front end: a plan or clean diagnostics, never an
exception, never a hang. A seeded mutator (not hypothesis): ten thousand cases must fit in
well under a minute, and a failure names its case number to replay."""
from __future__ import annotations

import random
import re
import time
from pathlib import Path

import pytest
import yaml

from coordinator.frontend import load_text

pytestmark = pytest.mark.slow

CASES = 10_000
SEED = 20_240_601
EXAMPLES = [p.read_text() for p in sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yml"))]
DIAGNOSTIC = re.compile(r"^fuzz\.yml:\d+:\d+: (error|warning): .+")
TOKENS = [":", ": ", "- ", "-", "[", "]", "{", "}", ",", "&a ", "*a", "<<: *a", "${", "${{", "}}", "'", '"', "!!str ",
          "!!python/object:os.system ", "#", "\t", "\x00", "\ufeff", "\\", "%YAML 1.1\n", "---\n", "...\n", "|", ">",
          "~", "null", "true", "1e999", "-0", "0x1F", "99999999999999999999", "${{ matrix.x }}", "success()",
          "failure() && ", "../", "/etc/passwd", "é", "\U0001F680"]
KEYS = ["name", "jobs", "steps", "script", "depends_on", "image", "timeout", "matrix", "environment", "global_env",
        "conditional", "artifacts", "paths", "retry_count", "retry_policy", "max_attempts", "deploy", "action",
        "working_directory", "resources", "memory", "cpus", "secrets", "allow_failure", "include", "exclude",
        "parameters", "defaults", "triggers", "expire_in", "continue_on_failure", "build", "test"]
SCALARS = [None, True, False, 0, -1, 3, 3600, 10**12, 1.5, "", "x", "build", "test", "busybox", "echo hi",
           "${X}", "${{ env.A }}", "success()", "always()", "../x", "/abs", "noop", "512m", "2", "\n", "a" * 300]


def mutate(rng: random.Random, text: str) -> str:
    """A few line-level and character-level edits of a real pipeline."""
    lines = text.splitlines()
    for _ in range(rng.randint(1, 6)):
        if not lines:
            lines = [""]
        i = rng.randrange(len(lines))
        op = rng.randrange(9)
        if op == 0:
            del lines[i]
        elif op == 1:
            lines.insert(rng.randrange(len(lines) + 1), lines[i])
        elif op == 2:
            lines[i] = "  " + lines[i]
        elif op == 3:
            lines[i] = lines[i][2:]
        elif op == 4:
            pos = rng.randint(0, len(lines[i]))
            lines[i] = lines[i][:pos] + rng.choice(TOKENS) + lines[i][pos:]
        elif op == 5:
            pos = rng.randint(0, len(lines[i]))
            lines[i] = lines[i][:pos] + "".join(chr(rng.randint(0, 0x2FF)) for _ in range(rng.randint(1, 6)))
        elif op == 6:  # splice a piece of another example in
            other = rng.choice(EXAMPLES).splitlines()
            start = rng.randrange(len(other))
            lines[i:i] = other[start:start + rng.randint(1, 8)]
        elif op == 7:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        else:
            lines[i] = re.sub(r"\d+", lambda _m: str(rng.choice([0, -1, 7, 10**9, 2**63])), lines[i])
    return "\n".join(lines)


def random_document(rng: random.Random, depth: int = 0):
    kind = rng.randrange(4) if depth < 4 else 0
    if kind == 0:
        return rng.choice(SCALARS)
    if kind == 1:
        return [random_document(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(KEYS): random_document(rng, depth + 1) for _ in range(rng.randint(0, 5))}


def shaped_document(rng: random.Random) -> dict:
    """Mostly well-formed pipelines with wrong values in random places (deeper in the schema)."""
    jobs = {}
    names = [f"j{i}" for i in range(rng.randint(1, 6))]
    for index, name in enumerate(names):
        job = {"steps": [{"name": "s", "script": [rng.choice(["echo hi", "exit 1", "${X}"])]}]}
        if index and rng.random() < 0.7:
            job["depends_on"] = rng.sample(names, rng.randint(1, min(3, len(names))))  # cycles included
        for _ in range(rng.randint(0, 3)):
            job[rng.choice(KEYS)] = random_document(rng, 2)
        jobs[name] = job
    return {"name": rng.choice(["p", "", None, "x" * 200]), "jobs": jobs}


def case(rng: random.Random) -> str | bytes:
    kind = rng.randrange(10)
    if kind < 5:
        return mutate(rng, rng.choice(EXAMPLES))
    if kind < 7:
        return yaml.safe_dump(shaped_document(rng), sort_keys=False)
    if kind < 9:
        return yaml.safe_dump(random_document(rng))
    data = bytearray(rng.choice(EXAMPLES).encode())
    for _ in range(rng.randint(1, 20)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def test_ten_thousand_fuzzed_pipelines_end_in_a_plan_or_diagnostics(fault) -> None:
    fault.fault = "fuzzed pipeline files through the front end"
    assert EXAMPLES, "examples/*.yml not found"
    rng = random.Random(SEED)
    plans = rejected = 0
    slowest = 0.0
    started = time.monotonic()
    for number in range(CASES):
        text = case(rng)
        begin = time.monotonic()
        try:
            result = load_text(text, "fuzz.yml")
        except Exception as exc:  # the point of the test: report which case, then fail
            pytest.fail(f"case {number} (seed {SEED}) raised {type(exc).__name__}: {exc}\n{text!r}")
        took = time.monotonic() - begin
        slowest = max(slowest, took)
        assert took < 5, f"case {number} took {took:.1f}s"
        for diagnostic in result.diagnostics:
            assert DIAGNOSTIC.match(str(diagnostic)), f"case {number}: {diagnostic}"
        if result.plan is None:
            assert any(d.severity == "error" for d in result.diagnostics), f"case {number}: no plan, no error"
            rejected += 1
        else:
            plans += 1
        fault.injected = number + 1
    elapsed = time.monotonic() - started
    fault.note(f"{plans} valid plans, {rejected} rejected with diagnostics, none raised; "
               f"slowest {slowest * 1000:.0f} ms, all {elapsed:.0f}s")
    assert plans > 100 and rejected > 1000  # the mix really exercises both outcomes
