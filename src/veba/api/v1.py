"""veba's own API: the event log, dead letters, replay, status and metrics."""

from __future__ import annotations

import re
from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from veba import telemetry
from veba.api.auth import require_token
from veba.api.errors import StrictRoute
from veba.api.models import (
    MAX_INT64,
    MAX_REPLAY,
    DeliveryId,
    EventStory,
    Limit,
    RedriveRequest,
    ReplayRequest,
    Seq,
    TriggerRequest,
)
from veba.api.state import appliance_of
from veba.api.stats import stats
from veba.eventlog import DeliveryInfo, EventLog, EventRecord, ReplayTooLarge, Status

__all__ = ["v1_router"]

v1_router = APIRouter(
    prefix="/api/v1",
    dependencies=[Depends(require_token)],
    tags=["veba"],
    route_class=StrictRoute,
)


@v1_router.get("/events")
async def list_events(
    request: Request,
    after: Seq = 0,
    limit: Limit = 100,
    subject: str | None = None,
    newest_first: bool = False,
) -> list[dict[str, Any]]:
    records = await appliance_of(request).log.events(
        after_seq=after, limit=limit, subject=subject, newest_first=newest_first
    )
    return [r.to_dict() for r in records]


@v1_router.get("/events/{event_id}")
async def show_event(event_id: str, request: Request) -> dict[str, Any]:
    """One event by its id, else (all digits) by its seq, as `events list` shows it."""
    log = appliance_of(request).log
    record = await _find_event(log, event_id)
    deliveries = await log.deliveries(event_id=record.event.id, with_history=True)
    return {**record.to_dict(), "deliveries": [d.to_dict() for d in deliveries]}


@v1_router.get("/events/{event_id}/story", response_model=EventStory)
async def event_story(event_id: str, request: Request) -> dict[str, Any]:
    """One event's story in time order (by id, else seq): received, logged, each
    delivery and attempt with its outcome, and what the function printed then."""
    from veba.story import tell

    appliance = appliance_of(request)
    record = await _find_event(appliance.log, event_id)
    return (await tell(appliance.log, appliance.logs, record)).to_dict()


async def _find_event(log: EventLog, event_id: str) -> EventRecord:
    """The event with this id, else (all digits) this seq; 404 if none."""
    record = await log.event(event_id)
    # A seq is ASCII digits within SQLite's integers ("²" is a digit to isdigit()).
    seq = int(event_id) if re.fullmatch(r"[0-9]{1,19}", event_id) else None
    if seq is not None and not 1 <= seq <= MAX_INT64:
        seq = None
    if record is None and seq is not None:
        after = await log.events(after_seq=seq - 1, limit=1)
        record = after[0] if after and after[0].seq == seq else None
    if record is None:
        what = "id or seq" if seq is not None else "id"
        raise HTTPException(404, f"no event with {what} {event_id!r}")
    return record


@v1_router.get("/functions/{name}")
async def function_stats(name: str, request: Request) -> dict[str, Any]:
    appliance = appliance_of(request)
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
    limit: Limit = 100,
) -> list[dict[str, Any]]:
    infos = await appliance_of(request).log.deliveries(
        subscription=function, status=status, limit=limit
    )
    return [i.to_dict() for i in infos]


@v1_router.get("/dlq")
async def dead_letters(
    request: Request, function: str | None = None, limit: Limit = 100
) -> list[dict[str, Any]]:
    infos = await appliance_of(request).log.deliveries(
        subscription=function, status="dead", limit=limit, with_history=True
    )
    return [i.to_dict() for i in infos]


@v1_router.get("/dlq/{delivery_id}")
async def dead_letter(delivery_id: DeliveryId, request: Request) -> dict[str, Any]:
    log = appliance_of(request).log
    info = await log.delivery(delivery_id)
    if info is None or info.status != "dead":
        raise HTTPException(404, f"no dead letter with id {delivery_id}")
    record = await log.event(info.event_id)
    return {**info.to_dict(), "event": record.event.to_dict() if record else None}


@v1_router.post("/dlq/redrive")
async def redrive(body: RedriveRequest, request: Request) -> dict[str, Any]:
    """Dead letters back to pending with a fresh attempt count: by `ids` (each
    must be a dead letter, else 404 and nothing done), all of one `function`'s,
    or `all: true` (run in steps, off the event loop). `dry_run` only counts."""
    appliance = appliance_of(request)
    log = appliance.log
    if body.ids:
        ids = list(dict.fromkeys(body.ids))
        infos = [await log.delivery(i) for i in ids]
        unknown = [i for i, info in zip(ids, infos, strict=True) if not _is_dead(info)]
        if unknown:
            shown = ", ".join(map(str, unknown[:10])) + (", ..." if len(unknown) > 10 else "")
            raise HTTPException(404, f"no dead letter with id {shown}; nothing redriven")
        found = Counter(info.subscription for info in infos if info is not None)
    else:
        if not body.function and not body.all:
            raise HTTPException(400, "body: say what to redrive: ids, function, or all: true")
        counts = await log.counts()
        found = Counter(
            {
                name: statuses.get("dead", 0)
                for name, statuses in counts.items()
                if body.all or name == body.function
            }
        )
    would = sum(found.values())
    if body.dry_run:
        return {"redriven": 0, "dead": would, "dry_run": True}
    if body.ids:
        n = await log.redrive(delivery_ids=body.ids)
    elif body.function:
        n = await log.redrive(subscription=body.function)
    else:
        n = await log.redrive()
    appliance.wake(+found)
    return {"redriven": n, "dead": would, "dry_run": False}


def _is_dead(info: DeliveryInfo | None) -> bool:
    return info is not None and info.status == "dead"


@v1_router.post("/replay")
async def replay(body: ReplayRequest, request: Request) -> dict[str, Any]:
    """Deliver logged events again to a function or RouterConfig processor, by
    time received and subject, and only those its subscription takes unless
    `force`; at most MAX_REPLAY events in the range per request. `dry_run`
    only counts: `events` is how many would be (or were) delivered again."""
    appliance = appliance_of(request)
    subscription = appliance.subscription(body.function)
    if subscription is None:
        raise HTTPException(404, f"function {body.function!r} is not deployed")
    try:
        n = await appliance.log.replay(
            body.function,
            since=body.since,
            until=body.until,
            subjects=body.types or None,
            at_most=MAX_REPLAY,
            matches=None if body.force else subscription.matches,
            dry_run=body.dry_run,
        )
    except ReplayTooLarge as exc:
        raise HTTPException(400, f"body: {exc}") from None
    if not body.dry_run:
        appliance.wake({body.function: n})
    return {
        "events": n,
        "replayed": 0 if body.dry_run else n,
        "dry_run": body.dry_run,
        "force": body.force,
    }


@v1_router.get("/status")
async def status(request: Request) -> dict[str, Any]:
    appliance = appliance_of(request)
    # Deliveries by function and state (pending, leased, delivered, dead).
    return {**appliance.status(), "deliveries": await appliance.log.counts()}


_ONE_RANDOM = TriggerRequest.model_validate({})  # what an empty body asks for


@v1_router.post("/providers/{name}/trigger")
async def trigger(
    name: str, request: Request, body: Annotated[TriggerRequest, Body()] = _ONE_RANDOM
) -> dict[str, Any]:
    """Ask the simulator for events now (tests, demos): `count` operations, at
    most MAX_TRIGGER per request."""
    provider = appliance_of(request).provider(name)
    if provider is None or not hasattr(provider, "trigger"):
        raise HTTPException(404, f"no provider {name!r} that can be triggered")
    try:
        events = await provider.trigger(body.event_class, count=body.count, **body.overrides)
    except ValueError as exc:  # SimulationError: unknown class, nothing eligible, bad path
        raise HTTPException(422, str(exc)) from None
    except RuntimeError as exc:  # the provider is not running
        raise HTTPException(503, str(exc)) from None
    return {"events": [e.to_dict() for e in events]}


metrics_router = APIRouter(dependencies=[Depends(require_token)], tags=["metrics"])


@metrics_router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus exposition: counters as kept, gauges read from the log now."""
    appliance = appliance_of(request)
    live = await telemetry.read_live(appliance)
    return Response(appliance.metrics.render(live), media_type=CONTENT_TYPE_LATEST)


@metrics_router.get("/stats")
async def vebas_stats(request: Request) -> JSONResponse:
    """VEBA's `/stats` document (veba.api.stats), as a RouterConfig's metrics
    listener serves it, here behind the API token."""
    appliance = appliance_of(request)
    return JSONResponse(
        stats(appliance, started=appliance.started, listen=appliance.settings.listen)
    )
