"""`POST /hooks/{github,gitlab,gitea}`: forge deliveries, verified, deduplicated, turned into runs.

Order matters, and each step refuses before the next one sees the input:

1. size: more than 5 MiB is 413, read no further;
2. authenticity, on the raw bytes: the delivery must verify with the secret of some
   configured repository of that forge, else 401 (the body is never parsed as JSON
   before this: the repository it names cannot be trusted yet);
3. JSON and the event's fields (400 with the field named);
4. the repository the payload names must be configured (404) and its own secret must be
   one that verified the delivery (401): a secret shared by several repositories, as an
   organisation webhook has, is fine; one repository's secret cannot speak for another;
5. the delivery id: a redelivery gets the first answer and starts nothing new;
6. the run (coordinator/server/run_starter.py).

When Redis (or the embedded state file) cannot be reached, the answer is 503 and the
forge redelivers later: a delivery is never acknowledged without having been acted on.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any, Callable

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from coordinator.server.common import ApiError, error_response
from coordinator.server.repositories import Repository
from coordinator.server.run_starter import StartError, Started
from coordinator.triggers.events import Ignored, ParseResult, PayloadError, from_gitea, from_github, from_gitlab
from coordinator.triggers.signatures import verify_gitea, verify_github, verify_gitlab

log = logging.getLogger("conveyor.server.hooks")

MAX_BODY_BYTES = 5 * 1024 * 1024
# Forges redeliver for days (GitHub keeps deliveries 3 days): remember answers a week.
DELIVERY_TTL_S = 7 * 86400
PENDING = "pending"
# A redelivery that arrives while the first is still being handled waits this long for
# its answer (a cold mirror's first fetch can take a while).
PENDING_WAIT_S = 30.0

router = APIRouter()


class _Forge:
    """What differs between forges: headers, how a delivery is verified, the parser."""

    def __init__(self, name: str, event_header: str, delivery_header: str, signature_header: str,
                 verify: Callable[[bytes, bytes, str | None], bool],
                 parse: Callable[[str, object, str], ParseResult], delivery_required: bool) -> None:
        self.name, self.event_header, self.delivery_header = name, event_header, delivery_header
        self.signature_header, self.verify, self.parse = signature_header, verify, parse
        self.delivery_required = delivery_required


FORGES = {
    "github": _Forge("github", "x-github-event", "x-github-delivery", "x-hub-signature-256", verify_github,
                     from_github, True),
    # GitLab sends a token, not a signature: the body plays no part in verifying it.
    "gitlab": _Forge("gitlab", "x-gitlab-event", "x-gitlab-event-uuid", "x-gitlab-token",
                     lambda secret, body, header: verify_gitlab(secret, header), from_gitlab, False),
    "gitea": _Forge("gitea", "x-gitea-event", "x-gitea-delivery", "x-gitea-signature", verify_gitea,
                    from_gitea, True),
}


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise ApiError(413, "too_large", f"the body is over {MAX_BODY_BYTES} bytes (the limit for a delivery)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, "too_large", f"the body is over {MAX_BODY_BYTES} bytes (the limit for a delivery)")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post("/hooks/{forge_name}", status_code=202, tags=["webhooks"])
async def deliver(forge_name: str, request: Request) -> JSONResponse:
    """A forge delivery (docs/server.md, "Webhooks"): 202 with the runs started, 200 when ignored."""
    forge = FORGES.get(forge_name)
    if forge is None:
        raise ApiError(404, "not_found", f"no webhook endpoint for {forge_name!r}; use github, gitlab or gitea")
    runtime = request.app.state.services.runtime
    candidates = runtime.repositories.of_forge(forge.name)
    if not candidates:
        raise ApiError(404, "not_found", f"no {forge.name} repository is configured on this server")
    body = await _body(request)
    signature = request.headers.get(forge.signature_header)
    verified = [repo for repo in candidates if forge.verify(repo.webhook_secret(), body, signature)]
    if not verified:
        raise ApiError(401, "unauthorized", f"the delivery's {forge.signature_header} does not verify with the "
                                            "secret of any configured repository")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "bad_request", f"the body is not JSON: {exc}") from None
    delivery = request.headers.get(forge.delivery_header, "").strip()
    if forge.delivery_required and not delivery:
        raise ApiError(400, "bad_request", f"the {forge.delivery_header} header is missing")
    if len(delivery) > 200:
        raise ApiError(400, "bad_request", f"the {forge.delivery_header} header is too long")
    try:
        parsed = forge.parse(request.headers.get(forge.event_header, ""), payload, delivery)
    except PayloadError as exc:
        raise ApiError(400, "bad_request", str(exc)) from None
    if isinstance(parsed, Ignored):
        return JSONResponse({"runs": [], "ignored": parsed.reason}, status_code=200)
    repository = runtime.repositories.find(forge.name, parsed.repository)
    if repository is None:
        raise ApiError(404, "not_found", f"repository {parsed.repository!r} is not configured on this server")
    if repository not in verified:
        raise ApiError(401, "unauthorized", f"the delivery does not verify with the secret of {repository.name}")
    return await anyio.to_thread.run_sync(_deliver_once, runtime, forge.name, repository, parsed, delivery)


def _deliver_once(runtime: Any, forge: str, repository: Repository, event: Any, delivery: str) -> JSONResponse:
    """Start the event's run unless this delivery was handled already; the same answer either way."""
    coordination = runtime.coordination
    key = "delivery:" + hashlib.sha256(f"{forge}\0{repository.name.lower()}\0{delivery}".encode()).hexdigest()
    try:
        previous = coordination.remember(key, PENDING, DELIVERY_TTL_S) if delivery else None
        if previous is not None:
            return _previous_answer(coordination, key, previous)
    except ApiError:
        raise
    except Exception as exc:  # Redis down: the forge must redeliver, so do not say 2xx
        return _unavailable(exc)
    try:
        started = runtime.starter.start(repository, event)
    except StartError as exc:
        answer = (exc.status, {"error": {"code": "bad_request" if exc.status == 400 else "unavailable",
                                         "message": str(exc)}})
        if exc.status >= 500 and delivery:
            _forget(coordination, key)  # a later redelivery should try again
        elif delivery:
            _store(coordination, key, answer)
        return JSONResponse(answer[1], status_code=answer[0])
    except Exception as exc:
        log.exception("delivery %s for %s failed", delivery, repository.name)
        if delivery:
            _forget(coordination, key)
        return _unavailable(exc)
    answer = _answer(started)
    if delivery:
        _store(coordination, key, answer)
    return JSONResponse(answer[1], status_code=answer[0])


def _answer(started: Started) -> tuple[int, dict[str, Any]]:
    if started.run_ids:
        return 202, {"runs": list(started.run_ids)}
    return 200, {"runs": [], "ignored": started.ignored}


def _store(coordination: Any, key: str, answer: tuple[int, dict[str, Any]]) -> None:
    try:
        coordination.put(key, json.dumps({"status": answer[0], "body": answer[1]}), DELIVERY_TTL_S)
    except Exception:  # the run exists; a redelivery would find "pending" and wait, then 409
        log.warning("could not record the answer of delivery %s", key)


def _forget(coordination: Any, key: str) -> None:
    try:
        coordination.delete(key)
    except Exception:
        pass


def _previous_answer(coordination: Any, key: str, value: str) -> JSONResponse:
    deadline = time.monotonic() + PENDING_WAIT_S
    while value == PENDING and time.monotonic() < deadline:
        time.sleep(0.05)
        value = coordination.get(key) or ""
        if not value:  # the first delivery failed and was forgotten: the forge retries later
            return error_response(409, "conflict", "this delivery failed a moment ago; redeliver it")
    if value == PENDING:
        return error_response(409, "conflict", "this delivery is still being handled")
    stored = json.loads(value)
    return JSONResponse(stored["body"], status_code=stored["status"], headers={"X-Conveyor-Redelivery": "1"})


def _unavailable(exc: Exception) -> JSONResponse:
    return error_response(503, "unavailable", f"the state store cannot be reached ({type(exc).__name__}); "
                                              "redeliver later")
