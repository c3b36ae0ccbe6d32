"""`GET /api/v1/overview`: everything the dashboard shows, in one answer.

The series and per-function figures are the appliance's `Telemetry` (since it
started, in memory); backlog, lag, dead letters and sizes are read from the
log at the moment of the request (`read_live`, the same read as `/metrics`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from veba import __version__
from veba.api.auth import require_token
from veba.api.errors import StrictRoute
from veba.appliance import Appliance
from veba.eventlog.base import Backlog
from veba.observability import Live
from veba.telemetry import FunctionTelemetry, read_live

__all__ = ["Overview", "overview_router"]


class DeliverySeries(BaseModel):
    delivered: list[int]
    retried: list[int]
    dead: list[int]


class Series(BaseModel):
    """Counts per `step` seconds over the last hour, oldest first; the last
    bucket ends at `end` (epoch seconds) and is still filling."""

    step: int
    end: float
    events: list[int]
    deliveries: DeliverySeries


class LastError(BaseModel):
    at: float
    error: str  # scrubbed of the function's secrets
    event_id: str | None
    delivery_id: int | None


class FunctionOverview(BaseModel):
    name: str
    kind: Literal["function", "processor"]
    version: str | None  # the code's hash
    deployed: float | None
    state: str  # starting | ready | error
    workers: int  # running instances
    paused: bool
    rate: float  # attempts settled per second over the last 60 s
    p50_ms: float | None  # of the last 1000 attempts' durations
    p99_ms: float | None
    attempts: int  # since the appliance started
    errors: int  # attempts that failed (retried or dead) since it started
    in_flight: int
    backlog: int  # deliveries still to be made, now (the log)
    lag_seconds: float  # age of the oldest of them
    delivered: int  # since it started
    dead: int  # attempts that ended in the dead-letter queue since it started
    dlq: int  # its dead letters in the log now
    last_error: LastError | None


class ProviderOverview(BaseModel):
    name: str
    type: str
    state: str
    connected: bool | None
    source: str | None
    last_key: int | None
    lag: int | None  # events the vCenter has that are not taken yet
    lag_seconds: float | None
    last_error: str | None
    events: int
    rate: float | None  # the simulator's set rate (events/s)
    reconnects: int | None
    checkpoint_age_seconds: float | None


class DLQOverview(BaseModel):
    total: int


class LogOverview(BaseModel):
    size_bytes: int
    wal_bytes: int


class WebhookOverview(BaseModel):
    events: int  # accepted since the appliance started
    requests: dict[str, int]  # by HTTP status, since it started


class Overview(BaseModel):
    now: float
    started: float
    version: str
    series: Series
    functions: list[FunctionOverview]
    providers: list[ProviderOverview]
    dlq: DLQOverview
    log: LogOverview
    webhook: WebhookOverview


overview_router = APIRouter(
    prefix="/api/v1", dependencies=[Depends(require_token)], tags=["veba"], route_class=StrictRoute
)


@overview_router.get("/overview")
async def overview(request: Request) -> Overview:
    appliance: Appliance = request.app.state.appliance
    live = await read_live(appliance)
    telemetry = appliance.telemetry
    functions = [_function(appliance, live, name) for name in _names(appliance)]
    metrics = appliance.metrics
    webhook_events = metrics.registry.get_sample_value(
        "veba_events_ingested_total", {"via": "webhook"}
    )
    return Overview(
        now=live.now,
        started=appliance.started,
        version=__version__,
        series=Series.model_validate(telemetry.series(live.now)),
        functions=functions,
        providers=[_provider(status, live) for status in live.providers],
        dlq=DLQOverview(total=sum(queue.dead for queue in live.backlog.values())),
        log=LogOverview(size_bytes=live.size.bytes, wal_bytes=live.size.wal_bytes),
        webhook=WebhookOverview(
            events=int(webhook_events or 0), requests=_by_label(metrics.webhook_requests)
        ),
    )


def _names(appliance: Appliance) -> list[str]:
    return [d.definition.name for d in appliance.functions.all()] + [
        p.name for p in appliance.processors
    ]


def _function(appliance: Appliance, live: Live, name: str) -> FunctionOverview:
    seen: FunctionTelemetry = appliance.telemetry.function(name)
    queue = live.backlog.get(name, Backlog())
    deployment = appliance.functions.get(name)
    processor = appliance.processors.get(name)
    dispatcher: Any = None
    if deployment is not None:
        dispatcher = deployment.dispatcher
    elif processor is not None:
        dispatcher = processor.dispatcher
    p50, p99 = seen.percentile(0.5), seen.percentile(0.99)
    figures: dict[str, Any] = {
        "rate": round(seen.rate(live.now), 3),
        "p50_ms": None if p50 is None else round(p50 * 1000, 3),
        "p99_ms": None if p99 is None else round(p99 * 1000, 3),
        "attempts": seen.attempts,
        "errors": seen.errors,
        "in_flight": dispatcher.counts.in_flight if dispatcher is not None else 0,
        "backlog": queue.open,
        "lag_seconds": round(queue.lag(live.now), 3),
        "delivered": seen.delivered,
        "dead": seen.dead,
        "dlq": queue.dead,
        "last_error": LastError(**asdict(seen.last_error)) if seen.last_error else None,
        # Pausing is the dispatcher's (when it has it): leasing stops, events wait.
        "paused": bool(getattr(dispatcher, "paused", False)),
    }
    if deployment is not None:
        d = deployment.definition
        pool = deployment.pool
        return FunctionOverview(
            name=name,
            kind="function",
            version=d.code_hash or None,
            deployed=d.deployed_at or None,
            state=deployment.status,
            workers=int(pool.stats.get("alive", 0)) if pool is not None else 0,
            **figures,
        )
    return FunctionOverview(
        name=name,
        kind="processor",
        version=None,
        deployed=(processor.started or None) if processor is not None else None,
        state="ready" if dispatcher is not None else "starting",
        workers=0,
        **figures,
    )


def _provider(status: Mapping[str, Any], live: Live) -> ProviderOverview:
    name = str(status.get("name"))
    connected = status.get("connected")
    state = status.get("state") or ("connected" if connected else "disconnected")
    updated = live.checkpoints.get(name)

    def number(key: str) -> Any:
        value = status.get(key)
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None

    return ProviderOverview(
        name=name,
        type=str(status.get("type") or "provider"),
        state=str(state),
        connected=connected if isinstance(connected, bool) else None,
        source=str(status["source"]) if status.get("source") else None,
        last_key=number("last_key"),
        lag=number("lag"),
        lag_seconds=number("lag_seconds"),
        last_error=str(status["last_error"]) if status.get("last_error") else None,
        events=int(status.get("events") or 0),
        rate=number("rate"),
        reconnects=number("reconnects"),
        checkpoint_age_seconds=None if updated is None else round(live.now - updated, 3),
    )


def _by_label(counter: Any) -> dict[str, int]:
    """A one-label counter's totals by label value."""
    out: dict[str, int] = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                out[next(iter(sample.labels.values()))] = int(sample.value)
    return out
