"""`GET /api/v1/events/stream`: events as they are logged, as server-sent events,
for the dashboard (or `curl -N`).

Frames: `hello` (the server's clock), `events` (a JSON list of rows, at most
one frame per BATCH seconds however fast events come, so 500 events/s are a
few frames a second, and at most `rows` rows a frame), `gap` (`{"missed": N}`:
N events not sent: this client fell behind (the feed's queue per client is
bounded) or a frame held more than `rows`) and `heartbeat` every
HEARTBEAT seconds when idle. The stream ends when the appliance begins to shut
down (`Appliance.begin_shutdown` closes the feed), so `veba serve` stops at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from veba.api.auth import require_token
from veba.api.models import Backlog, FrameRows, StreamFilter
from veba.appliance import Appliance
from veba.feed import EventFilter, summary

__all__ = ["stream_router"]

BATCH = 0.25  # seconds between frames while events come
HEARTBEAT = 15.0  # seconds of silence before a heartbeat

stream_router = APIRouter(prefix="/api/v1", dependencies=[Depends(require_token)], tags=["veba"])


def _frame(kind: str, data: Any) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


@stream_router.get("/events/stream", response_class=StreamingResponse)
async def event_stream(
    request: Request,
    type: StreamFilter = "",
    source: StreamFilter = "",
    name: StreamFilter = "",
    backlog: Backlog = 0,
    rows: FrameRows = 1000,
) -> StreamingResponse:
    """Events as they are logged (text/event-stream), those the filters take:
    `type` (of the type or subject), `source`, `name` (a VM, host, cluster or
    datacenter name in the event), each a case-insensitive part; `backlog`: up
    to N of the last logged events that match (among the last 4N) first;
    `rows`: at most this many rows a frame (the newest; a `gap` frame counts the
    others), for a page that shows only so many."""
    appliance: Appliance = request.app.state.appliance
    matcher = EventFilter(type, source, name)

    async def frames() -> AsyncIterator[bytes]:
        # Watch (once the response runs, so its end unwatches) before reading the
        # backlog, so nothing falls between the two.
        watcher = appliance.feed.watch(matcher)
        try:
            yield b"retry: 2000\n" + _frame("hello", {"now": time.time()})
            last = 0
            if backlog:
                records = await appliance.log.events(limit=backlog * 4, newest_first=True)
                first = [
                    summary(r.seq, r.received, r.event)
                    for r in reversed(records)
                    if matcher.matches(r.event)
                ][-backlog:]
                if first:
                    last = first[-1]["seq"]
                    yield _frame("events", first)
            while True:
                if not await watcher.wait(HEARTBEAT):
                    yield _frame("heartbeat", {"now": time.time()})
                    continue
                if appliance.feed.closed:
                    return
                await asyncio.sleep(BATCH)  # let a batch gather: few frames when busy
                items, missed = watcher.take()
                items = [item for item in items if item[0] > last]
                # More than a frame shows: the newest `rows` of them, the rest counted.
                missed += max(0, len(items) - rows)
                if missed:
                    yield _frame("gap", {"missed": missed})
                if items:
                    yield _frame("events", [summary(*item) for item in items[-rows:]])
        finally:
            watcher.close()

    return StreamingResponse(
        frames(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
