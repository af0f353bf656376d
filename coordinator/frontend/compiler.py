"""Compile validated pipeline data into the immutable Plan.

Applies defaults, expands matrices, resolves variables layer by layer and computes the
DAG facts (levels, critical path, series-parallel structure) the executor needs.
"""
from __future__ import annotations

import posixpath
import re
from types import MappingProxyType
from typing import Any, Callable, Mapping

from coordinator.frontend import matrix as matrix_mod
from coordinator.frontend import variables
from coordinator.frontend.diagnostics import Diagnostics
from coordinator.frontend.schema import field_path, validate_substituted
from coordinator.frontend.yaml_source import Path, SourceMap
from coordinator.triggers.events import system_variables as trigger_variables
from shared.units import parse_duration
from shared import dag, expressions, worker_labels
from shared.plan import Artifacts, Job, Plan, Resources, RetryPolicy, Step, freeze, frozen_env

DEFAULT_IMAGE = "ubuntu:20.04"
RUN_ID_PLACEHOLDER = "${CONVEYOR_RUN_ID}"
# Substituted by the deployment provider per instance, not at compile time, in the fields
# of an environment that are command or image templates (docs/pipeline-format.md).
PROVIDER_VARIABLES = frozenset({"INSTANCE", "VERSION", "PORT", "ADDRESS"})
PROVIDER_TEMPLATES = frozenset({("provider", "start"), ("provider", "stop"), ("provider", "image"),
                                ("health_check", "command")})
STRING_ROOTS = expressions.TEMPLATE_ROOTS
IMAGE_RE = re.compile(
    r"(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?"
)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_memory(value: str | int) -> int:
    """`512m` -> bytes; plain integers are bytes. Units are binary, as Docker reads them."""
    if isinstance(value, int):
        return value
    text = value.strip().lower().removesuffix("b") if value.strip().lower() not in ("b",) else value
    unit = text[-1] if text and text[-1] in "kmg" else ""
    number = float(text[: -1] if unit else text)
    return int(number * _UNITS[unit])


def literal(text: str) -> str:
    """A value that substitution leaves exactly as it is (matrix values, system values)."""
    return text.replace("$", "$$")


def scalar_env(values: Any) -> dict[str, str]:
    if not isinstance(values, dict):
        return {}
    return {str(k): matrix_mod.scalar_text(v) for k, v in values.items()}


class Compiler:
    def __init__(self, data: dict, source: SourceMap, out: Diagnostics, parameters: Mapping[str, str], run_id: str,
                 trigger: Mapping[str, Any] | None = None):
        self.data = data
        self.source = source
        self.out = out
        self.parameters = dict(parameters)
        # run parameters are taken literally: `--var PW='a$b'` must not be expanded
        self.parameter_layer = {k: literal(v) for k, v in self.parameters.items()}
        self.run_id = run_id
        self.pipeline = str(data["name"])
        # The `git` root and the plan's `trigger`: every field of the spec's document, so a
        # partial one reads like a full one (None: no trigger; expressions read NO_TRIGGER).
        self.trigger = None if trigger is None else {key: trigger.get(key, default)
                                                     for key, default in expressions.NO_TRIGGER.items()}
        # The system variables every job shares, made once: only CONVEYOR_JOB differs.
        self.system_base = {name: literal(value) for name, value in {
            "CI": "true",
            "CONVEYOR": "true",
            "CONVEYOR_PIPELINE": self.pipeline,
            "CONVEYOR_RUN_ID": run_id,
            **trigger_variables(trigger),
        }.items()}
        self._pipeline_scope: dict[str, str] | None = None
        self.defaults: dict = data.get("defaults") or {}
        self.global_env = scalar_env(data.get("global_env"))
        policy = data.get("retry_policy") or {}
        self.retry_policy = RetryPolicy(
            max_attempts=policy.get("max_attempts", 1),
            backoff_base=float(policy.get("backoff_base", 5)),
            backoff_max=float(policy.get("backoff_max", 120)),
        )

    # -- helpers -------------------------------------------------------------------
    def error(self, path: Path, message: str, hint: str | None = None) -> None:
        self.out.error(self.source.nearest(path), message, hint)

    def expression(self, env: Mapping[str, str]) -> Callable[[str], str]:
        context = expressions.Context(env=env, vars=self.parameters, pipeline={"name": self.pipeline},
                                      git=self.trigger)

        def evaluate(source: str) -> str:
            problems = expressions.check(source, roots=STRING_ROOTS, status_functions=False)
            if problems:
                raise variables.VariableError(f"{problems[0].message} in '${{{{ {source.strip()} }}}}'")
            try:
                return expressions.to_text(expressions.evaluate(source, context))
            except expressions.ExpressionError as exc:
                raise variables.VariableError(f"{exc.message} in '${{{{ {source.strip()} }}}}'") from None

        return evaluate

    def resolve(self, layers: list[dict[str, str]], paths: list[Path]) -> dict[str, str] | None:
        """Merge and resolve env layers (highest first); report errors at their own layer."""
        try:
            # merged lazily: only values with `${{ }}` need the expression context
            return variables.resolve_layers(layers, expression=lambda source: self.expression(_merge(layers))(source))
        except variables.VariableErrorGroup as group:
            for name, problem in group.errors:
                layer = problem.layer if problem.layer is not None else next((i for i, layer in enumerate(layers) if name in layer), None)
                path = paths[layer] + (name,) if layer is not None and paths[layer] else paths[-1]
                self.error(path, f"{field_path(path)}: {problem.message}", problem.hint)
            return None

    def substitute(self, text: Any, scope: Mapping[str, str], path: Path) -> Any:
        if not isinstance(text, str) or "$" not in text:
            return text
        try:
            return variables.substitute(text, scope.get, self.expression(scope), known=scope)
        except variables.VariableError as problem:
            self.error(path, f"{field_path(path)}: {problem.message}", problem.hint)
            return text

    def substitute_tree(self, value: Any, scope: Mapping[str, str], path: Path) -> Any:
        if isinstance(value, dict):
            return {k: self.substitute_tree(v, scope, path + (k,)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.substitute_tree(v, scope, path + (i,)) for i, v in enumerate(value)]
        return self.substitute(value, scope, path)

    def substitute_template(self, text: Any, scope: Mapping[str, str], path: Path) -> Any:
        """A provider command or image template: the pipeline's variables substituted, the
        provider's own (`${INSTANCE}`, `${VERSION}`, `${PORT}`, `${ADDRESS}`) left for it."""
        if not isinstance(text, str) or "$" not in text:
            return text

        def lookup(name: str) -> str | None:
            # Returned values are never expanded again, so `${INSTANCE}` stays as written.
            return "${" + name + "}" if name in PROVIDER_VARIABLES else scope.get(name)

        try:
            return variables.substitute(text, lookup, self.expression(scope), known=[*scope, *PROVIDER_VARIABLES])
        except variables.VariableError as problem:
            self.error(path, f"{field_path(path)}: {problem.message}", problem.hint)
            return text

    def pipeline_scope(self) -> dict[str, str]:
        """The variables of what belongs to no job (`environments:`, `concurrency:`): run
        parameters, `global_env` and the system variables of the run (trigger ones included)."""
        if self._pipeline_scope is None:
            layers = [self.parameter_layer, self.global_env, self.system_base]
            try:
                self._pipeline_scope = variables.resolve_layers(
                    layers, expression=lambda source: self.expression(_merge(layers))(source))
            except variables.VariableErrorGroup as group:
                # Each job resolves the same layers and reports these errors; a reference to a
                # broken variable is then reported here as undefined.
                self._pipeline_scope = group.partial
        return self._pipeline_scope

    def compile_concurrency(self) -> dict[str, Any] | None:
        """`concurrency:` with its group substituted, `{"group", "cancel_in_progress"}`.

        A group may come out `""` (`${CONVEYOR_BRANCH}` on a tag push or a local run): it is
        a group like any other, not an error, so the same file loads for every event.
        """
        raw = self.data.get("concurrency")
        if raw is None:
            return None
        group_path: Path = ("concurrency", "group")
        if isinstance(raw, str):  # the short form: `concurrency: NAME`
            raw, group_path = {"group": raw}, ("concurrency",)
        group = self.substitute(raw["group"], self.pipeline_scope(), group_path)
        return {"group": group, "cancel_in_progress": raw.get("cancel_in_progress", False)}

    def compile_environments(self) -> dict[str, Any]:
        """`environments:` with variables substituted in every string field, then checked
        again (`strategy`-like values and `router.admin` are only known after it)."""
        raw = self.data.get("environments") or {}
        if not isinstance(raw, dict) or not raw:
            return {}
        scope = self.pipeline_scope()
        compiled: dict[str, Any] = {}
        for name, env in raw.items():
            path: Path = ("environments", name)
            if not isinstance(env, dict):
                compiled[name] = env
                continue
            before = len(self.out.errors)
            value = {key: self._environment_field(field, scope, path + (key,), (key,)) for key, field in env.items()}
            if len(self.out.errors) == before:
                validate_substituted("environment", value, path, self.source, self.out)
            compiled[name] = value
        return compiled

    def _environment_field(self, value: Any, scope: Mapping[str, str], path: Path, where: tuple) -> Any:
        if isinstance(value, dict):
            return {k: self._environment_field(v, scope, path + (k,), where + (k,)) for k, v in value.items()}
        if isinstance(value, list):
            return [self._environment_field(v, scope, path + (i,), where + (i,)) for i, v in enumerate(value)]
        if where in PROVIDER_TEMPLATES:
            return self.substitute_template(value, scope, path)
        return self.substitute(value, scope, path)

    def check_image(self, image: str, path: Path) -> None:
        if "${" not in image and not IMAGE_RE.fullmatch(image):
            self.error(path, f"{field_path(path)}: '{image}' is not a valid image reference", "expected [registry/]repo[:tag][@sha256:digest]")

    # -- jobs ----------------------------------------------------------------------
    def system_env(self, job: str) -> dict[str, str]:
        return {**self.system_base, "CONVEYOR_JOB": literal(job)}

    def compile_job(self, base: str, raw: dict, expansion: matrix_mod.Expansion, depends_on: tuple[str, ...]) -> Job | None:
        path: Path = ("jobs", base)
        job_env_raw = scalar_env(raw.get("environment") if "environment" in raw else self.defaults.get("environment"))
        env_path = path + ("environment",) if "environment" in raw else ("defaults", "environment")
        job_layer = {**job_env_raw, **{k: literal(v) for k, v in expansion.values}}
        layers = [self.parameter_layer, job_layer, self.global_env, self.system_env(expansion.name)]
        job_env = self.resolve(layers, [(), env_path, ("global_env",), ()])
        if job_env is None:
            return None
        image = self.substitute(raw.get("image", self.defaults.get("image", DEFAULT_IMAGE)), job_env, path + ("image",))
        if isinstance(image, str):
            self.check_image(image, path + ("image",))
        steps = []
        for i, step_raw in enumerate(raw.get("steps") or []):
            step = self.compile_step(step_raw, path + ("steps", i), layers, job_layer, env_path, image)
            if step is not None:
                steps.append(step)
        artifacts_raw = self.substitute_tree(raw.get("artifacts") or {}, job_env, path + ("artifacts",))
        resources_raw = raw.get("resources", self.defaults.get("resources")) or {}
        deploy = raw.get("deploy")
        if deploy is not None:
            before = len(self.out.errors)
            deploy = self.substitute_tree(deploy, job_env, path + ("deploy",))
            if len(self.out.errors) == before:
                self.check_deploy(deploy, raw["deploy"], path + ("deploy",))
        return Job(
            name=expansion.name,
            base_name=base,
            steps=tuple(steps),
            image=image,
            environment=frozen_env(job_env),
            depends_on=depends_on,
            matrix=expansion.values,
            timeout=raw.get("timeout", self.defaults.get("timeout", 3600)),
            retry_count=raw.get("retry_count", self.defaults.get("retry_count", self.retry_policy.max_attempts - 1)),
            retry_policy=self.retry_policy,
            conditional=raw.get("conditional", "success()"),
            allow_failure=raw.get("allow_failure", False),
            resources=Resources(
                cpus=resources_raw.get("cpus"),
                memory_bytes=parse_memory(resources_raw["memory"]) if "memory" in resources_raw else None,
            ),
            secrets=tuple(raw.get("secrets") or ()),
            artifacts=Artifacts(
                paths=tuple(artifacts_raw.get("paths") or ()),
                expire_in_seconds=int(parse_duration(artifacts_raw["expire_in"])) if "expire_in" in artifacts_raw else None,
                name=artifacts_raw.get("name"),
            ),
            deploy=freeze(deploy) if deploy is not None else None,
            user=str(raw["user"]) if "user" in raw else None,
            read_only_root=raw.get("read_only_root"),
            runs_on=self.compile_runs_on(raw, job_env, path) if deploy is None else (),
            queue_timeout=int(parse_duration(raw.get("queue_timeout", self.defaults.get(
                "queue_timeout", worker_labels.DEFAULT_QUEUE_TIMEOUT)))),
        )

    def compile_runs_on(self, raw: dict, scope: Mapping[str, str], path: Path) -> tuple[str, ...]:
        """`runs_on:` (the job's, else `defaults.runs_on`) substituted, sorted, each label once.
        Labels written with `$` are checked here, after substitution; semantic.py checked the others."""
        where: Path = path + ("runs_on",) if "runs_on" in raw else ("defaults", "runs_on")
        value = raw.get("runs_on", self.defaults.get("runs_on"))
        if isinstance(value, str):
            items = [(value, where)]
        else:
            items = [(text, where + (i,)) for i, text in enumerate(value or ())]
        labels: list[str] = []
        for text, at in items:
            if "$" in text:
                before = len(self.out.errors)
                text = self.substitute(text, scope, at)
                if len(self.out.errors) > before:
                    continue
                problem = worker_labels.label_problem(text)
                if problem is not None:
                    self.error(at, f"{field_path(at)} (after substitution): '{text}' is not a worker label", problem)
                    continue
            labels.append(text)
        unique = tuple(sorted(set(labels)))
        if len(unique) > worker_labels.MAX_LABELS and any("$" in text for text, _ in items):
            self.error(where, f"{field_path(where)} (after substitution): {len(unique)} labels, but a worker has "
                       f"at most {worker_labels.MAX_LABELS}", "no worker could take this job")
        return unique

    def check_deploy(self, deploy: Any, raw: Any, path: Path) -> None:
        """A `deploy:` block checked again after substitution (`strategy: ${STRATEGY}`)."""
        if not validate_substituted("deploy", deploy, path, self.source, self.out):
            return
        raw_strategy = raw.get("strategy") if isinstance(raw, dict) else None
        if (isinstance(deploy, dict) and isinstance(raw_strategy, str) and "$" in raw_strategy
                and deploy.get("strategy") == "canary" and "canary" not in deploy):
            # The same rule semantic.py applies to a literal `strategy: canary`.
            self.error(path + ("strategy",), f"job '{path[1]}': strategy 'canary' needs a 'canary:' section with steps")

    def compile_step(self, raw: dict, path: Path, job_layers: list[dict[str, str]], job_layer: dict,
                     job_env_path: Path, job_image: str) -> Step | None:
        step_layer = scalar_env(raw.get("environment"))
        system = {**job_layers[-1], "CONVEYOR_STEP": literal(str(raw.get("name", "")))}
        layers = [self.parameter_layer, step_layer, job_layer, self.global_env, system]
        env = self.resolve(layers, [(), path + ("environment",), job_env_path, ("global_env",), ()])
        if env is None:
            return None
        image = job_image
        if "image" in raw:
            image = self.substitute(raw["image"], env, path + ("image",))
            if isinstance(image, str):
                self.check_image(image, path + ("image",))
        workdir = self.substitute(raw.get("working_directory", "."), env, path + ("working_directory",))
        return Step(
            name=raw["name"],
            image=image,
            environment=frozen_env(env),
            working_directory=posixpath.normpath(workdir) if isinstance(workdir, str) else ".",
            timeout=raw.get("timeout", 1800),
            retry_count=raw.get("retry_count", 0),
            continue_on_failure=raw.get("continue_on_failure", False),
            script=tuple(raw.get("script") or ()),
            action=raw.get("action"),
        )

    # -- pipeline ------------------------------------------------------------------
    def compile(self) -> Plan | None:
        raw_jobs: dict[str, dict] = self.data["jobs"]
        expansions = {base: matrix_mod.expand(base, raw.get("matrix")) for base, raw in raw_jobs.items()}
        jobs: dict[str, Job] = {}
        for base, raw in raw_jobs.items():
            deps = tuple(e.name for dep in raw.get("depends_on") or () for e in expansions[dep])
            deps = tuple(dict.fromkeys(deps))
            for expansion in expansions[base]:
                job = self.compile_job(base, raw, expansion, deps)
                if job is not None:
                    jobs[job.name] = job
        environments = self.compile_environments()
        concurrency = self.compile_concurrency()
        if self.out.has_errors:
            return None
        graph = {name: job.depends_on for name, job in jobs.items()}
        path, length = dag.critical_path(graph, {name: float(job.timeout) for name, job in jobs.items()})
        decomposition = dag.series_parallel(graph)
        return Plan(
            pipeline=self.pipeline,
            source_file=self.out.file,
            jobs=MappingProxyType(jobs),
            levels=dag.kahn_levels(graph),
            critical_path=tuple(path),
            critical_path_seconds=length,
            dependents=MappingProxyType(dag.dependents(graph)),
            structure=freeze(dag.to_dict(decomposition.root)),
            barriers=tuple(freeze(dag.barrier_to_dict(b)) for b in decomposition.barriers),
            timeout=self.data.get("timeout", 7200),
            global_env=frozen_env(self.global_env),
            parameters=frozen_env(self.parameters),
            environments=freeze(environments),
            triggers=tuple(freeze(t) for t in self.data.get("triggers") or ()),
            concurrency=freeze(concurrency),
            trigger=freeze(self.trigger),
        )


def _merge(layers: list[dict[str, str]]) -> dict[str, str]:
    merged: dict[str, str] = {}
    for layer in reversed(layers):
        merged.update(layer)
    return merged


def compile_plan(data: dict, source: SourceMap, out: Diagnostics, parameters: Mapping[str, str] | None = None,
                 run_id: str = RUN_ID_PLACEHOLDER, trigger: Mapping[str, Any] | None = None) -> Plan | None:
    return Compiler(data, source, out, parameters or {}, run_id, trigger).compile()
