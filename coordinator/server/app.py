"""`conveyor server`: the HTTP API over the same stores the workers use (docs/server.md).

Stateless across replicas: every answer is read from the state store, the artifact
store and the token store, so two servers behind one address give the same answers.
Requests are authenticated with bearer tokens (`shared.tokens`); every error has the
shape `{"error": {"code", "message"}}`.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from coordinator import status_view
from coordinator.run_status import full_status_json
from coordinator.server.common import CODES, ApiError, Services, error_response, known_run, requires, services
from coordinator.server.plan_cache import PlanCachingStore
from coordinator.server.runtime import ServerRuntime, build_runtime
from shared.config import Settings
from shared.state import open_state
from shared.state.base import TERMINAL, StateStore
from shared.tokens import Token, TokenStore, open_tokens

# How often a followed log or event stream looks for news (a blocking read would hold a
# worker thread per client).
FOLLOW_POLL_S = 0.25
LOG_PAGE = 1000


def create_app(settings: Settings, store: StateStore | None = None, tokens: TokenStore | None = None,
               runtime: ServerRuntime | None = None) -> FastAPI:
    """The server's ASGI app; ``store``/``tokens``/``runtime`` default to those of ``settings``.

    The runtime's watcher (final commit statuses, concurrency groups, schedules) runs while
    the app is being served (its lifespan).
    """
    store = store or open_state(settings.effective_state_url)
    if not isinstance(store, PlanCachingStore):
        store = PlanCachingStore(store)  # type: ignore[assignment]
    runtime = runtime or build_runtime(settings, store)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime.start()
        try:
            yield
        finally:
            runtime.stop()

    app = FastAPI(title="Conveyor", version="1", docs_url="/api/docs", redoc_url=None,
                  openapi_url="/api/openapi.json", lifespan=lifespan)
    app.state.services = Services(settings, store, tokens or open_tokens(settings.effective_state_url), runtime)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        response = error_response(exc.status, exc.code, exc.message)
        diagnostics = getattr(exc, "diagnostics", None)
        if diagnostics is not None:  # 422 of an invalid pipeline: the items as well as the text
            response = JSONResponse({"error": {"code": exc.code, "message": exc.message,
                                               "diagnostics": diagnostics}}, status_code=exc.status)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, CODES.get(exc.status_code, "error"), str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        where = "; ".join(".".join(str(p) for p in e.get("loc", ())) + ": " + str(e.get("msg", ""))
                          for e in exc.errors()[:5])
        return error_response(400, "bad_request", f"invalid request: {where}")

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    def readyz(svc: Services = Depends(services)) -> JSONResponse:
        try:
            svc.store.list_runs(1)
            svc.tokens.list()
            svc.runtime.coordination.ping()
        except Exception as exc:  # the store is down: not ready, the load balancer looks elsewhere
            return error_response(503, "unavailable", f"state store unreachable: {type(exc).__name__}")
        return JSONResponse({"status": "ready"})

    @app.get("/api/v1/runs")
    def list_runs(limit: int = 20, status: str | None = None, repository: str | None = None,
                  branch: str | None = None, _: Token = Depends(requires("read")),
                  svc: Services = Depends(services)) -> list[dict[str, Any]]:
        """Newest first; the same items as `conveyor runs --format json`."""
        if not 1 <= limit <= 1000:
            raise ApiError(400, "bad_request", "limit must be between 1 and 1000")
        window = limit if not (status or repository or branch) else 1000
        items = status_view.runs_json(svc.store, window)
        triggers = {run.run_id: (run.meta or {}).get("trigger") for run in svc.store.list_runs(window)}
        for item in items:
            if triggers.get(item["run_id"]) is not None:
                item["trigger"] = triggers[item["run_id"]]
        if status:
            items = [item for item in items if item["status"] == status]
        if repository or branch:
            items = [item for item in items if _trigger_matches(item.get("trigger"), repository, branch)]
        return items[:limit]

    @app.get("/api/v1/runs/{run_id}", response_model=None)
    def get_run(run_id: str, _: Token = Depends(requires("read")),
                svc: Services = Depends(services)) -> JSONResponse:
        """The same JSON as `conveyor status RUN --format json`."""
        run = known_run(svc, run_id)
        view = full_status_json(svc.settings, svc.store, run_id, svc.artifact_view(), run=run)
        if view is None:
            raise ApiError(404, "not_found", f"no run {run_id!r}")
        # What the servers did about the run beyond its jobs: commit statuses, fork safety,
        # concurrency (coordinator/server/coordination.py, notes).
        view["events"] = svc.runtime.coordination.notes(run_id)
        # Already plain JSON: FastAPI's generic encoder would walk all of it again (a third
        # of the time of a 500-job run).
        return JSONResponse(view)

    @app.get("/api/v1/runs/{run_id}/jobs/{job}/log", response_model=None)
    def job_log(run_id: str, job: str, follow: int = 0, _: Token = Depends(requires("read")),
                svc: Services = Depends(services)) -> PlainTextResponse | StreamingResponse:
        """The job's log as text; `?follow=1` streams it as server-sent events until the job ends."""
        known_run(svc, run_id)
        if job not in svc.store.get_jobs(run_id):
            raise ApiError(404, "not_found", f"run {run_id!r} has no job {job!r}")
        if not follow:
            lines: list[str] = []
            cursor = None
            while True:
                batch, cursor = svc.store.read_logs(run_id, job, after=cursor, count=LOG_PAGE)
                lines.extend(entry.text for entry in batch)
                if len(batch) < LOG_PAGE:
                    break
            return PlainTextResponse("".join(line + "\n" for line in lines))
        return StreamingResponse(_follow_log(svc.store, run_id, job), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.post("/api/v1/runs/{run_id}/cancel", status_code=202)
    def cancel(run_id: str, _: Token = Depends(requires("trigger")),
               svc: Services = Depends(services)) -> dict[str, Any]:
        known_run(svc, run_id)
        return {"run_id": run_id, "stopping": svc.store.request_cancel(run_id)}

    # Each part of the API is a router in its own module (common.py has what they share).
    for router in _routers():
        app.include_router(router)
    # CSP, nosniff, no framing, same-origin referrers on every answer (the web UI's rules).
    from coordinator.server.ui.pages import SecurityHeaders
    app.add_middleware(SecurityHeaders)
    return app


def _routers() -> list[APIRouter]:
    routers: list[APIRouter] = []
    # -- routers (one line per module) --
    from coordinator.server import hooks
    routers.append(hooks.router)
    from coordinator.server import api_trigger
    routers.append(api_trigger.router)
    from coordinator.server import api_deployments
    routers.append(api_deployments.router)
    from coordinator.server import api_artifacts
    routers.append(api_artifacts.router)
    from coordinator.server import api_events
    routers.append(api_events.router)
    from coordinator.server.ui import pages
    routers.append(pages.router)
    return routers


def _trigger_matches(trigger: Any, repository: str | None, branch: str | None) -> bool:
    if not isinstance(trigger, dict):
        return False
    return (repository is None or trigger.get("repository") == repository) and \
        (branch is None or trigger.get("branch") == branch)


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


async def _follow_log(store: StateStore, run_id: str, job: str) -> AsyncIterator[bytes]:
    """Log lines as `line` events, then one `end` event with the job's final status."""
    cursor = None
    while True:
        batch, cursor = await asyncio.to_thread(store.read_logs, run_id, job, cursor, LOG_PAGE)
        for entry in batch:
            yield _sse("line", {"stream": entry.stream, "text": entry.text, "at": entry.timestamp})
        if len(batch) == LOG_PAGE:
            continue
        record = (await asyncio.to_thread(store.get_jobs, run_id, [job]))[job]
        if record.status in TERMINAL:
            # One last read: lines written just before the status are not lost.
            batch, cursor = await asyncio.to_thread(store.read_logs, run_id, job, cursor, LOG_PAGE)
            for entry in batch:
                yield _sse("line", {"stream": entry.stream, "text": entry.text, "at": entry.timestamp})
            yield _sse("end", {"status": record.status, "reason": record.reason})
            return
        await asyncio.sleep(FOLLOW_POLL_S)
