"""Configuration from `CONVEYOR_*` environment variables and an optional conveyor.toml.

The environment wins over the file. Nothing here imports Celery, boto3 or docker.
"""
from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit, urlunsplit

from shared.units import MIB, format_size, parse_duration, parse_size

GIB = 1024 * MIB

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
    # What a job may use on this worker (docs/configuration.md, "Job limits").
    "job_memory": "CONVEYOR_JOB_MEMORY",
    "job_memory_max": "CONVEYOR_JOB_MEMORY_MAX",
    "job_cpus": "CONVEYOR_JOB_CPUS",
    "job_cpus_max": "CONVEYOR_JOB_CPUS_MAX",
    "job_pids": "CONVEYOR_JOB_PIDS",
    "job_workspace_size": "CONVEYOR_JOB_WORKSPACE_SIZE",
    "job_log_size": "CONVEYOR_JOB_LOG_SIZE",
    "job_network": "CONVEYOR_JOB_NETWORK",
    "job_user": "CONVEYOR_JOB_USER",
    "job_read_only_root": "CONVEYOR_JOB_READ_ONLY_ROOT",
    "local_user": "CONVEYOR_LOCAL_USER",
    # The address people reach `conveyor server` at: commit statuses link to runs there.
    "public_url": "CONVEYOR_PUBLIC_URL",
}
# Only in conveyor.toml: structured settings no environment variable can hold.
_FILE_ONLY = {"retention", "environments", "repositories"}
# GitLab's default: artifacts without `expire_in` are kept 30 days.
DEFAULT_ARTIFACTS_EXPIRE_IN = 30 * 86400

# Job limits when the operator sets none (docs/configuration.md, "Job limits").
DEFAULT_JOB_PIDS = 1024
DEFAULT_JOB_WORKSPACE_SIZE = 10 * GIB
DEFAULT_JOB_LOG_SIZE = 100 * MIB
# The default memory of a job is the host's memory shared by the jobs running at once,
# but never more than this: a single build rarely needs more, and a leak should meet
# the OOM killer long before it makes the host swap.
DEFAULT_JOB_MEMORY_CAP = 8 * GIB
# ... nor less than this (Docker refuses limits under 6 MiB; real steps need far more).
MIN_JOB_MEMORY = 64 * MIB
JOB_NETWORKS = ("isolated", "none")
# `uid[:gid]`, numeric: a user *name* is resolved in the step's image, which the pipeline
# chooses, so `builder` could be uid 0 there.
NUMERIC_USER = re.compile(r"[0-9]+(:[0-9]+)?")


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
    # `[[repositories]]` tables: the repositories whose webhooks the server accepts
    # (coordinator/server/repositories.py reads them).
    repositories: tuple = ()
    # Job limits, the operator's (None: computed from the host, see `job_policy`).
    job_memory: int | None = None
    job_memory_max: int | None = None
    job_cpus: float | None = None
    job_cpus_max: float | None = None
    job_pids: int = DEFAULT_JOB_PIDS
    job_workspace_size: int = DEFAULT_JOB_WORKSPACE_SIZE
    job_log_size: int = DEFAULT_JOB_LOG_SIZE
    job_network: str = "isolated"
    job_user: str | None = None  # numeric uid[:gid]; None: the image's user
    job_read_only_root: bool = False
    local_user: str | None = None  # who runs local steps; None: the worker's user (see docs)
    public_url: str | None = None  # e.g. https://ci.example.com; None: http://HOST:PORT of the server

    def __repr__(self) -> str:
        # Celery's `inspect conf` and Flower's worker page print every conf key, this
        # object included, through repr: no password may come out here.
        shown = ", ".join(f"{f.name}={_redacted_setting(f.name, getattr(self, f.name))!r}"
                          for f in fields(self))
        return f"Settings({shown})"

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


@dataclass(frozen=True)
class JobPolicy:
    """What a job may use on this worker: the operator's limits, resolved for this host.

    A pipeline's `resources:` may ask for up to ``*_max``; without it a job gets the
    defaults. Pids, workspace and log size cannot be asked for: the value here is both.
    ``user`` is the uid[:gid] Docker steps run as when the job names none (None: the
    image's user); when it is set and not root, jobs may not ask for root.
    """

    memory_bytes: int
    memory_max_bytes: int
    cpus: float
    cpus_max: float
    pids: int = DEFAULT_JOB_PIDS
    workspace_bytes: int = DEFAULT_JOB_WORKSPACE_SIZE
    log_bytes: int = DEFAULT_JOB_LOG_SIZE
    network: str = "isolated"
    user: str | None = None
    read_only_root: bool = False
    local_user: str | None = None

    @property
    def allows_root(self) -> bool:
        """Whether a job may ask to run as uid 0 (the operator set no non-root user)."""
        return self.user is None or is_root_user(self.user)


def is_root_user(user: str) -> bool:
    """Whether the numeric ``uid[:gid]`` is uid 0."""
    return user.partition(":")[0].lstrip("0") == ""


def host_memory() -> int:
    """Bytes of RAM of this machine (a containerised worker sees the host's)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 4 * GIB  # not Linux-like: a modest guess, the operator can say better


def host_cpus() -> float:
    """CPUs this process may run on."""
    try:
        return float(len(os.sched_getaffinity(0)))
    except AttributeError:
        return float(os.cpu_count() or 1)


def job_policy(settings: Settings, concurrency: int, memory: int | None = None,
               cpus: float | None = None) -> JobPolicy:
    """The limits of every job of a worker running ``concurrency`` jobs at once.

    ``memory``/``cpus`` are the host's (measured when None). Defaults when the operator
    sets none: memory = host memory / concurrency, at most 8 GiB and at least 64 MiB;
    cpus = every CPU of the host; maxima = the whole host. Raises ConfigError (naming
    the variables) when a default is above its maximum.
    """
    memory = host_memory() if memory is None else memory
    cpus = host_cpus() if cpus is None else cpus
    memory_max = settings.job_memory_max or max(memory, settings.job_memory or 0)
    cpus_max = settings.job_cpus_max or max(cpus, settings.job_cpus or 0.0)
    if settings.job_memory is not None:
        memory_default = settings.job_memory
    else:
        share = min(memory // max(concurrency, 1), DEFAULT_JOB_MEMORY_CAP)
        memory_default = min(max(share, MIN_JOB_MEMORY), memory_max)
    cpus_default = settings.job_cpus if settings.job_cpus is not None else min(cpus, cpus_max)
    if memory_default > memory_max:
        raise ConfigError(f"CONVEYOR_JOB_MEMORY ({format_size(memory_default)}) is above "
                          f"CONVEYOR_JOB_MEMORY_MAX ({format_size(memory_max)}); lower one or raise the other")
    if cpus_default > cpus_max:
        raise ConfigError(f"CONVEYOR_JOB_CPUS ({cpus_default:g}) is above CONVEYOR_JOB_CPUS_MAX "
                          f"({cpus_max:g}); lower one or raise the other")
    return JobPolicy(
        memory_bytes=memory_default, memory_max_bytes=memory_max, cpus=cpus_default, cpus_max=cpus_max,
        pids=settings.job_pids, workspace_bytes=settings.job_workspace_size, log_bytes=settings.job_log_size,
        network=settings.job_network, user=settings.job_user, read_only_root=settings.job_read_only_root,
        local_user=settings.local_user,
    )


def _job_settings(values: dict[str, object]) -> None:
    """Parse the `job_*` and `local_user` settings in place; ConfigError naming the variable."""
    for key in ("job_memory", "job_memory_max", "job_workspace_size", "job_log_size"):
        if key in values:
            try:
                values[key] = parse_size(values[key], _KEYS[key])
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
    for key in ("job_cpus", "job_cpus_max", "job_pids"):
        if key in values:
            raw = values[key]
            try:
                number = (int if key == "job_pids" else float)(raw)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                number = 0
            if isinstance(raw, bool) or not number > 0:
                kind = "a whole number" if key == "job_pids" else "a number"
                raise ConfigError(f"{_KEYS[key]} must be {kind} above zero, got {raw!r}")
            values[key] = number
    for low, high in (("job_memory", "job_memory_max"), ("job_cpus", "job_cpus_max")):
        if low in values and high in values and values[low] > values[high]:  # type: ignore[operator]
            shown = format_size if low == "job_memory" else "{:g}".format
            raise ConfigError(f"{_KEYS[low]} ({shown(values[low])}) is above {_KEYS[high]} "  # type: ignore[operator]
                              f"({shown(values[high])}); lower one or raise the other")
    if "job_network" in values and values["job_network"] not in JOB_NETWORKS:
        raise ConfigError(f"CONVEYOR_JOB_NETWORK must be one of {', '.join(JOB_NETWORKS)}, "
                          f"got {values['job_network']!r}")
    if "job_user" in values and not NUMERIC_USER.fullmatch(str(values["job_user"])):
        raise ConfigError(f"CONVEYOR_JOB_USER must be a numeric uid or uid:gid (e.g. 1000:1000), "
                          f"got {values['job_user']!r}")
    if "job_read_only_root" in values:
        values["job_read_only_root"] = _flag(values["job_read_only_root"], "CONVEYOR_JOB_READ_ONLY_ROOT")
    if "local_user" in values:
        values["local_user"] = str(values["local_user"]).strip() or None


_SECRET_FIELD = re.compile(r"(auth|password|secret|token|key)", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with its credentials replaced by ``***`` (a username alone is kept).

    Never raises: text that does not parse as a URL but has ``user:pass@`` in it is
    still cut there, since it is going into a message or a repr.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc_end = len(rest)
    for stop in "/?#":
        index = rest.find(stop)
        if index != -1:
            netloc_end = min(netloc_end, index)
    netloc, tail = rest[:netloc_end], rest[netloc_end:]
    if "@" not in netloc:
        return url
    userinfo, host = netloc.rsplit("@", 1)
    user, colon, _ = userinfo.partition(":")
    shown = f"{user}:***" if colon else "***"
    return f"{scheme}://{shown}@{host}{tail}"


def _redacted_setting(name: str, value: object) -> object:
    """A setting as it may be shown: URLs without passwords, credentials as `***`."""
    if not value:
        return value
    if _SECRET_FIELD.search(name):
        if isinstance(value, str) and ":" in value and name.endswith("auth"):
            return value.split(":", 1)[0] + ":***"  # keep the user of user:password
        return "***"
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, Mapping):
        # Deploy targets may hold credentials in any key: show which there are, no values.
        return f"<{len(value)} table(s): {', '.join(map(str, value))}>"
    if isinstance(value, tuple) and value and all(isinstance(item, Mapping) for item in value):
        return f"<{len(value)} table(s)>"
    return value


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
    if "repositories" in values:
        raw = values["repositories"]
        if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
            raise ConfigError(f"{path}: `repositories` must be an array of tables ([[repositories]])")
        values["repositories"] = tuple(raw)
    if "environments" in values:
        raw = values["environments"]
        if not isinstance(raw, dict) or not all(isinstance(item, dict) for item in raw.values()):
            raise ConfigError(f"{path}: `environments` must be tables ([environments.NAME])")
    if "pipeline_environments" in values:
        values["pipeline_environments"] = _flag(values["pipeline_environments"], "CONVEYOR_PIPELINE_ENVIRONMENTS")
    _job_settings(values)
    if "data_dir" in values:
        values["data_dir"] = Path(str(values["data_dir"])).expanduser()
    if values.get("executor") not in (None, "docker", "local"):
        raise ConfigError(f"CONVEYOR_EXECUTOR must be 'docker' or 'local', got {values['executor']!r}")
    return Settings(**values)  # type: ignore[arg-type]

