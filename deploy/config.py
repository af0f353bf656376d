"""A deployment's configuration: the job's `deploy:` section joined with its environment, defaults applied.

The schema (coordinator/frontend/schema.py) has already checked types and ranges; this
module turns the plain mappings into typed values and checks the combinations only a
deployment can judge (a canary needs a free address, rolling needs surge or unavailability).
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping


class DeployConfigError(ValueError):
    """The deployment cannot run as configured (reported as the job's failure).

    Named apart from shared.config.ConfigError (bad Conveyor settings), so that an import
    or an `except` clause says which of the two it means.
    """




@dataclass(frozen=True)
class RouterConfig:
    type: str
    admin: str  # unix:///path or tcp://host:port
    backend: str


@dataclass(frozen=True)
class ProviderConfig:
    type: str  # command | docker
    start: str | None = None
    stop: str | None = None
    image: str | None = None
    port: int | None = None
    docker_host: str | None = None
    network: str = "bridge"  # docker: bridge (publish `port` on the address) | host ($PORT = the address's port)
    # The environment of provider and health commands beyond PATH and CONVEYOR_DEPLOY_*:
    # literal values, and names of the worker's own variables to pass (operator only).
    env: tuple[tuple[str, str], ...] = ()
    pass_env: tuple[str, ...] = ()


@dataclass(frozen=True)
class HealthConfig:
    type: str = "tcp"
    path: str = "/"
    command: str | None = None
    interval: float = 2.0
    timeout: float = 1.0
    # Kubernetes' readiness defaults: one pass to be ready, three failures to be unhealthy.
    success_threshold: int = 1
    failure_threshold: int = 3


@dataclass(frozen=True)
class Slot:
    """An address an instance can run on, and the router server name that points at it."""

    name: str
    address: str
    kind: str  # instance | spare


@dataclass(frozen=True)
class RollingConfig:
    batch_size: int = 1
    max_unavailable: int = 0
    max_surge: int = 1
    drain_timeout: float = 30.0
    progress_deadline: float = 600.0


@dataclass(frozen=True)
class BlueGreenConfig:
    auto_promote: bool = True
    promote_after: float = 0.0
    pre_promotion_analysis: bool = False
    keep_old_for: float = 300.0
    analysis: "AnalysisConfig | None" = None  # thresholds of the pre-promotion analysis


@dataclass(frozen=True)
class AnalysisConfig:
    interval: float = 5.0
    min_requests: int = 20
    max_error_rate: float = 0.01
    max_p99_ms: float = 500.0
    failure_limit: int = 2


@dataclass(frozen=True)
class Gate:
    """An approval gate; `timeout` None waits for ever."""

    name: str
    timeout: float | None = None
    on_timeout: str = "abort"  # abort | promote


@dataclass(frozen=True)
class CanaryStep:
    kind: str  # set_weight | pause | gate
    weight: int = 0
    seconds: float = 0.0
    gate: Gate | None = None


@dataclass(frozen=True)
class CanaryConfig:
    steps: tuple[CanaryStep, ...] = ()
    analysis: AnalysisConfig | None = None


@dataclass(frozen=True)
class DeployConfig:
    """Everything one deployment job needs, resolved."""

    environment: str
    version: str
    strategy: str
    router: RouterConfig
    provider: ProviderConfig
    instances: tuple[Slot, ...]
    spare: tuple[Slot, ...]
    health: HealthConfig
    rolling: RollingConfig = field(default_factory=RollingConfig)
    blue_green: BlueGreenConfig = field(default_factory=BlueGreenConfig)
    canary: CanaryConfig = field(default_factory=CanaryConfig)
    rollback_on_failure: bool = True

    @property
    def slots(self) -> tuple[Slot, ...]:
        return self.instances + self.spare

    @property
    def env_key(self) -> str:
        """Identity of the environment's live traffic: the router backend, not the YAML name.

        Two pipelines that name the same HAProxy backend differently still share it.
        """
        return hashlib.sha1(f"{self.router.admin}|{self.router.backend}".encode()).hexdigest()[:16]

    @property
    def analysis(self) -> AnalysisConfig:
        """Thresholds for canary analysis and blue-green pre-promotion analysis."""
        if self.strategy == "blue_green" and self.blue_green.analysis is not None:
            return self.blue_green.analysis
        return self.canary.analysis or AnalysisConfig()

    def gates(self) -> list[str]:
        """Names `conveyor approve` accepts for this job."""
        names = [step.gate.name for step in self.canary.steps if step.gate is not None] if self.strategy == "canary" else []
        if self.strategy == "blue_green" and not self.blue_green.auto_promote:
            names.append(PROMOTE_GATE)
        return names

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PROMOTE_GATE = "promote"
SPARE_PREFIX = "spare"


def _take(data: Mapping[str, Any] | None, cls: type, **rename: str) -> Any:
    values = {rename.get(k, k): v for k, v in dict(data or {}).items() if rename.get(k, k) in cls.__dataclass_fields__}
    return cls(**values)


def _blue_green(raw: Mapping[str, Any] | None) -> BlueGreenConfig:
    raw = dict(raw or {})
    analysis = raw.pop("analysis", None)
    config = _take(raw, BlueGreenConfig)
    return replace(config, analysis=_take(analysis, AnalysisConfig)) if analysis else config


def _canary_steps(raw: Any) -> tuple[CanaryStep, ...]:
    steps = []
    for index, item in enumerate(raw or ()):
        if "set_weight" in item:
            steps.append(CanaryStep("set_weight", weight=int(item["set_weight"])))
        elif "pause" in item:
            pause = item["pause"]
            if isinstance(pause, Mapping):
                # `pause: {}` waits for a human, like Argo's indefinite pause; its gate is named by position.
                steps.append(CanaryStep("gate", gate=Gate(f"pause-{index + 1}")))
            else:
                steps.append(CanaryStep("pause", seconds=float(pause)))
        elif "approval" in item:
            gate = item["approval"]
            timeout = gate.get("timeout")
            steps.append(CanaryStep("gate", gate=Gate(str(gate["name"]), float(timeout) if timeout else None,
                                                      str(gate.get("on_timeout", "abort")))))
    return tuple(steps)


# What a provider may be told only by the operator: where the engine is, which network
# instances join, and which of the worker's own variables its commands see.
OPERATOR_ONLY_PROVIDER_KEYS = ("docker_host", "network", "pass_env")


def deploy_gates(deploy: Mapping[str, Any]) -> list[str]:
    """The gate names of a job's `deploy:` section (what `conveyor approve` accepts for it),
    read from the section alone: the environment may be defined only on the deploy workers."""
    strategy = str(deploy.get("strategy", ""))
    if strategy == "canary":
        steps = _canary_steps((deploy.get("canary") or {}).get("steps"))
        return [step.gate.name for step in steps if step.gate is not None]
    if strategy == "blue_green" and not _blue_green(deploy.get("blue_green")).auto_promote:
        return [PROMOTE_GATE]
    return []


def environment_definition(name: str, pipeline: Mapping[str, Any], operator: Mapping[str, Any],
                           pipeline_allowed: bool) -> Mapping[str, Any]:
    """The definition of environment ``name``: the operator's if it has one (conveyor.toml
    `[environments.NAME]` of the deploy workers), else the pipeline's where the operator
    lets pipelines define environments. DeployConfigError says which and how to fix it."""
    if name in operator:
        return operator[name]
    if name not in pipeline:
        known = sorted(set(operator) | (set(pipeline) if pipeline_allowed else set()))
        raise DeployConfigError(f"unknown environment {name!r}" + (f" (known: {', '.join(known)})" if known else
                                " (the operator defines environments in conveyor.toml: [environments.NAME])"))
    if not pipeline_allowed:
        raise DeployConfigError(
            f"environment {name!r} is defined by the pipeline, and this worker runs only environments its "
            f"operator defines: add [environments.{name}] to the deploy workers' conveyor.toml, or set "
            "CONVEYOR_PIPELINE_ENVIRONMENTS=true where every pipeline author is trusted with the workers")
    provider = pipeline[name].get("provider") or {}
    for key in OPERATOR_ONLY_PROVIDER_KEYS:
        if key in provider and not (key == "network" and provider[key] == "bridge"):
            raise DeployConfigError(f"environment {name!r}: provider.{key} can only be set by the operator "
                                    f"([environments.{name}] in conveyor.toml), not by a pipeline")
    return pipeline[name]


def _provider(raw: Mapping[str, Any]) -> ProviderConfig:
    values = dict(raw)
    env = values.pop("env", None) or {}
    if not isinstance(env, Mapping):
        raise DeployConfigError("provider.env must be a table of NAME = value")
    pass_env = values.pop("pass_env", None) or ()
    provider = _take(values, ProviderConfig)
    return replace(provider, env=tuple(sorted((str(k), str(v)) for k, v in env.items())),
                   pass_env=tuple(str(name) for name in pass_env))


def load_config(deploy: Mapping[str, Any], environments: Mapping[str, Any], operator: Mapping[str, Any] | None = None,
                pipeline_allowed: bool = True) -> DeployConfig:
    """The typed configuration of a job's `deploy:` section; DeployConfigError when it cannot run.

    ``environments`` are the pipeline's, ``operator`` the worker's (they win); a pipeline's
    own are used only when ``pipeline_allowed`` (see ``environment_definition``).
    """
    env_name = str(deploy["environment"])
    env = environment_definition(env_name, environments, operator or {}, pipeline_allowed)
    router = _take(env["router"], RouterConfig)
    provider = _provider(env["provider"])
    instances = tuple(Slot(str(i["name"]), str(i["address"]), "instance") for i in env["instances"])
    spare = tuple(Slot(f"{SPARE_PREFIX}{n + 1}", str(a), "spare") for n, a in enumerate(env.get("spare") or ()))
    health = _take(env.get("health_check"), HealthConfig)
    canary_raw = deploy.get("canary") or {}
    analysis = _take(canary_raw["analysis"], AnalysisConfig) if canary_raw.get("analysis") is not None else None
    config = DeployConfig(
        environment=env_name,
        version=str(deploy["version"]),
        strategy=str(deploy["strategy"]),
        router=router,
        provider=provider,
        instances=instances,
        spare=spare,
        health=health,
        rolling=_take(deploy.get("rolling"), RollingConfig),
        blue_green=_blue_green(deploy.get("blue_green")),
        canary=CanaryConfig(_canary_steps(canary_raw.get("steps")), analysis),
        rollback_on_failure=bool(deploy.get("rollback_on_failure", True)),
    )
    check(config)
    return config


def check(config: DeployConfig) -> None:
    """Combinations the schema cannot see."""
    names = [slot.name for slot in config.slots]
    if len(set(names)) != len(names):
        raise DeployConfigError(f"instance names collide with spare slot names ({SPARE_PREFIX}N): {names}")
    addresses = [slot.address for slot in config.slots]
    if len(set(addresses)) != len(addresses):
        raise DeployConfigError("an address is listed twice among instances and spare")
    if config.provider.type == "command" and not config.provider.start:
        raise DeployConfigError("provider 'command' needs a 'start' command")
    if config.provider.type == "docker" and (not config.provider.image or not config.provider.port):
        raise DeployConfigError("provider 'docker' needs 'image' and 'port'")
    if config.health.type == "command" and not config.health.command:
        raise DeployConfigError("health_check type 'command' needs a 'command'")
    if config.strategy == "rolling":
        r = config.rolling
        if r.max_surge == 0 and r.max_unavailable == 0:
            raise DeployConfigError("rolling needs max_surge >= 1 or max_unavailable >= 1, or it can never replace an instance")
    if config.strategy == "blue_green" and len(config.spare) < len(config.instances):
        raise DeployConfigError(f"blue_green needs as many spare addresses as instances ({len(config.instances)}), "
                          f"got {len(config.spare)}")
    if config.strategy == "canary":
        if not config.spare:
            raise DeployConfigError("canary needs a spare address for the canary instance")
        if not config.canary.steps:
            raise DeployConfigError("canary needs at least one step")


def _provider_from_dict(data: Mapping[str, Any]) -> ProviderConfig:
    values = dict(data)
    values["env"] = tuple((str(k), str(v)) for k, v in values.get("env") or ())
    values["pass_env"] = tuple(values.get("pass_env") or ())
    return ProviderConfig(**values)


def config_from_dict(data: Mapping[str, Any]) -> DeployConfig:
    """The inverse of DeployConfig.to_dict (a persisted record carries its config)."""
    canary = data["canary"]
    steps = tuple(
        CanaryStep(s["kind"], s["weight"], s["seconds"], Gate(**s["gate"]) if s.get("gate") else None)
        for s in canary["steps"]
    )
    return DeployConfig(
        environment=data["environment"],
        version=data["version"],
        strategy=data["strategy"],
        router=RouterConfig(**data["router"]),
        provider=_provider_from_dict(data["provider"]),
        instances=tuple(Slot(**s) for s in data["instances"]),
        spare=tuple(Slot(**s) for s in data["spare"]),
        health=HealthConfig(**data["health"]),
        rolling=RollingConfig(**data["rolling"]),
        blue_green=_blue_green(data["blue_green"]),
        canary=CanaryConfig(steps, AnalysisConfig(**canary["analysis"]) if canary.get("analysis") else None),
        rollback_on_failure=data["rollback_on_failure"],
    )
