"""Configuration from `CONVEYOR_*` environment variables and an optional conveyor.toml.

The environment wins over the file. Nothing here imports Celery, boto3 or docker.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit, urlunsplit

from shared.units import parse_duration

# Longest job (3600 s) plus its retries' backoff and start-up, with a wide margin: a
# message must not be redelivered while its job may legitimately still run. The lease in
# the state store makes an early redelivery harmless, this keeps it rare.
DEFAULT_VISIBILITY_TIMEOUT = 2 * 3600
# Longer than the longest pipeline (86400 s) so chord counters never vanish mid-run.
RESULT_EXPIRES = 2 * 86400

_KEYS = {
    "broker_url": "CONVEYOR_BROKER_URL",
    "result_backend": "CONVEYOR_RESULT_BACKEND",
    "state_url": "CONVEYOR_STATE_URL",
    "artifacts_url": "CONVEYOR_ARTIFACTS_URL",
    "s3_endpoint_url": "CONVEYOR_S3_ENDPOINT_URL",
    "executor": "CONVEYOR_EXECUTOR",
    "data_dir": "CONVEYOR_DATA_DIR",
    "visibility_timeout": "CONVEYOR_VISIBILITY_TIMEOUT",
    "metrics_port": "CONVEYOR_METRICS_PORT",
    "flower_auth": "CONVEYOR_FLOWER_AUTH",
    "lease_seconds": "CONVEYOR_LEASE_SECONDS",
    "gc_interval": "CONVEYOR_GC_INTERVAL",
    "artifacts_expire_in": "CONVEYOR_ARTIFACTS_EXPIRE_IN",
    "pipeline_environments": "CONVEYOR_PIPELINE_ENVIRONMENTS",
}
# Only in conveyor.toml: structured settings no environment variable can hold.
_FILE_ONLY = {"retention", "environments"}
# GitLab's default: artifacts without `expire_in` are kept 30 days.
DEFAULT_ARTIFACTS_EXPIRE_IN = 30 * 86400


class ConfigError(ValueError):
    pass


def _redis_db_plus_one(url: str) -> str:
    parts = urlsplit(url)
    path = parts.path.strip("/")
    db = int(path) if path.isdigit() else 0
    return urlunsplit((parts.scheme, parts.netloc, f"/{db + 1}", parts.query, parts.fragment))


@dataclass(frozen=True)
class Settings:
    broker_url: str | None = None
    result_backend: str | None = None
    state_url: str | None = None
    artifacts_url: str | None = None
    s3_endpoint_url: str | None = None
    executor: str | None = None
    data_dir: Path = field(default_factory=lambda: Path.home() / ".local" / "share" / "conveyor")
    visibility_timeout: int = DEFAULT_VISIBILITY_TIMEOUT
    metrics_port: int | None = None
    flower_auth: str | None = None
    lease_seconds: float = 30.0
    gc_interval: float = 3600.0  # seconds between artifact collections on a worker; 0 = never
    artifacts_expire_in: int = DEFAULT_ARTIFACTS_EXPIRE_IN  # seconds; 0 = kept until a policy says
    retention: tuple = ()  # raw `[[retention]]` tables, parsed by shared.artifacts.retention
    # Deploy targets, `[environments.NAME]` tables (deploy/config.py reads them): the
    # operator's, which a pipeline's deploy job names.
    environments: Mapping[str, Mapping] = field(default_factory=dict)
    # May a pipeline define its own `environments:`? None: only in embedded mode (one's own
    # machine), never on a worker with a broker.
    pipeline_environments: bool | None = None

    @property
    def accepts_pipeline_environments(self) -> bool:
        """Whether deploy targets defined by a pipeline may run on this worker."""
        return self.embedded if self.pipeline_environments is None else self.pipeline_environments

    @property
    def embedded(self) -> bool:
        """No broker configured: run everything in this process."""
        return not self.broker_url

    @property
    def effective_result_backend(self) -> str:
        if self.result_backend:
            return self.result_backend
        if self.embedded:
            return "shared.memory_backend:ProcessMemoryBackend"
        return _redis_db_plus_one(self.broker_url or "")

    @property
    def effective_state_url(self) -> str:
        if self.state_url:
            return self.state_url
        if self.embedded:
            return f"sqlite:///{self.data_dir / 'state.db'}"
        return self.broker_url or ""

    @property
    def effective_artifacts_url(self) -> str:
        return self.artifacts_url or f"file://{self.data_dir / 'artifacts'}"


def _flag(value: object, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def load_settings(environ: Mapping[str, str] | None = None, config_file: str | Path | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {}
    # CONVEYOR_CONFIG names the file (a worker's or a container's); else ./conveyor.toml.
    named = config_file or environ.get("CONVEYOR_CONFIG")
    path = Path(named) if named else Path("conveyor.toml")
    if named or path.is_file():
        try:
            with open(path, "rb") as handle:
                values.update(tomllib.load(handle))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
    for key, var in _KEYS.items():
        if environ.get(var):
            values[key] = environ[var]
    unknown = set(values) - set(_KEYS) - _FILE_ONLY
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(sorted(unknown))}; known: {', '.join(_KEYS)}")
    try:
        for key in ("visibility_timeout", "metrics_port"):
            if key in values:
                values[key] = int(values[key])  # type: ignore[arg-type]
        for key in ("lease_seconds", "gc_interval"):
            if key in values:
                values[key] = float(values[key])  # type: ignore[arg-type]
        if "artifacts_expire_in" in values:
            raw = values["artifacts_expire_in"]
            values["artifacts_expire_in"] = 0 if str(raw).strip() == "0" else int(
                parse_duration(raw, "CONVEYOR_ARTIFACTS_EXPIRE_IN"))
    except ValueError as exc:
        raise ConfigError(f"invalid number in configuration: {exc}") from None
    if "retention" in values:
        raw = values["retention"]
        if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
            raise ConfigError(f"{path}: `retention` must be an array of tables ([[retention]])")
        values["retention"] = tuple(raw)
    if "environments" in values:
        raw = values["environments"]
        if not isinstance(raw, dict) or not all(isinstance(item, dict) for item in raw.values()):
            raise ConfigError(f"{path}: `environments` must be tables ([environments.NAME])")
    if "pipeline_environments" in values:
        values["pipeline_environments"] = _flag(values["pipeline_environments"], "CONVEYOR_PIPELINE_ENVIRONMENTS")
    if "data_dir" in values:
        values["data_dir"] = Path(str(values["data_dir"])).expanduser()
    if values.get("executor") not in (None, "docker", "local"):
        raise ConfigError(f"CONVEYOR_EXECUTOR must be 'docker' or 'local', got {values['executor']!r}")
    return Settings(**values)  # type: ignore[arg-type]

