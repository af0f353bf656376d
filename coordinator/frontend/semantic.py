"""Semantic checks a schema cannot express: references, cycles, paths, expressions.

Runs on the loaded data even when the schema found problems, guarding every access, so a
single pass reports as much as it can.
"""
from __future__ import annotations

import posixpath
import re
from typing import Any

from coordinator.frontend import matrix as matrix_mod
from coordinator.frontend.diagnostics import Diagnostics
from shared.suggest import did_you_mean
from coordinator.frontend.schema import DURATION_RE, field_path
from coordinator.frontend.yaml_source import Path, SourceMap
from shared import dag, expressions, worker_labels
from shared.units import parse_duration

DURATION_TEXT = re.compile(DURATION_RE)

BUILTIN_ACTIONS = ("noop",)
CONDITION_ROOTS = expressions.KNOWN_ROOTS  # every root, `jobs` and `git` included


def escapes_workspace(path: str) -> bool:
    """True for absolute paths and relative paths whose `..` climb above the workspace."""
    if path.startswith("/") or path.startswith("\\"):
        return True
    normal = posixpath.normpath(path.replace("\\", "/"))
    return normal == ".." or normal.startswith("../")


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


class SemanticChecker:
    def __init__(self, data: dict, source: SourceMap, out: Diagnostics):
        self.data = data
        self.source = source
        self.out = out
        self.jobs: dict = _mapping(data.get("jobs"))

    def error(self, path: Path, message: str, hint: str | None = None, *, at_key: bool = False) -> None:
        position = (self.source.key(path) if at_key else None) or self.source.nearest(path)
        self.out.error(position, message, hint)

    def run(self) -> None:
        self.check_nul()
        defaults = _mapping(self.data.get("defaults"))
        self.check_runs_on(defaults.get("runs_on"), ("defaults", "runs_on"), "defaults")
        self.check_queue_timeout(defaults.get("queue_timeout"), ("defaults", "queue_timeout"))
        for name, job in self.jobs.items():
            if isinstance(job, dict):
                self.check_job(str(name), job)
        self.check_dependencies()
        self.check_environments()

    # -- text ----------------------------------------------------------------------
    def check_nul(self) -> None:
        """No NUL character in any key or string (a `\\0`, `\\x00` or `\\u0000` escape).

        No process argument, environment value or file name can hold one, so such a value
        would fail on the worker, mid-run; it is an error here, at its position.
        """
        stack: list[tuple[Any, Path]] = [(self.data, ())]
        while stack:
            node, path = stack.pop()
            if isinstance(node, dict):
                for key, value in node.items():
                    if isinstance(key, str) and "\0" in key:
                        self.error(path + (key,), f"{field_path(path)}: key {key!r} must not contain a NUL "
                                   "character", "remove the \\0 escape", at_key=True)
                    stack.append((value, path + (key,)))
            elif isinstance(node, list):
                stack.extend((value, path + (i,)) for i, value in enumerate(node))
            elif isinstance(node, str) and "\0" in node:
                self.error(path, f"{field_path(path)}: text must not contain a NUL character",
                           "remove the \\0 (or \\x00, \\u0000) escape")

    # -- jobs ----------------------------------------------------------------------
    def check_job(self, name: str, job: dict) -> None:
        path: Path = ("jobs", name)
        has_steps, has_deploy = "steps" in job, "deploy" in job
        if has_steps and has_deploy:
            self.error(path + ("deploy",), f"job '{name}' has both 'steps' and 'deploy'", "a job runs steps or deploys, not both", at_key=True)
        elif not has_steps and not has_deploy:
            self.error(path, f"job '{name}' has neither 'steps' nor 'deploy'", "add a 'steps:' list")
        steps = job.get("steps")
        if isinstance(steps, list):
            self.check_steps(name, steps)
        matrix = job.get("matrix")
        if isinstance(matrix, dict) and all(isinstance(v, list) for v in matrix.values()):
            count = matrix_mod.expansion_count(matrix)
            if count > matrix_mod.MAX_EXPANSIONS:
                self.error(path + ("matrix",), f"job '{name}': matrix expands to {count} jobs, more than {matrix_mod.MAX_EXPANSIONS}", at_key=True)
        for i, pattern in enumerate(_strings(_mapping(job.get("artifacts")).get("paths"))):
            if escapes_workspace(pattern):
                self.error(path + ("artifacts", "paths", i), f"job '{name}': artifact path '{pattern}' escapes the workspace", "use a path relative to the workspace, without '..' above it")
        self.check_runs_on(job.get("runs_on"), path + ("runs_on",), f"job '{name}'", deploy=has_deploy)
        self.check_queue_timeout(job.get("queue_timeout"), path + ("queue_timeout",))
        conditional = job.get("conditional")
        if isinstance(conditional, str):
            self.check_expression(conditional, path + ("conditional",), CONDITION_ROOTS, status_functions=True,
                                  condition=True)
            self.check_condition_jobs(name, job, conditional, path + ("conditional",))

    # -- worker labels ---------------------------------------------------------------
    def check_runs_on(self, value: Any, path: Path, who: str, *, deploy: bool = False) -> None:
        """`runs_on:`: one label or a list, each of the label syntax (values with `$` are
        checked by the compiler once substituted), at most as many as a worker can have."""
        if value is None:
            return
        if deploy:
            self.error(path, f"{who}: runs_on does not apply to a deploy job",
                       "deploy jobs run on the workers of the deploy queue; remove runs_on", at_key=True)
            return
        items = [(value, path)] if isinstance(value, str) else \
            [(v, path + (i,)) for i, v in enumerate(value) if isinstance(v, str)] if isinstance(value, list) else []
        seen: set[str] = set()
        for label, where in items:
            if "$" in label:
                continue
            problem = worker_labels.label_problem(label)
            if problem is not None:
                self.error(where, f"{field_path(where)}: '{label}' is not a worker label", problem)
            elif label in seen:
                self.out.warning(self.source.nearest(where), f"{who} lists label '{label}' in runs_on twice")
            seen.add(label)
        if len(seen) > worker_labels.MAX_LABELS:
            self.error(path, f"{field_path(path)}: {len(seen)} labels, but a worker has at most "
                       f"{worker_labels.MAX_LABELS}", "no worker could take this job")

    def check_queue_timeout(self, value: Any, path: Path) -> None:
        """A duration written as text (`30m`): the schema checked its form, this its range."""
        if not isinstance(value, str) or not DURATION_TEXT.fullmatch(value):
            return
        seconds = parse_duration(value)
        if seconds > worker_labels.MAX_QUEUE_TIMEOUT:
            self.error(path, f"{field_path(path)}: must be at most {worker_labels.MAX_QUEUE_TIMEOUT // 3600}h "
                       f"({worker_labels.MAX_QUEUE_TIMEOUT} seconds), got '{value}'")

    def check_steps(self, job_name: str, steps: list) -> None:
        seen: dict[str, int] = {}
        for i, step in enumerate(steps):
            if not isinstance(step, dict):
                continue
            path: Path = ("jobs", job_name, "steps", i)
            step_name = step.get("name")
            if isinstance(step_name, str):
                if step_name in seen:
                    self.error(path + ("name",), f"job '{job_name}': duplicate step name '{step_name}' (first used by step {seen[step_name] + 1})")
                else:
                    seen[step_name] = i
            label = f"job '{job_name}' step '{step_name}'" if isinstance(step_name, str) else f"job '{job_name}' step {i + 1}"
            if "script" in step and "action" in step:
                self.error(path + ("action",), f"{label} has both 'script' and 'action'", "a step runs a script or an action, not both", at_key=True)
            elif "script" not in step and "action" not in step:
                self.error(path, f"{label} has neither 'script' nor 'action'", "add a 'script:' list")
            action = step.get("action")
            if isinstance(action, str) and action not in BUILTIN_ACTIONS:
                hint = did_you_mean(action, BUILTIN_ACTIONS) or f"built-in actions: {', '.join(BUILTIN_ACTIONS)}"
                self.error(path + ("action",), f"{label}: unknown action '{action}'", hint)
            workdir = step.get("working_directory")
            if isinstance(workdir, str) and escapes_workspace(workdir):
                self.error(path + ("working_directory",), f"{label}: working_directory '{workdir}' escapes the workspace", "use a path relative to the workspace, without '..' above it")

    def check_expression(self, source: str, path: Path, roots: frozenset[str], *, status_functions: bool,
                         condition: bool = False) -> None:
        # A condition may be wrapped whole in ${{ }}, as GitHub allows in if:.
        for problem in expressions.check(source, roots=roots, status_functions=status_functions,
                                         condition=condition):
            self.error(path, f"{field_path(path)}: {problem.message} in expression '{source}'")

    def check_condition_jobs(self, name: str, job: dict, source: str, path: Path) -> None:
        try:
            used = expressions.referenced_jobs(expressions.parse_condition(source))
        except expressions.ExpressionError:
            return  # already reported by check_expression
        upstream = self.ancestors(name)
        for other in sorted(used):
            if other not in upstream:
                hint = (f"add '{other}' to depends_on" if self.base_name(other) in self.jobs
                        else did_you_mean(other, self.jobs))
                self.error(path, f"job '{name}': conditional refers to job '{other}', which is not upstream of it", hint)

    # -- dependencies --------------------------------------------------------------
    def base_name(self, name: str) -> str:
        return name.split("[", 1)[0]

    def dependency_names(self, job: Any) -> list[str]:
        return _strings(_mapping(job).get("depends_on"))

    def ancestors(self, name: str) -> set[str]:
        seen: set[str] = set()
        stack = list(self.dependency_names(self.jobs.get(name)))
        while stack:
            dep = stack.pop()
            if dep in seen or dep not in self.jobs:
                continue
            seen.add(dep)
            stack.extend(self.dependency_names(self.jobs.get(dep)))
        expanded = set(seen)
        for dep in seen:
            job = _mapping(self.jobs.get(dep))
            if isinstance(job.get("matrix"), dict):
                try:
                    expanded.update(e.name for e in matrix_mod.expand(dep, job["matrix"]))
                except TypeError:
                    pass
        return expanded

    def check_dependencies(self) -> None:
        graph: dict[str, list[str]] = {}
        for name, job in self.jobs.items():
            deps = _mapping(job).get("depends_on")
            graph[name] = []
            if not isinstance(deps, list):
                continue
            seen: set[str] = set()
            for i, dep in enumerate(deps):
                if not isinstance(dep, str):
                    continue
                path: Path = ("jobs", name, "depends_on", i)
                if dep == name:
                    self.error(path, f"job '{name}' depends on itself", "remove it from depends_on")
                elif dep not in self.jobs:
                    self.error(path, f"job '{name}' depends on unknown job '{dep}'", did_you_mean(dep, self.jobs))
                elif dep in seen:
                    self.out.warning(self.source.nearest(path), f"job '{name}' lists '{dep}' in depends_on twice")
                else:
                    graph[name].append(dep)
                seen.add(dep)
        for loop in dag.cycles(graph):
            first, second = loop[0], loop[1]
            index = self.dependency_names(self.jobs[first]).index(second)
            self.error(("jobs", first, "depends_on", index), "circular dependency: " + " -> ".join(loop))

    # -- deployments ---------------------------------------------------------------
    def check_environments(self) -> None:
        environments = _mapping(self.data.get("environments"))
        for name, job in self.jobs.items():
            deploy = _mapping(_mapping(job).get("deploy"))
            env_name = deploy.get("environment")
            path: Path = ("jobs", name, "deploy", "environment")
            if isinstance(env_name, str) and env_name not in environments:
                # Deploy targets are the operator's (the deploy workers' conveyor.toml), so a
                # name the pipeline does not define is fine; one close to a name it does
                # define is probably a typo.
                hint = did_you_mean(env_name, environments)
                if hint:
                    position = self.source.nearest(path)
                    self.out.warning(position, f"job '{name}' deploys to environment '{env_name}', which this "
                                     "pipeline does not define (the deploy workers' operator may)", hint)
            strategy = deploy.get("strategy")
            if strategy == "canary" and "canary" not in deploy:
                self.error(("jobs", name, "deploy", "strategy"), f"job '{name}': strategy 'canary' needs a 'canary:' section with steps")


def check_semantics(data: Any, source: SourceMap, out: Diagnostics) -> None:
    if isinstance(data, dict):
        SemanticChecker(data, source, out).run()
