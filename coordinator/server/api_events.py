"""A run's job status changes as server-sent events (docs/server.md, "Events").

`GET /api/v1/runs/{run}/events` replays the run's event stream from the state store (or
from where a client left off: `Last-Event-ID` or `?after=`) and then follows it: one
`status` event per job transition, then one `end` event once the run is over. The store
is polled from a worker thread (`asyncio.to_thread`) like a followed log: no client holds
a thread while it waits.

Event ids: the stores give one cursor per batch of events, not one per event, so an event
that is not the last of its batch is named `CURSOR+K` ("the K-th event after CURSOR"),
and the last one by the batch's own cursor. Either resumes exactly after that event.
"""
from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Header
from fastapi.responses import StreamingResponse

from coordinator.server.common import ApiError, Services, known_run, requires, services
from shared.state.base import RUNNING, Event, StateStore
from shared.tokens import Token

router = APIRouter()

POLL_S = 0.25  # as a followed log (app.FOLLOW_POLL_S)
KEEPALIVE_S = 15.0  # a comment line now and then, so proxies do not close a quiet stream
EVENT_PAGE = 1000  # what both stores return at most per `events()` call
# A SQLite row id or a Redis stream id, optionally `+K` (events to skip after it).
_EVENT_ID = re.compile(r"(0|[0-9]{1,20}(?:-[0-9]{1,20})?)(?:\+([1-9][0-9]{0,3}))?")


def status_json(event: Event) -> dict[str, Any]:
    return {"job": event.job, "from": event.from_status, "to": event.to_status, "at": event.at,
            "attempt": event.attempt, "reason": event.reason}


@router.get("/api/v1/runs/{run_id}/events", response_model=None, response_class=StreamingResponse)
def run_events(run_id: str, after: str | None = None,
               last_event_id: str | None = Header(default=None, alias="Last-Event-ID"),
               _: Token = Depends(requires("read")), svc: Services = Depends(services)) -> StreamingResponse:
    """`text/event-stream`: `status` events `{job, from, to, at, attempt, reason}` (each
    with an `id`), then one `end` event `{status, finished_at}` when the run is over."""
    known_run(svc, run_id)
    cursor, skip = _position(after if after is not None else last_event_id)
    try:
        # Read once here: a cursor this store cannot use is a 400, not a broken stream.
        first = svc.store.events(run_id, after=cursor)
    except (ValueError, OverflowError):  # a Redis id on SQLite, a number past 64 bits
        raise ApiError(400, "bad_request", "not an event id of this server") from None
    return StreamingResponse(_stream(svc.store, run_id, cursor, skip, first), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def _position(event_id: str | None) -> tuple[str | None, int]:
    if event_id is None or event_id == "":
        return None, 0
    match = _EVENT_ID.fullmatch(event_id.strip())
    if match is None:
        raise ApiError(400, "bad_request", "not an event id (use the `id` of an event this stream sent)")
    return match.group(1), int(match.group(2) or 0)


def _sse(event: str, data: Any, event_id: str | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n".encode()


async def _stream(store: StateStore, run_id: str, cursor: str | None, skip: int,
                  first: tuple[list[Event], str]) -> AsyncIterator[bytes]:
    position = _Position(cursor, skip)
    for chunk in position.take(*first):  # the handler's read
        yield chunk
    if len(first[0]) == EVENT_PAGE:
        async for chunk in _drain(store, run_id, position):
            yield chunk
    quiet_since = time.monotonic()
    while True:
        # The run's status is read before the events: whatever happened before it ended
        # is then in the stream already, so the drain below is the last one needed.
        run = await asyncio.to_thread(store.get_run, run_id)
        sent = False
        async for chunk in _drain(store, run_id, position):
            sent = True
            yield chunk
        if run is None or run.status != RUNNING:
            yield _sse("end", {"status": run.status if run else None,
                               "finished_at": run.finished_at if run else None})
            return
        if sent:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= KEEPALIVE_S:
            yield b": keepalive\n\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(POLL_S)


class _Position:
    """Where the stream is: the store's cursor, and how many events after it were sent."""

    def __init__(self, cursor: str | None, skip: int) -> None:
        self.cursor, self.skip = cursor, skip

    def take(self, batch: list[Event], after: str) -> list[bytes]:
        """The SSE messages of the events of ``batch`` not sent yet; moves past the batch."""
        out = []
        for number, event in enumerate(batch, 1):
            if number <= self.skip or event.job is None:  # the run's own transition is the `end` event
                continue
            event_id = after if number == len(batch) else f"{self.cursor or 0}+{number}"
            out.append(_sse("status", status_json(event), event_id))
        if batch:
            self.cursor, self.skip = after, 0
        return out


async def _drain(store: StateStore, run_id: str, position: _Position) -> AsyncIterator[bytes]:
    """Every event after ``position`` the store has now."""
    while True:
        batch, after = await asyncio.to_thread(store.events, run_id, position.cursor)
        for chunk in position.take(batch, after):
            yield chunk
        if len(batch) < EVENT_PAGE:
            return
