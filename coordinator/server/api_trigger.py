"""`POST /api/v1/runs`: start a run of a configured repository at a branch or tag.

The ref is resolved to a commit by fetching it into the repository's mirror; the run
then takes the same path as a webhook's (coordinator/server/run_starter.py) with an
`api` event whose actor is the token's name. `on:` must allow it (`api: true`, or no
`on:` at all). A pipeline that does not load is answered 422 with its diagnostics and
starts nothing: the caller is there to read them.
"""
from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from coordinator.git_mirror import MirrorError, branch_ref, check_ref
from coordinator.server.common import ApiError, Services, requires, services
from coordinator.server.run_starter import StartError
from coordinator.triggers.events import api_event
from shared.tokens import Token

router = APIRouter()

MAX_VARS = 100
MAX_VAR_VALUE = 64 * 1024
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


class TriggerRequest(BaseModel):
    repository: str = Field(max_length=300, description="owner/name as configured in conveyor.toml")
    ref: str = Field(default="", max_length=1024,
                     description="a branch (`main`), or a full ref: refs/heads/<branch>, refs/tags/<tag>; "
                                 "default: the repository's default branch")
    vars: dict[str, str] = Field(default_factory=dict, description="pipeline parameters (`-v NAME=VALUE`)")


@router.post("/api/v1/runs", status_code=201, tags=["runs"])
def trigger(body: TriggerRequest, token: Token = Depends(requires("trigger")),
            svc: Services = Depends(services)) -> dict[str, Any]:
    """Start a run; 201 `{"run_id"}`, 422 with `file:line:col` diagnostics if the pipeline is invalid."""
    runtime = svc.runtime
    repository = runtime.repositories.named(body.repository)
    if repository is None:
        raise ApiError(404, "not_found", f"repository {body.repository!r} is not configured on this server")
    _check_vars(body.vars)
    try:
        ref = check_ref(body.ref) if body.ref.startswith("refs/") else branch_ref(body.ref or repository.default_branch)
        if not ref.startswith(("refs/heads/", "refs/tags/")):
            raise MirrorError(f"invalid ref {ref!r}: want a branch or a tag")
    except MirrorError as exc:
        raise ApiError(400, "bad_request", str(exc)) from None
    try:
        sha = runtime.starter.mirror(repository).fetch_ref(ref)
    except MirrorError as exc:
        # git's "couldn't find remote ref": the ref does not exist; anything else is the remote's fault.
        missing = "couldn't find remote ref" in str(exc).lower()
        raise ApiError(404 if missing else 502, "not_found" if missing else "unavailable",
                       f"{ref} of {repository.name}: {exc}") from None
    event = api_event(repository.name, ref, sha, token.name, default_branch=repository.default_branch)
    try:
        started = runtime.starter.start(repository, event, parameters=body.vars, record_invalid=False)
    except StartError as exc:
        raise ApiError(exc.status, "bad_request" if exc.status == 400 else "unavailable", str(exc)) from None
    if started.diagnostics:
        raise _Invalid(started.diagnostics, started.diagnostic_items)
    if not started.run_ids:
        raise ApiError(409, "conflict", f"the pipeline's `on:` does not start runs from the API ({started.ignored}); "
                                        "hint: add `api: true` under `on:`")
    return {"run_id": started.run_ids[0]}


def _check_vars(variables: dict[str, str]) -> None:
    if len(variables) > MAX_VARS:
        raise ApiError(400, "bad_request", f"at most {MAX_VARS} vars")
    for name, value in variables.items():
        if not _VAR_NAME.fullmatch(name):
            raise ApiError(400, "bad_request", f"vars: {name[:40]!r} is not a variable name (letters, digits, _)")
        if len(value) > MAX_VAR_VALUE or "\0" in value:
            raise ApiError(400, "bad_request", f"vars.{name}: longer than {MAX_VAR_VALUE} characters or contains NUL")


class _Invalid(ApiError):
    """422 with the diagnostics both as lines and as items (file, line, col, message, hint)."""

    def __init__(self, lines: tuple[str, ...], items: tuple[dict, ...]) -> None:
        super().__init__(422, "invalid", "the pipeline is invalid at that commit:\n" + "\n".join(lines))
        self.diagnostics = list(items)
