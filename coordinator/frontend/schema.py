"""The pipeline schema (cerberus) and the mapping of its errors onto source positions.

Validation is split in two: the top level, then each job on its own. Validating jobs one
by one keeps cerberus fast on pipelines with thousands of jobs and keeps each error's
path short and exact.
"""
from __future__ import annotations

from typing import Any, Iterable

import cerberus

from coordinator.frontend.diagnostics import Diagnostics
from shared.suggest import did_you_mean
from coordinator.frontend.fastcheck import conforms
from coordinator.frontend.yaml_source import Path, SourceMap
from shared.worker_labels import MAX_QUEUE_TIMEOUT

NAME_RE = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"
ENV_NAME_RE = r"[A-Za-z_][A-Za-z0-9_]*"
DURATION_RE = r"[1-9][0-9]*[smhd]"
MEMORY_RE = r"[1-9][0-9]*(\.[0-9]+)?[kmgKMG]?[bB]?"

SCALAR = ["string", "int", "number", "boolean"]
ENV_MAP = {"type": "dict", "keysrules": {"type": "string", "regex": ENV_NAME_RE}, "valuesrules": {"type": SCALAR}}
NAME_LIST = {"type": "list", "schema": {"type": "string"}}


def _int(lo: int, hi: int) -> dict:
    return {"type": "int", "min": lo, "max": hi}


RESOURCES = {
    "type": "dict",
    "schema": {
        "cpus": {"type": "number", "min": 0.01, "max": 1024},
        "memory": {"type": ["string", "int"], "regex": MEMORY_RE, "min": 4 * 1024 * 1024},
    },
}

STEP = {
    "name": {"type": "string", "required": True, "empty": False},
    "script": {"type": "list", "minlength": 1, "schema": {"type": "string"}},
    "action": {"type": "string", "empty": False},
    "image": {"type": "string", "empty": False},
    "environment": ENV_MAP,
    "working_directory": {"type": "string", "empty": False},
    "timeout": _int(1, 1800),
    "retry_count": _int(0, 3),
    "continue_on_failure": {"type": "boolean"},
}

HEALTH_CHECK = {
    "type": {"type": "string", "allowed": ["http", "tcp", "command"], "required": True},
    "path": {"type": "string"},
    "command": {"type": "string"},
    "interval": {"type": "number", "min": 0.1, "max": 3600},
    "timeout": {"type": "number", "min": 0.1, "max": 600},
    "success_threshold": _int(1, 100),
    "failure_threshold": _int(1, 100),
}

ENVIRONMENT = {
    "router": {
        "type": "dict",
        "required": True,
        "schema": {
            "type": {"type": "string", "allowed": ["haproxy"], "required": True},
            "admin": {"type": "string", "required": True, "regex": r"(unix|tcp)://.+"},
            "backend": {"type": "string", "required": True, "empty": False},
        },
    },
    "provider": {
        "type": "dict",
        "required": True,
        "schema": {
            "type": {"type": "string", "allowed": ["command", "docker"], "required": True},
            "start": {"type": "string"},
            "stop": {"type": "string"},
            "image": {"type": "string"},
            "port": _int(1, 65535),
            "docker_host": {"type": "string"},
            "network": {"type": "string", "empty": False},
            # Variables of provider and health commands (they never see the worker's own);
            # `pass_env` names worker variables and is the operator's only (docs/deployments.md).
            "env": {"type": "dict", "keysrules": {"type": "string", "regex": "[A-Za-z_][A-Za-z0-9_]*"},
                    "valuesrules": {"type": "string"}},
            "pass_env": {"type": "list", "schema": {"type": "string", "regex": "[A-Za-z_][A-Za-z0-9_]*"}},
        },
    },
    "instances": {
        "type": "list",
        "required": True,
        "minlength": 1,
        "schema": {
            "type": "dict",
            "schema": {
                "name": {"type": "string", "required": True, "regex": NAME_RE},
                "address": {"type": "string", "required": True, "regex": r"[^\s:]+:[0-9]{1,5}"},
            },
        },
    },
    "spare": {"type": "list", "schema": {"type": "string", "regex": r"[^\s:]+:[0-9]{1,5}"}},
    "health_check": {"type": "dict", "schema": HEALTH_CHECK},
}

CANARY_STEP = {
    "type": "dict",
    "minlength": 1,
    "maxlength": 1,
    "schema": {
        "set_weight": _int(0, 100),
        "pause": {"type": ["int", "dict"], "min": 0, "max": 86400, "schema": {}},
        "approval": {
            "type": "dict",
            "schema": {
                "name": {"type": "string", "required": True, "regex": NAME_RE},
                "timeout": _int(1, 604800),
                "on_timeout": {"type": "string", "allowed": ["abort", "promote"]},
            },
        },
    },
}

ANALYSIS = {
    "type": "dict",
    "schema": {
        "interval": {"type": "number", "min": 0.1, "max": 3600},
        "min_requests": _int(0, 10**9),
        "max_error_rate": {"type": "number", "min": 0, "max": 1},
        "max_p99_ms": {"type": "number", "min": 1, "max": 3600000},
        "failure_limit": _int(1, 100),
    },
}

DEPLOY = {
    "environment": {"type": "string", "required": True, "empty": False},
    "version": {"type": ["string", "int", "number"], "required": True},
    "strategy": {"type": "string", "required": True, "allowed": ["rolling", "blue_green", "canary"]},
    "rolling": {
        "type": "dict",
        "schema": {
            "batch_size": _int(1, 1000),
            "max_unavailable": _int(0, 1000),
            "max_surge": _int(0, 1000),
            "drain_timeout": _int(0, 3600),
            "progress_deadline": _int(1, 86400),
        },
    },
    "blue_green": {
        "type": "dict",
        "schema": {
            "auto_promote": {"type": "boolean"},
            "promote_after": _int(0, 86400),
            "pre_promotion_analysis": {"type": "boolean"},
            "keep_old_for": _int(0, 86400),
            "analysis": ANALYSIS,
        },
    },
    "canary": {
        "type": "dict",
        "schema": {
            "steps": {"type": "list", "minlength": 1, "schema": CANARY_STEP},
            "analysis": ANALYSIS,
        },
    },
    "rollback_on_failure": {"type": "boolean"},
}

RUNS_ON = {"type": ["string", "list"], "empty": False, "schema": {"type": "string"}}
QUEUE_TIMEOUT = {"type": ["string", "int"], "regex": DURATION_RE, "min": 1, "max": MAX_QUEUE_TIMEOUT}

JOB = {
    "steps": {"type": "list", "minlength": 1, "schema": {"type": "dict", "schema": STEP}},
    "deploy": {"type": "dict", "schema": DEPLOY},
    "depends_on": NAME_LIST,
    "image": {"type": "string", "empty": False},
    "environment": ENV_MAP,
    "artifacts": {
        "type": "dict",
        "schema": {
            "paths": {"type": "list", "schema": {"type": "string", "empty": False}},
            "expire_in": {"type": "string", "regex": DURATION_RE},
            "name": {"type": "string", "regex": NAME_RE},
        },
    },
    "timeout": _int(1, 3600),
    "retry_count": _int(0, 5),
    "conditional": {"type": "string", "empty": False},
    "allow_failure": {"type": "boolean"},
    "matrix": {
        "type": "dict",
        "minlength": 1,
        "keysrules": {"type": "string", "regex": ENV_NAME_RE},
        "valuesrules": {"type": "list", "minlength": 1, "schema": {"type": SCALAR}},
    },
    "resources": RESOURCES,
    "secrets": {"type": "list", "schema": {"type": "string", "regex": ENV_NAME_RE}},
    # Docker steps' user, numeric only (a name means what the image says; docs/pipeline-format.md).
    "user": {"type": ["string", "int"], "regex": r"[0-9]+(:[0-9]+)?", "min": 0},
    "read_only_root": {"type": "boolean"},
    # Worker labels (docs/pipeline-format.md, "Worker labels"): each label's syntax is
    # semantic.py's (after substitution, the compiler's), so `runs_on: ${{ env.OS }}` works.
    "runs_on": RUNS_ON,
    "queue_timeout": QUEUE_TIMEOUT,
}

PIPELINE = {
    "name": {"type": "string", "required": True, "regex": NAME_RE},
    "jobs": {"type": "dict", "required": True, "minlength": 1, "keysrules": {"type": "string", "regex": NAME_RE}},
    "global_env": ENV_MAP,
    "timeout": _int(1, 86400),
    "retry_policy": {
        "type": "dict",
        "schema": {
            "max_attempts": _int(1, 6),
            "backoff_base": {"type": "number", "min": 0, "max": 3600},
            "backoff_max": {"type": "number", "min": 0, "max": 86400},
        },
    },
    "defaults": {
        "type": "dict",
        "schema": {
            "image": {"type": "string", "empty": False},
            "timeout": _int(1, 3600),
            "retry_count": _int(0, 5),
            "environment": ENV_MAP,
            "resources": RESOURCES,
            "runs_on": RUNS_ON,
            "queue_timeout": QUEUE_TIMEOUT,
        },
    },
    "triggers": {"type": "list", "schema": {"type": "dict"}},
    # Which events start the pipeline. Its contents are checked by the trigger logic's own
    # parser (coordinator/triggers/filters.parse_on, called by frontend/on_section.py), so
    # the server and the front end can never disagree on what a valid `on:` is.
    "on": {"nullable": True},
    # `concurrency: NAME` is short for `{group: NAME}`, as in GitHub Actions. The group is
    # substituted like `environments:` (compiler.compile_concurrency).
    "concurrency": {
        "type": ["string", "dict"],
        "empty": False,
        "schema": {
            "group": {"type": "string", "required": True, "empty": False},
            "cancel_in_progress": {"type": "boolean"},
        },
    },
    "environments": {
        "type": "dict",
        "keysrules": {"type": "string", "regex": NAME_RE},
        "valuesrules": {"type": "dict", "schema": ENVIRONMENT},
    },
}

TYPE_NAMES = {
    "string": "a string",
    "int": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "dict": "a mapping",
    "list": "a list",
}


class _Validator(cerberus.Validator):
    # cerberus counts booleans as integers; YAML users mean `timeout: true` as a mistake.
    types_mapping = {
        **cerberus.Validator.types_mapping,
        "int": cerberus.TypeDefinition("int", (int,), (bool,)),
        "number": cerberus.TypeDefinition("number", (int, float), (bool,)),
    }


_pipeline_validator = _Validator(PIPELINE, allow_unknown=False)
_job_validator = _Validator(JOB, allow_unknown=False)


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def field_path(path: Path) -> str:
    """`jobs.build.steps[0].timeout` for ('jobs', 'build', 'steps', 0, 'timeout')."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<document>"


def _leaf_errors(errors: Iterable[cerberus.errors.ValidationError]) -> Iterable[cerberus.errors.ValidationError]:
    for error in errors:
        if error.is_group_error:
            yield from _leaf_errors(error.child_errors)
        else:
            yield error


def _allowed_keys(schema: dict, path: Path) -> list[str]:
    """The field names the schema allows in the mapping at ``path`` (for "did you mean")."""
    rules: dict = {"type": "dict", "schema": schema}
    for part in path:
        sub = rules.get("schema")
        if isinstance(part, int) or rules.get("type") == "list":
            rules = sub if isinstance(sub, dict) else {}
        elif isinstance(sub, dict) and part in sub:
            rules = sub[part]
        elif "valuesrules" in rules:
            rules = rules["valuesrules"]
        else:
            return []
    sub = rules.get("schema")
    return sorted(sub) if isinstance(sub, dict) else []


def substituted_later(path: Path) -> bool:
    """Whether the value at `path` is checked again after variable substitution: the
    fields of a job's `deploy:` and of `environments:` (see `validate_substituted`)."""
    return (len(path) > 3 and path[0] == "jobs" and path[2] == "deploy") or (len(path) > 2 and path[0] == "environments")


def _deferred(path: Path, rule: str, value: Any) -> bool:
    # `strategy: ${STRATEGY}` is not one of the allowed values until it is substituted;
    # the compiler checks the substituted value (validate_substituted) instead. Mapping
    # keys (an environment's name) are never substituted: those are checked now.
    return (rule in ("allowed", "regex") and isinstance(value, str) and "$" in value and substituted_later(path)
            and path[-1] != value)


def _report(error: Any, base: Path, schema: dict, source: SourceMap, out: Diagnostics,
            substituted: bool = False) -> None:
    path: Path = tuple(base) + tuple(error.document_path)
    rule, constraint, value = error.rule, error.constraint, error.value
    if not substituted and _deferred(path, rule, value):
        return
    where = field_path(path) + (" (after substitution)" if substituted else "")
    if error.code == cerberus.errors.UNKNOWN_FIELD.code:
        name = path[-1]
        parent = path[:-1]
        hint = did_you_mean(str(name), _allowed_keys(schema, tuple(error.document_path)[:-1]))
        owner = field_path(parent)
        out.error(source.key(path) or source.nearest(path), f"unknown field '{name}' in {owner}", hint)
        return
    if rule == "required":
        parent = path[:-1]
        out.error(source.nearest(parent), f"{field_path(parent)}: missing required field '{path[-1]}'")
        return
    position = source.nearest(path)
    if rule == "keysrules":
        return  # reported through its child errors
    if rule == "type":
        wanted = constraint if isinstance(constraint, list) else [constraint]
        names = " or ".join(TYPE_NAMES.get(t, t) for t in wanted)
        hint = None
        if "string" in wanted and isinstance(value, (bool, int, float)):
            hint = f"quote it to make it text: '{_describe(value)}'"
        out.error(position, f"{where}: must be {names}, got {_describe(value)}", hint)
    elif rule == "min":
        out.error(position, f"{where}: must be at least {_describe(constraint)}, got {_describe(value)}")
    elif rule == "max":
        out.error(position, f"{where}: must be at most {_describe(constraint)}, got {_describe(value)}")
    elif rule == "minlength":
        out.error(position, f"{where}: must have at least {constraint} item{'s' if constraint != 1 else ''}")
    elif rule == "maxlength":
        out.error(position, f"{where}: must have at most {constraint} item{'s' if constraint != 1 else ''}")
    elif rule == "empty":
        out.error(position, f"{where}: must not be empty")
    elif rule == "allowed":
        hint = did_you_mean(str(value), [str(c) for c in constraint])
        options = ", ".join(str(c) for c in constraint)
        out.error(position, f"{where}: {_describe(value)} is not one of: {options}", hint)
    elif rule == "regex":
        if source.key(path) and isinstance(path[-1], str) and path[-1] == value:
            position = source.key(path)  # an invalid mapping key: point at the key itself
        out.error(position, f"{where}: {_describe(value)} does not match {constraint}")
    else:
        out.error(position, f"{where}: invalid value {_describe(value)} ({rule})")


def _run(validator: _Validator, schema: dict, document: Any, base: Path, source: SourceMap, out: Diagnostics) -> None:
    if conforms(schema, document):
        return  # the common case, without cerberus's per-mapping child validators
    # normalize=False: we only check; normalising copies and re-validates the schema per call
    validator.validate(document, normalize=False)
    for error in _leaf_errors(validator._errors):
        _report(error, base, schema, source, out)


_deploy_validator = _Validator(DEPLOY, allow_unknown=False)
_environment_validator = _Validator(ENVIRONMENT, allow_unknown=False)


def validate_substituted(section: str, value: Any, base: Path, source: SourceMap, out: Diagnostics) -> bool:
    """Check a `deploy:` block (`section="deploy"`) or one environment (`"environment"`)
    after variable substitution, reporting at the fields' own positions (`base` is where
    the section is written). False when it has errors."""
    if section == "deploy":
        validator, schema = _deploy_validator, DEPLOY
    else:
        validator, schema = _environment_validator, ENVIRONMENT
    before = len(out.errors)
    if isinstance(value, dict):
        validator.validate(value, normalize=False)
        for error in _leaf_errors(validator._errors):
            _report_substituted(error, base, schema, source, out)
    return len(out.errors) == before


def _report_substituted(error: Any, base: Path, schema: dict, source: SourceMap, out: Diagnostics) -> None:
    # Only what substitution can change: the values checked by `allowed` and `regex`.
    # Everything else was reported (once) by the schema stage.
    if error.rule in ("allowed", "regex") and isinstance(error.value, str):
        _report(error, base, schema, source, out, substituted=True)


def _string_keys(value: Any, path: Path, source: SourceMap, out: Diagnostics) -> Any:
    """A copy without non-string mapping keys (each reported): cerberus cannot sort them."""
    stack = [(value, path)]
    found = False
    while stack:
        node, where = stack.pop()
        if isinstance(node, dict):
            for key in [k for k in node if not isinstance(k, str)]:
                found = True
                out.error(source.key(where + (key,)) or source.nearest(where),
                          f"{field_path(where)}: mapping key {_describe(key)} must be text", "quote it")
            stack.extend((v, where + (k,)) for k, v in node.items() if isinstance(k, str))
        elif isinstance(node, list):
            stack.extend((v, where + (i,)) for i, v in enumerate(node))
    return _without_bad_keys(value) if found else value


def _without_bad_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_bad_keys(v) for k, v in value.items() if isinstance(k, str)}
    if isinstance(value, list):
        return [_without_bad_keys(v) for v in value]
    return value


def validate_schema(data: Any, source: SourceMap, out: Diagnostics) -> bool:
    """Check ``data`` against the pipeline schema, adding one diagnostic per problem."""
    before = len(out.errors)
    if not isinstance(data, dict):
        out.error(source.nearest(()), f"a pipeline must be a mapping, got {_describe(data)}")
        return False
    data = _string_keys(data, (), source, out)
    top = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("."))}
    jobs = top.get("jobs")
    _run(_pipeline_validator, PIPELINE, {**top, "jobs": jobs} if not isinstance(jobs, dict) else {**top, "jobs": {k: {} for k in jobs}}, (), source, out)
    if isinstance(jobs, dict):
        for name, job in jobs.items():
            path = ("jobs", name)
            if not isinstance(job, dict):
                out.error(source.nearest(path), f"jobs.{name}: a job must be a mapping, got {_describe(job)}")
                continue
            _run(_job_validator, JOB, job, path, source, out)
    return len(out.errors) == before
