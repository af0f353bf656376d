"""The immutable execution plan: what the coordinator compiled and the workers execute.

Everything here is resolved (variables substituted, defaults applied, matrix expanded);
workers never look at YAML. The plan serialises to plain JSON for the state store.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from shared.worker_labels import DEFAULT_QUEUE_TIMEOUT

Env = Mapping[str, str]


def frozen_env(values: Mapping[str, str] | None = None) -> Env:
    """A read-only mapping, so a plan cannot be changed after compilation."""
    return MappingProxyType(dict(values or {}))


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 1
    backoff_base: float = 5.0
    backoff_max: float = 120.0


@dataclass(frozen=True)
class Resources:
    cpus: float | None = None
    memory_bytes: int | None = None


@dataclass(frozen=True)
class Artifacts:
    paths: tuple[str, ...] = ()
    expire_in_seconds: int | None = None
    name: str | None = None


@dataclass(frozen=True)
class Step:
    name: str
    image: str
    environment: Env
    working_directory: str = "."
    timeout: int = 1800
    retry_count: int = 0
    continue_on_failure: bool = False
    script: tuple[str, ...] = ()
    action: str | None = None


@dataclass(frozen=True)
class Job:
    name: str
    base_name: str
    steps: tuple[Step, ...]
    image: str
    environment: Env
    depends_on: tuple[str, ...] = ()
    matrix: tuple[tuple[str, str], ...] = ()
    timeout: int = 3600
    retry_count: int = 0
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)
    conditional: str = "success()"
    allow_failure: bool = False
    resources: Resources = field(default_factory=Resources)
    secrets: tuple[str, ...] = ()
    artifacts: Artifacts = field(default_factory=Artifacts)
    deploy: Mapping[str, Any] | None = None
    # Who Docker steps run as (numeric uid[:gid]) and whether their root filesystem is
    # read-only; None: the worker's choice (docs/configuration.md, "Job limits").
    user: str | None = None
    read_only_root: bool | None = None
    # The labels a worker must all have to take the job, sorted, each once (empty: any
    # worker of the `jobs` queue), and how long (seconds) the job may wait, once it could
    # start, while no live worker can take it before it fails with `no_worker`
    # (shared/worker_labels.py; docs/pipeline-format.md, "Worker labels").
    runs_on: tuple[str, ...] = ()
    queue_timeout: int = DEFAULT_QUEUE_TIMEOUT

    @property
    def is_deployment(self) -> bool:
        return self.deploy is not None


@dataclass(frozen=True)
class Plan:
    pipeline: str
    source_file: str
    jobs: Mapping[str, Job]
    levels: tuple[tuple[str, ...], ...]
    critical_path: tuple[str, ...]
    critical_path_seconds: float
    dependents: Mapping[str, tuple[str, ...]]
    structure: Mapping[str, Any]
    barriers: tuple[Mapping[str, Any], ...] = ()
    timeout: int = 7200
    global_env: Env = field(default_factory=frozen_env)
    parameters: Env = field(default_factory=frozen_env)
    environments: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    triggers: tuple[Mapping[str, Any], ...] = ()
    # `concurrency:` with its group substituted: {"group": str, "cancel_in_progress": bool};
    # None when the pipeline sets none. The server acts on it, workers never do.
    concurrency: Mapping[str, Any] | None = None
    # What started the run: the server's `trigger` document (TriggerEvent.to_dict(), every
    # key present), read by job conditions as the `git` root; None for a run no trigger
    # started (`conveyor run`), which conditions read as shared.expressions.NO_TRIGGER.
    # (Not to be confused with `triggers`, the pipeline's own `triggers:` list.)
    trigger: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Plan":
        jobs = {name: _job_from_dict(job) for name, job in data["jobs"].items()}
        return cls(
            pipeline=data["pipeline"],
            source_file=data["source_file"],
            jobs=MappingProxyType(jobs),
            levels=tuple(tuple(level) for level in data["levels"]),
            critical_path=tuple(data["critical_path"]),
            critical_path_seconds=data["critical_path_seconds"],
            dependents=MappingProxyType({k: tuple(v) for k, v in data["dependents"].items()}),
            structure=freeze(data["structure"]),
            barriers=tuple(freeze(b) for b in data.get("barriers", ())),
            timeout=data["timeout"],
            global_env=frozen_env(data.get("global_env")),
            parameters=frozen_env(data.get("parameters")),
            environments=freeze(data.get("environments", {})),
            triggers=tuple(freeze(t) for t in data.get("triggers", ())),
            # Plans written before these fields existed have neither key.
            concurrency=freeze(data.get("concurrency")),
            trigger=freeze(data.get("trigger")),
        )


def _job_from_dict(data: Mapping[str, Any]) -> Job:
    steps = tuple(
        Step(**{**step, "environment": frozen_env(step["environment"]), "script": tuple(step["script"])})
        for step in data["steps"]
    )
    return Job(
        **{
            **data,
            "steps": steps,
            "environment": frozen_env(data["environment"]),
            "depends_on": tuple(data["depends_on"]),
            "matrix": tuple(tuple(pair) for pair in data["matrix"]),
            "retry_policy": RetryPolicy(**data["retry_policy"]),
            "resources": Resources(**data["resources"]),
            "secrets": tuple(data["secrets"]),
            # Plans written before `runs_on` existed have no key.
            "runs_on": tuple(data.get("runs_on") or ()),
            "artifacts": Artifacts(**{**data["artifacts"], "paths": tuple(data["artifacts"]["paths"])}),
            "deploy": freeze(data["deploy"]) if data.get("deploy") is not None else None,
        }
    )


def freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def plain(value: Any) -> Any:
    """Dataclasses, read-only mappings and tuples as JSON-ready dicts and lists."""
    if hasattr(value, "__dataclass_fields__"):
        return {name: plain(getattr(value, name)) for name in value.__dataclass_fields__}
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
