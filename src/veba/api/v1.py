"""veba's own API: the event log, dead letters, replay, status and metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response

from veba.api.auth import require_token
from veba.appliance import Appliance
from veba.eventlog import Status

__all__ = ["v1_router"]

v1_router = APIRouter(prefix="/api/v1", dependencies=[Depends(require_token)], tags=["veba"])


def _appliance(request: Request) -> Appliance:
    appliance: Appliance = request.app.state.appliance
    return appliance


@v1_router.get("/events")
async def list_events(
    request: Request,
    after: int = 0,
    limit: int = 100,
    subject: str | None = None,
    newest_first: bool = False,
) -> list[dict[str, Any]]:
    records = await _appliance(request).log.events(
        after_seq=after, limit=min(limit, 10_000), subject=subject, newest_first=newest_first
    )
    return [r.to_dict() for r in records]


@v1_router.get("/events/{event_id}")
async def show_event(event_id: str, request: Request) -> dict[str, Any]:
    """One event by its id, else (all digits) by its seq, as `events list` shows it."""
    log = _appliance(request).log
    record = await log.event(event_id)
    if record is None and event_id.isdigit():
        after = await log.events(after_seq=int(event_id) - 1, limit=1)
        record = after[0] if after and after[0].seq == int(event_id) else None
    if record is None:
        what = "id or seq" if event_id.isdigit() else "id"
        raise HTTPException(404, f"no event with {what} {event_id!r}")
    deliveries = await log.deliveries(event_id=record.event.id, with_history=True)
    return {**record.to_dict(), "deliveries": [d.to_dict() for d in deliveries]}


@v1_router.get("/functions/{name}")
async def function_stats(name: str, request: Request) -> dict[str, Any]:
    appliance = _appliance(request)
    deployment = appliance.functions.get(name)
    if deployment is None:
        raise HTTPException(404, f"function {name!r} is not deployed")
    counts = (await appliance.log.counts()).get(name, {})
    return {
        **deployment.info(),
        "pending": counts.get("pending", 0) + counts.get("leased", 0),
        "delivered": counts.get("delivered", 0),
        "dead": counts.get("dead", 0),
    }


@v1_router.get("/deliveries")
async def list_deliveries(
    request: Request,
    function: str | None = None,
    status: Status | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    infos = await _appliance(request).log.deliveries(
        subscription=function, status=status, limit=min(limit, 10_000)
    )
    return [i.to_dict() for i in infos]


@v1_router.get("/dlq")
async def dead_letters(
    request: Request, function: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    infos = await _appliance(request).log.deliveries(
        subscription=function, status="dead", limit=min(limit, 10_000)
    )
    return [i.to_dict() for i in infos]


@v1_router.get("/dlq/{delivery_id}")
async def dead_letter(delivery_id: int, request: Request) -> dict[str, Any]:
    log = _appliance(request).log
    info = await log.delivery(delivery_id)
    if info is None or info.status != "dead":
        raise HTTPException(404, f"no dead letter with id {delivery_id}")
    record = await log.event(info.event_id)
    return {**info.to_dict(), "event": record.event.to_dict() if record else None}


@v1_router.post("/dlq/redrive")
async def redrive(request: Request) -> dict[str, int]:
    body = await request.json()
    if not isinstance(body, dict):
        raise HTTPException(400, "expected {ids: [...]}, {function: NAME} or {all: true}")
    appliance = _appliance(request)
    ids, function = body.get("ids"), body.get("function")
    if ids:
        n = await appliance.log.redrive(delivery_ids=[int(i) for i in ids])
    elif function:
        n = await appliance.log.redrive(subscription=str(function))
    elif body.get("all") is True:
        n = await appliance.log.redrive()
    else:
        raise HTTPException(400, "say what to redrive: ids, function, or all: true")
    appliance.functions.wake({d.definition.name: 1 for d in appliance.functions.all()})
    return {"redriven": n}


@v1_router.post("/replay")
async def replay(request: Request) -> dict[str, int]:
    body = await request.json()
    appliance = _appliance(request)
    function = body.get("function") if isinstance(body, dict) else None
    if not isinstance(function, str) or appliance.functions.get(function) is None:
        raise HTTPException(404, f"function {function!r} is not deployed")
    types = body.get("types") or None
    n = await appliance.log.replay(
        function, since=body.get("since"), until=body.get("until"), subjects=types
    )
    appliance.functions.wake({function: n})
    return {"replayed": n}


@v1_router.get("/status")
async def status(request: Request) -> dict[str, Any]:
    appliance = _appliance(request)
    # Deliveries by function and state (pending, leased, delivered, dead).
    return {**appliance.status(), "deliveries": await appliance.log.counts()}


@v1_router.post("/providers/{name}/trigger")
async def trigger(name: str, request: Request) -> dict[str, Any]:
    """Ask the simulator for events now (tests, demos)."""
    provider = _appliance(request).provider(name)
    if provider is None or not hasattr(provider, "trigger"):
        raise HTTPException(404, f"no provider {name!r} that can be triggered")
    body = await request.json() if await request.body() else {}
    try:
        events = await provider.trigger(
            body.get("event_class"), count=int(body.get("count", 1)), **body.get("overrides", {})
        )
    except ValueError as exc:  # SimulationError: unknown class, nothing eligible, bad path
        raise HTTPException(422, str(exc)) from None
    except RuntimeError as exc:  # the provider is not running
        raise HTTPException(503, str(exc)) from None
    return {"events": [e.to_dict() for e in events]}


metrics_router = APIRouter(dependencies=[Depends(require_token)], tags=["metrics"])


@metrics_router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(_appliance(request).metrics.render(), media_type="text/plain; version=0.0.4")
