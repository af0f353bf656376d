"""The web UI's pages (docs/web-ui.md): sign-in, the runs list, a run, a job's log.

Server-rendered HTML (Jinja2, autoescape on) and one small script, `static/app.js`, that
uses the same JSON API and event streams as any client, authenticated by the session
cookie (coordinator/server/ui/session.py; CSRF rules in `common.requires`).

Routes:
- `GET /login`, `POST /login`, `POST /logout`
- `GET /` runs list; `GET /runs/{run}`; `GET /runs/{run}/jobs/{job}` (log view)
- `GET /ui/runs` (the list's rows), `GET /ui/runs/{run}/panels` (a run's details): HTML
  fragments the script swaps in to stay live; `GET /ui/runs/{run}/jobs/{job}/lines`: a
  job's log as JSON, each line already rendered (ANSI colours as escaped HTML)
- `GET /ui/static/{version}/{name}`: the stylesheet, script and icon, cached for a year
  (a new version of a file is a new URL)

Every response gets the security headers of `SecurityHeaders` (CSP without inline script
or style, nosniff, no framing, same-origin referrers).
"""
from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from markupsafe import Markup
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from coordinator import status_view
from coordinator.run_status import full_status_json, is_run_id
from coordinator.server.common import Services, public_url
from coordinator.server.ui import ansi, dag_layout
from coordinator.server.ui import session as ui_session
from shared.state.base import FAILED, RUN_STATUSES, RUNNING, TERMINAL, epoch_seconds

router = APIRouter(include_in_schema=False)

HERE = Path(__file__).resolve().parent
LOG_PAGE = 1000
RUNS_LIMIT = 50
FILTER_WINDOW = 1000  # as the API: a filtered list looks at the newest 1000 runs

# -- assets -----------------------------------------------------------------------------------

_MEDIA = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".svg": "image/svg+xml"}


def _load_assets() -> tuple[dict[str, tuple[bytes, str]], str]:
    files = {}
    for path in sorted((HERE / "static").iterdir()):
        if path.is_file() and path.suffix in _MEDIA:
            files[path.name] = (path.read_bytes(), _MEDIA[path.suffix])
    digest = hashlib.sha256()
    for name, (data, _) in files.items():
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return files, digest.hexdigest()[:12]


ASSETS, ASSET_VERSION = _load_assets()


def asset_url(name: str) -> str:
    if name not in ASSETS:
        raise KeyError(f"no asset {name!r}")
    return f"/ui/static/{ASSET_VERSION}/{name}"


@router.get("/ui/static/{version}/{name}")
def static_asset(version: str, name: str) -> Response:
    if name not in ASSETS:
        return Response("not found\n", status_code=404, media_type="text/plain")
    data, media = ASSETS[name]
    # Another version (a page rendered by an older or newer server behind the same
    # address): the file we have, but not cached, so the right one is fetched next time.
    cache = "public, max-age=31536000, immutable" if version == ASSET_VERSION else "no-cache"
    return Response(data, media_type=media, headers={"Cache-Control": cache})


# -- security headers ---------------------------------------------------------------------------

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
# The OpenAPI pages are FastAPI's Swagger UI (inline script, a CDN): they keep their own rules.
_NO_CSP = ("/api/docs", "/api/openapi.json")


class SecurityHeaders:
    """ASGI middleware: headers every answer gets (a plain ASGI wrapper: it leaves the
    event streams' bodies alone)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with_csp = not scope.get("path", "").startswith(_NO_CSP)

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                extra = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin"),
                         (b"x-frame-options", b"DENY")]
                if with_csp:
                    extra.append((b"content-security-policy", CSP.encode()))
                headers.extend((name, value) for name, value in extra if name not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, sending)


# -- templates ----------------------------------------------------------------------------------

_env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / "templates")), autoescape=True,
                          trim_blocks=True, lstrip_blocks=True)

def _glyph(status: str) -> str:
    return dag_layout.STATUS_GLYPHS.get(status, "?")


def _short_sha(sha: Any) -> str:
    return str(sha)[:7] if sha else ""


def _size(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _when(iso: Any) -> str:
    """`2026-12-03 14:00:05 UTC` from a stored timestamp."""
    if not iso:
        return "-"
    return str(iso).replace("T", " ")[:19] + " UTC"


def _percent(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else "-"


_env.filters.update(short_sha=_short_sha, size=_size, when=_when, percent=_percent, glyph=_glyph,
                    q=lambda text: quote(str(text), safe=""), qpath=lambda text: quote(str(text), safe="/"))
_env.globals.update(asset=asset_url)


def render(request: Request, template: str, session: ui_session.Session | None, status: int = 200,
           **context: Any) -> HTMLResponse:
    html = _env.get_template(template).render(session=session, csrf=session.csrf if session else "",
                                              path=request.url.path, **context)
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


# -- sign-in ------------------------------------------------------------------------------------


def _svc(request: Request) -> Services:
    return request.app.state.services


def _safe_next(target: str | None) -> str:
    """Where to go after signing in: a path of this server only (never `//host`, `\\host`
    or a scheme), else the runs list."""
    if not target or len(target) > 2000 or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    if any(ord(c) < 0x20 or c in "\\\x7f" for c in target) or target.startswith(("/login", "/logout")):
        return "/"
    return target


def _login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    response = RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)
    if ui_session.COOKIE in request.cookies:  # a stale cookie: drop it
        ui_session.clear_cookie(response, ui_session.is_secure(request, public_url(_svc(request))))
    return response


def _session(request: Request) -> ui_session.Session | None:
    session = ui_session.from_request(request)
    return session if session is not None and session.token.allows("read") else None


@router.get("/login")
def login_form(request: Request, next: str = "/") -> Response:
    if _session(request) is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return render(request, "login.html", None, next=_safe_next(next), error=None)


@router.post("/login")
async def login(request: Request) -> Response:
    svc = _svc(request)
    nxt = _safe_next(await ui_session.form_field(request, "next"))
    why = ui_session.cross_site(request, public_url(svc))
    if why is not None:  # login CSRF: another site signing the browser in as someone else
        return render(request, "login.html", None, status=403, next=nxt, error=f"Refused: {why}.")
    raw = await ui_session.form_field(request, "token")
    raw = raw.strip() if raw else None
    opened = await run_in_threadpool(ui_session.start, svc.runtime.coordination, svc.tokens, raw)
    if opened is None:
        # The submitted token is never put back into the page.
        return render(request, "login.html", None, status=401, next=nxt,
                      error="That token was not accepted: it is unknown, revoked or mistyped.")
    session_id, _ = opened
    previous = await run_in_threadpool(ui_session.from_request, request)
    if previous is not None:  # whatever session this browser had before is over
        await run_in_threadpool(ui_session.end, svc.runtime.coordination, previous)
    response = RedirectResponse(nxt, status_code=303)
    ui_session.set_cookie(response, session_id, ui_session.is_secure(request, public_url(svc)))
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    svc = _svc(request)
    session = await run_in_threadpool(ui_session.from_request, request)
    secure = ui_session.is_secure(request, public_url(svc))
    if session is not None:
        supplied = request.headers.get(ui_session.CSRF_HEADER) or \
            await ui_session.form_field(request, ui_session.CSRF_FIELD)
        why = ui_session.csrf_refusal(request, session, supplied, public_url(svc))
        if why is not None:
            return render(request, "error.html", session, status=403, title="Refused", message=f"Refused: {why}.")
        await run_in_threadpool(ui_session.end, svc.runtime.coordination, session)
    response = RedirectResponse("/login", status_code=303)
    ui_session.clear_cookie(response, secure)
    return response


# -- runs list ----------------------------------------------------------------------------------


def _duration(created: str | None, finished: str | None, now: float) -> str:
    start = epoch_seconds(created)
    if start is None:
        return "-"
    end = epoch_seconds(finished)
    return status_view.duration_text((end if end is not None else now) - start)


def runs_rows(svc: Services, repository: str | None, branch: str | None, status: str | None,
              limit: int = RUNS_LIMIT) -> list[dict[str, Any]]:
    """The runs list's rows, newest first, filtered as `GET /api/v1/runs` filters."""
    filtered = bool(repository or branch or status)
    now = time.time()
    rows = []
    for run in svc.store.list_runs(FILTER_WINDOW if filtered else limit):
        trigger = (run.meta or {}).get("trigger") or {}
        if not isinstance(trigger, dict):
            trigger = {}
        if status and run.status != status:
            continue
        if repository and trigger.get("repository") != repository:
            continue
        if branch and trigger.get("branch") != branch:
            continue
        rows.append({"run_id": run.run_id, "pipeline": run.pipeline, "status": run.status,
                     "created_at": run.created_at, "finished_at": run.finished_at,
                     "duration": _duration(run.created_at, run.finished_at, now), "trigger": trigger,
                     "cancel_requested": run.cancel_requested})
        if len(rows) >= limit:
            break
    return rows


def _filters(repository: str | None, branch: str | None, status: str | None) -> dict[str, str]:
    status = status if status in RUN_STATUSES else ""
    return {"repository": (repository or "").strip()[:200], "branch": (branch or "").strip()[:200],
            "status": status or ""}


@router.get("/")
def runs_page(request: Request, repository: str | None = None, branch: str | None = None,
              status: str | None = None) -> Response:
    session = _session(request)
    if session is None:
        return _login_redirect(request)
    filters = _filters(repository, branch, status)
    rows = runs_rows(_svc(request), filters["repository"] or None, filters["branch"] or None,
                     filters["status"] or None)
    return render(request, "runs.html", session, rows=rows, filters=filters, statuses=sorted(RUN_STATUSES),
                  rows_url="/ui/runs?" + urlencode({k: v for k, v in filters.items() if v}))


@router.get("/ui/runs")
def runs_fragment(request: Request, repository: str | None = None, branch: str | None = None,
                  status: str | None = None) -> Response:
    session = _session(request)
    if session is None:
        return Response(status_code=401)
    filters = _filters(repository, branch, status)
    rows = runs_rows(_svc(request), filters["repository"] or None, filters["branch"] or None,
                     filters["status"] or None)
    return render(request, "_runs_rows.html", session, rows=rows, filters=filters)


# -- a run --------------------------------------------------------------------------------------


def _not_found(request: Request, session: ui_session.Session, message: str) -> HTMLResponse:
    return render(request, "error.html", session, status=404, title="Not found", message=message)


def _run_view(svc: Services, run_id: str) -> dict[str, Any] | None:
    if not is_run_id(run_id):
        return None
    return full_status_json(svc.settings, svc.store, run_id, svc.artifact_view())


def _job_rows(view: Mapping[str, Any], now: float) -> list[dict[str, Any]]:
    rows = []
    for name, job in view.get("jobs", {}).items():
        record = status_view.job_record_of(name, job)
        rows.append({"name": name, "status": job.get("status", "pending"),
                     "label": status_view.status_label(record, now), "attempts": job.get("attempts") or 0,
                     "reason": job.get("reason"), "exit_code": job.get("exit_code"),
                     "duration": status_view.duration_text(status_view.job_seconds(record, now)),
                     "allow_failure": bool(job.get("allow_failure")), "started_at": job.get("started_at"),
                     "level": job.get("level")})
    return rows


def _deployments(view: Mapping[str, Any]) -> list[dict[str, Any]]:
    from deploy.record import TERMINAL as DEPLOY_TERMINAL

    out = []
    for name, job in view.get("jobs", {}).items():
        if "deployment" not in job:
            continue
        deployment = job.get("deployment") or {}
        events = deployment.get("events") or []
        analysis = next((e for e in reversed(events) if e.get("type") == "analysis"), None)
        state = deployment.get("state")
        out.append({"job": name, "job_status": job.get("status"), "d": deployment, "state": state,
                    "analysis": analysis, "weights": sorted((deployment.get("weights") or {}).items()),
                    "gate": deployment.get("gate"), "approvals": sorted((deployment.get("approvals") or {}).items()),
                    "commands": state not in DEPLOY_TERMINAL and (state is not None or job.get("status") not in TERMINAL),
                    "recent": events[-5:]})
    return out


def _artifacts(view: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name, job in view.get("jobs", {}).items():
        for member in job.get("artifacts") or []:
            out.append({"job": name, **member})
    return out


def _panels_context(svc: Services, session: ui_session.Session, run_id: str,
                    view: Mapping[str, Any]) -> dict[str, Any]:
    now = time.time()
    trigger = view.get("trigger") or {}
    return {"run": view, "run_id": run_id, "trigger": trigger if isinstance(trigger, dict) else {},
            "duration": _duration(view.get("created_at"), view.get("finished_at"), now),
            "jobs": _job_rows(view, now), "artifacts": _artifacts(view), "deployments": _deployments(view),
            "can_trigger": session.token.allows("trigger"), "can_approve": session.token.allows("approve"),
            "running": view.get("status") == RUNNING}


def _job_link(run_id: str) -> Any:
    return lambda job: f"/runs/{quote(run_id, safe='')}/jobs/{quote(job, safe='')}"


@router.get("/runs/{run_id}")
def run_page(request: Request, run_id: str) -> Response:
    session = _session(request)
    if session is None:
        return _login_redirect(request)
    svc = _svc(request)
    view = _run_view(svc, run_id)
    if view is None:
        return _not_found(request, session, f"There is no run {run_id!r}.")
    plan = status_view.plan_of(svc.store, run_id)
    statuses = {name: job.get("status", "pending") for name, job in view.get("jobs", {}).items()}
    svg = dag_layout.render_svg(dag_layout.layout(plan), statuses, link=_job_link(run_id))
    allowed = sorted(name for name, job in view.get("jobs", {}).items()
                     if job.get("allow_failure") and job.get("status") == FAILED)
    return render(request, "run.html", session, svg=Markup(svg), allowed_failures=allowed,
                  glyphs=dict(dag_layout.STATUS_GLYPHS), **_panels_context(svc, session, run_id, view))


@router.get("/ui/runs/{run_id}/panels")
def run_panels(request: Request, run_id: str) -> Response:
    session = _session(request)
    if session is None:
        return Response(status_code=401)
    svc = _svc(request)
    view = _run_view(svc, run_id)
    if view is None:
        return Response(status_code=404)
    return render(request, "_run_panels.html", session, **_panels_context(svc, session, run_id, view))


# -- a job's log ----------------------------------------------------------------------------------

_STEP_HEADER = re.compile(r"step \d+/\d+: (.*)")
_ERROR_MARKER = re.compile(r"(?i)(?<![\w-])(error|errors|fatal|failed|failure|panic|traceback|exception)(?![\w-])"
                           r"|^E\s|^FAIL\b")


def _is_error_line(stream: str, text: str) -> bool:
    if stream != "system" and text.startswith(("$ ", "> ")):  # the worker's echo of a script line
        return False
    # Only a line with escape codes needs stripping first (most have none).
    return _ERROR_MARKER.search(ansi.strip_ansi(text) if "\x1b" in text else text) is not None


def first_error(lines: Iterable[tuple[str, str]]) -> int | None:
    """The index of the line "jump to first error" goes to (docs/web-ui.md), or None.

    An *error line* has an error word (`error`, `errors`, `fatal`, `failed`, `failure`,
    `panic`, `traceback`, `exception`: a whole word, any case) in its text without ANSI
    codes, or starts with `E ` or `FAIL` (pytest, go test); the worker's echo of a script
    line (`$ cmd`, `> continued`) is not one.

    1. The worker writes a `system` line `step I/N: NAME` when a step starts and
       `step NAME failed...` when it fails. In the first step that failed: its first
       error line, else its first line (the one after its header).
    2. Otherwise (a job that failed outside its steps, or a log without these lines): the
       first error line of the log.
    """
    marker: int | None = None
    current: tuple[str, int] | None = None  # the step in progress: name, header index
    in_step: int | None = None  # its first error line
    for index, (stream, text) in enumerate(lines):
        if stream == "system":
            header = _STEP_HEADER.fullmatch(text)
            if header is not None:
                current, in_step = (header.group(1), index), None
                continue
            if current is not None and text.startswith(f"step {current[0]} failed"):
                return in_step if in_step is not None else current[1] + 1
        if (marker is None or (current is not None and in_step is None)) and _is_error_line(stream, text):
            if marker is None:
                marker = index
            if current is not None and in_step is None:
                in_step = index
    return marker


def _read_log(svc: Services, run_id: str, job: str, limit: int | None = None) -> tuple[list[tuple[str, str]], bool]:
    """(stream, text) of each line, the first ``limit`` only when given; and whether there
    are more."""
    lines: list[tuple[str, str]] = []
    cursor = None
    while True:
        batch, cursor = svc.store.read_logs(run_id, job, after=cursor, count=LOG_PAGE)
        for entry in batch:
            # An entry is one line; a text holding line breaks (from an older worker) is split.
            for text in entry.text.split("\n") if "\n" in entry.text else (entry.text,):
                lines.append((entry.stream, text))
        if limit is not None and len(lines) > limit:
            return lines[:limit], True
        if len(batch) < LOG_PAGE:
            return lines, False


_STREAM_CODES = {"stdout": "o", "stderr": "e", "system": "s"}
# ansi.py writes 256-colour and truecolor as `style="color:#rrggbb[;background-color:#rrggbb]"`.
# The CSP allows no inline style attribute, so it becomes `data-c="…"`, which the script
# applies through the CSSOM (allowed) after checking it against the same shape.
_INLINE_STYLE = re.compile(r' style="((?:color|background-color):#[0-9a-f]{6}(?:;(?:color|background-color):#[0-9a-f]{6})?)"')


def _no_inline_style(html: str) -> str:
    return _INLINE_STYLE.sub(r' data-c="\1"', html) if ' style="' in html else html


def log_json(lines: list[tuple[str, str]]) -> dict[str, Any]:
    """The log as the page's script takes it: each line's HTML (escaped, ANSI colours as
    spans), one stream letter per line (`o` stdout, `e` stderr, `s` the worker's), and the
    first-error line (an index, or None)."""
    html = []
    # Colours carry over from line to line within a stream (stdout and stderr are separate
    # pipes; the worker's own `system` lines are never coloured by the job's).
    states: dict[str, ansi.AnsiState] = {}
    for stream, text in lines:
        rendered, states[stream] = ansi.ansi_line_to_html(text, states.get(stream, ansi.PLAIN))
        html.append(_no_inline_style(rendered))
    return {"count": len(lines), "html": html, "streams": "".join(_STREAM_CODES.get(s, "o") for s, _ in lines),
            "first_error": first_error(lines)}


@router.get("/runs/{run_id}/jobs/{job}")
def log_page(request: Request, run_id: str, job: str) -> Response:
    session = _session(request)
    if session is None:
        return _login_redirect(request)
    svc = _svc(request)
    run = svc.store.get_run(run_id) if is_run_id(run_id) else None
    if run is None:
        return _not_found(request, session, f"There is no run {run_id!r}.")
    jobs = svc.store.get_jobs(run_id)
    if job not in jobs:
        return _not_found(request, session, f"Run {run_id!r} has no job {job!r}.")
    record = jobs[job]
    now = time.time()
    base = f"/runs/{quote(run_id, safe='')}/jobs/{quote(job, safe='')}"
    api = f"/api/v1{base}/log"
    return render(request, "log.html", session, run=run, run_id=run_id, job=job, record=record,
                  label=status_view.status_label(record, now),
                  duration=status_view.duration_text(status_view.job_seconds(record, now)),
                  lines_url=f"/ui{base}/lines", download_url=api, follow_url=f"{api}?follow=1",
                  terminal=record.status in TERMINAL, glyphs=dict(dag_layout.STATUS_GLYPHS))


@router.get("/ui/runs/{run_id}/jobs/{job}/lines")
def log_lines(request: Request, run_id: str, job: str, limit: int | None = None) -> Response:
    """The log as `log_json`, plus the job's status; `?limit=N`: the first N lines only
    (`more` says whether there are others), which the page shows while the rest loads."""
    session = _session(request)
    if session is None:
        return JSONResponse({"error": {"code": "unauthorized", "message": "sign in again"}}, status_code=401)
    svc = _svc(request)
    if not is_run_id(run_id) or svc.store.get_run(run_id) is None:
        return JSONResponse({"error": {"code": "not_found", "message": "no such run"}}, status_code=404)
    jobs = svc.store.get_jobs(run_id)
    if job not in jobs:
        return JSONResponse({"error": {"code": "not_found", "message": "no such job"}}, status_code=404)
    # The status first: when it is final, the log read after it is complete.
    record = jobs[job]
    lines, more = _read_log(svc, run_id, job, max(1, limit) if limit is not None else None)
    body = log_json(lines)
    body.update(more=more, status=record.status, label=status_view.status_label(record, time.time()),
                terminal=record.status in TERMINAL)
    return JSONResponse(body, headers={"Cache-Control": "no-store"})
