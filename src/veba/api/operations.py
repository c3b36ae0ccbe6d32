"""What an operator does to a running appliance from the dashboard (or a
script): pause and resume a function's deliveries, and send one logged event
again to a function of their choice."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request

from veba.api.auth import require_token
from veba.api.errors import StrictRoute
from veba.api.models import MAX_REPLAY, EventReplayRequest
from veba.api.state import appliance_of
from veba.eventlog import ReplayTooLarge
from veba.events import Event

__all__ = ["operations_router"]

operations_router = APIRouter(
    prefix="/api/v1",
    dependencies=[Depends(require_token)],
    tags=["veba"],
    route_class=StrictRoute,
)


async def _paused(request: Request, name: str, paused: bool) -> dict[str, Any]:
    deployment = await appliance_of(request).functions.pause(name, paused)
    if deployment is None:
        raise HTTPException(404, f"function {name!r} is not deployed")
    return {"name": name, "paused": deployment.paused}


@operations_router.post("/functions/{name}/pause")
async def pause_function(name: str, request: Request) -> dict[str, Any]:
    """Stop delivering to `name`: attempts under way finish, new events wait in
    the log (none lost) until resumed. The pause outlives a restart."""
    return await _paused(request, name, True)


@operations_router.post("/functions/{name}/resume")
async def resume_function(name: str, request: Request) -> dict[str, Any]:
    """Deliver to `name` again, beginning with what waited."""
    return await _paused(request, name, False)


@operations_router.post("/events/{event_id}/replay")
async def replay_event(event_id: str, body: EventReplayRequest, request: Request) -> dict[str, Any]:
    """The logged event `event_id` once more to `function` (a function or
    RouterConfig processor): only if its subscription takes the event, unless
    `force`. A new delivery, with attempts of its own."""
    appliance = appliance_of(request)
    subscription = appliance.subscription(body.function)
    if subscription is None:
        raise HTTPException(404, f"function {body.function!r} is not deployed")
    record = await appliance.log.event(event_id)
    if record is None:
        raise HTTPException(404, f"no event with id {event_id!r}")
    wanted = record.event
    if not body.force and not subscription.matches(wanted):
        raise HTTPException(
            409,
            f"{body.function!r} does not subscribe to this event (its topic or filters"
            " refuse it); force: true sends it anyway",
        )

    def same(event: Event) -> bool:
        return event.id == wanted.id and event.source == wanted.source

    try:
        # The events received with it (one append), of which only this one.
        n = await appliance.log.replay(
            body.function,
            since=record.received,
            until=record.received,
            at_most=MAX_REPLAY,
            matches=same,
        )
    except ReplayTooLarge as exc:  # an append is far smaller; never in practice
        raise HTTPException(409, str(exc)) from None
    if n == 0:
        raise HTTPException(409, f"event {event_id!r} cannot be replayed (an async call?)")
    appliance.wake({body.function: n})
    return {"event": wanted.id, "function": body.function, "replayed": n, "force": body.force}
