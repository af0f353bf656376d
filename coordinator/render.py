"""Render a Plan as text (levels as a tree), JSON, Graphviz dot or Mermaid."""
from __future__ import annotations

import json
from typing import Any

from shared.plan import Plan, plain


def duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{secs}s" if secs else ""]
    return " ".join(p for p in parts if p) or "0s"


def plan_json(plan: Plan) -> dict[str, Any]:
    return {
        "pipeline": plan.pipeline,
        "levels": [list(level) for level in plan.levels],
        "critical_path": list(plan.critical_path),
        "critical_path_seconds": plan.critical_path_seconds,
        "timeout": plan.timeout,
        "jobs": {
            name: {
                "depends_on": list(job.depends_on),
                "image": job.image,
                "timeout": job.timeout,
                "retry_count": job.retry_count,
                "conditional": job.conditional,
                "allow_failure": job.allow_failure,
                "matrix": dict(job.matrix),
                "steps": [step.name for step in job.steps],
                "deploy": job.deploy is not None,
            }
            for name, job in plan.jobs.items()
        },
        "structure": plain(plan.structure),
        "barriers": plain(plan.barriers),
    }


def plan_text(plan: Plan) -> str:
    lines = [
        f"pipeline {plan.pipeline}: {len(plan.jobs)} jobs in {len(plan.levels)} levels, "
        f"timeout {duration(plan.timeout)}",
        f"critical path ({duration(plan.critical_path_seconds)} of job timeouts): " + " -> ".join(plan.critical_path),
    ]
    for i, level in enumerate(plan.levels):
        last_level = i == len(plan.levels) - 1
        lines.append(("└── " if last_level else "├── ") + f"level {i}")
        indent = "    " if last_level else "│   "
        for j, name in enumerate(level):
            job = plan.jobs[name]
            branch = "└── " if j == len(level) - 1 else "├── "
            what = "deploy" if job.deploy is not None else f"{len(job.steps)} step{'s' if len(job.steps) != 1 else ''}"
            detail = f"{what}, {job.image}, timeout {duration(job.timeout)}"
            if job.depends_on:
                detail += ", after " + ", ".join(job.depends_on)
            if job.conditional != "success()":
                detail += f", if {job.conditional}"
            if job.allow_failure:
                detail += ", may fail"
            lines.append(f"{indent}{branch}{name}  ({detail})")
    if plan.barriers:
        waiting = sum(len(b["waits"]) for b in plan.barriers)
        lines.append(
            f"note: the graph is not series-parallel; {len(plan.barriers)} barrier(s) make {waiting} job(s) "
            "wait for jobs they do not depend on (see --format json, \"barriers\")"
        )
    return "\n".join(lines)


def _quote(text: str) -> str:
    return json.dumps(text)  # a valid dot/mermaid string literal for any job name


def plan_dot(plan: Plan) -> str:
    lines = [f"digraph {_quote(plan.pipeline)} {{", "  rankdir=LR;", "  node [shape=box];"]
    for name in plan.jobs:
        lines.append(f"  {_quote(name)};")
    for name, job in plan.jobs.items():
        for dep in job.depends_on:
            lines.append(f"  {_quote(dep)} -> {_quote(name)};")
    lines.append("}")
    return "\n".join(lines)


def plan_mermaid(plan: Plan) -> str:
    ids = {name: f"j{i}" for i, name in enumerate(plan.jobs)}
    lines = ["flowchart LR"]
    for name, node in ids.items():
        label = name.replace('"', "#quot;")
        lines.append(f'  {node}["{label}"]')
    for name, job in plan.jobs.items():
        for dep in job.depends_on:
            lines.append(f"  {ids[dep]} --> {ids[name]}")
    return "\n".join(lines)


RENDERERS = {
    "text": plan_text,
    "json": lambda plan: json.dumps(plan_json(plan), indent=2),
    "dot": plan_dot,
    "mermaid": plan_mermaid,
}
