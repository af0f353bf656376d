"""Approval gates and deployment commands over the API (docs/server.md, "Deployments").

The same logic as `conveyor approve|reject|abort|rollback` (coordinator/deploy_control.py).
Who answered is always the token's name: a name in the request body is never read.
"""
from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from coordinator.deploy_control import COMMENT_MAX, ControlError, answer_gate, send_command
from coordinator.server.common import ApiError, Services, known_run, requires, services
from shared.tokens import Token

router = APIRouter()

# A refusal's HTTP status: a gate or job the run does not have is "not found"; an answer
# already given, a deployment already over, or a job that is no deployment are conflicts
# with the run's state (the request names something that exists, in a state that forbids it).
STATUS = {"unknown_gate": 404, "unknown_job": 404, "already_decided": 409, "ended": 409, "not_deployment": 409}


class Approval(BaseModel):
    decision: Literal["approve", "reject"]
    comment: str | None = Field(default=None, max_length=COMMENT_MAX)


def _refused(exc: ControlError) -> ApiError:
    # The code is the refusal's kind (`already_decided`, `unknown_gate`, ...): the CLI tells
    # "no such run" (not_found) from "no such gate" by it.
    return ApiError(STATUS[exc.kind], exc.kind, exc.message)


@router.post("/api/v1/runs/{run_id}/approvals/{gate}")
def approve_gate(run_id: str, gate: str, body: Approval, token: Token = Depends(requires("approve")),
                 svc: Services = Depends(services)) -> dict[str, Any]:
    """Approve or reject an approval gate; the first answer wins (409 afterwards)."""
    known_run(svc, run_id)
    try:
        answer = answer_gate(svc.settings, svc.store, run_id, gate, body.decision, token.name, body.comment)
    except ControlError as exc:
        raise _refused(exc) from None
    return answer.to_json()


@router.post("/api/v1/runs/{run_id}/deployments/{job}/abort", status_code=202)
def abort(run_id: str, job: str, token: Token = Depends(requires("approve")),
          svc: Services = Depends(services)) -> dict[str, Any]:
    """Queue an abort of a deployment job: stable version back at full weight, job failed."""
    return _command(svc, run_id, job, "abort", token)


@router.post("/api/v1/runs/{run_id}/deployments/{job}/rollback", status_code=202)
def rollback(run_id: str, job: str, token: Token = Depends(requires("approve")),
             svc: Services = Depends(services)) -> dict[str, Any]:
    """Queue a rollback of a deployment job (an abort while it is still in progress)."""
    return _command(svc, run_id, job, "rollback", token)


def _command(svc: Services, run_id: str, job: str, kind: Literal["abort", "rollback"], token: Token) -> dict[str, Any]:
    known_run(svc, run_id)
    try:
        result = send_command(svc.settings, svc.store, run_id, job, kind, token.name)
    except ControlError as exc:
        raise _refused(exc) from None
    return result.to_json()
