"""`/api/v1/catalog`: every event type a function can subscribe to.

    GET /api/v1/catalog?search=WORDS&fields=true
        {"count", "types": [...], "vcenters": [{"name", "types", "error"}], "pyvmomi", "offline"}
    GET /api/v1/catalog/{type}?set=PATH=VALUE&add=PATH=VALUE
        the type's entry, with "sample" (a CloudEvent) and "sample_origin"
        (simulator, generic, or log: the latest logged event of a type that is
        not vSphere's)

Types are pyVmomi's event classes, the simulator's subjects, what each
connected vCenter's EventManager describes, and the subjects in the log, each
with `seen`: how many events of it the log holds.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from veba import catalog, strictjson
from veba.api.auth import require_token
from veba.api.errors import StrictRoute
from veba.api.state import appliance_of
from veba.appliance import Appliance

__all__ = ["catalog_router"]

catalog_router = APIRouter(
    prefix="/api/v1/catalog",
    dependencies=[Depends(require_token)],
    tags=["catalog"],
    route_class=StrictRoute,
)

_VCENTER_TIMEOUT = 30.0  # seconds to wait for a vCenter's descriptions (a login and a read)


def _counter(request: Request) -> catalog.SeenCounter:
    state = request.app.state
    counter: catalog.SeenCounter | None = getattr(state, "catalog_seen", None)
    if counter is None:
        counter = state.catalog_seen = catalog.SeenCounter()
    return counter


async def _descriptions(
    appliance: Appliance,
) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """Each vCenter provider's EventManager descriptions, and a status line per vCenter."""
    providers = [p for p in appliance.providers if hasattr(p, "event_types")]

    async def one(provider: Any) -> list[dict[str, Any]]:
        async with asyncio.timeout(_VCENTER_TIMEOUT):
            raw = await provider.event_types()
        return catalog.describe_event_info(raw)

    results = await asyncio.gather(*(one(p) for p in providers), return_exceptions=True)
    descriptions: dict[str, list[dict[str, Any]]] = {}
    status: list[dict[str, Any]] = []
    for provider, result in zip(providers, results, strict=True):
        if isinstance(result, BaseException):
            error = f"{type(result).__name__}: {result}".rstrip(": ")
            if isinstance(result, TimeoutError):
                error = f"no answer within {_VCENTER_TIMEOUT:.0f} s"
            status.append({"name": provider.name, "types": 0, "error": error})
        else:
            descriptions[provider.name] = result
            status.append({"name": provider.name, "types": len(result), "error": None})
    return descriptions, status


async def _catalog(request: Request) -> catalog.Catalog:
    appliance = appliance_of(request)
    (descriptions, status), seen = await asyncio.gather(
        _descriptions(appliance), _counter(request).counts(appliance.log)
    )
    types = await asyncio.to_thread(catalog.build, descriptions, seen)
    return catalog.Catalog(types, vcenters=status)


@catalog_router.get("")
async def list_types(
    request: Request, search: str | None = None, fields: bool = True
) -> dict[str, Any]:
    """Every event type, or those whose type, description or category has every
    word of `search`; `fields=false` leaves the data fields out."""
    merged = await _catalog(request)
    merged.types = catalog.search(merged.types, search)
    return merged.to_dict(fields=fields)


def _overrides(settings: list[str], param: str = "set") -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in settings:
        path, sep, raw = item.partition("=")
        if not sep or not path.strip():
            raise HTTPException(
                422, f"{param} {item!r}: expected PATH=VALUE, like data.Vm.Name=web-01"
            )
        try:
            value: Any = strictjson.loads(raw, f"query.{param} {path.strip()}")
        except strictjson.NotJSON:
            value = raw  # a plain word: the text itself
        except strictjson.JSONRefused as exc:  # NaN, a 65-bit integer, ...
            raise HTTPException(400, str(exc)) from None
        overrides[path.strip()] = value
    return overrides


@catalog_router.get("/{name}")
async def show_type(
    name: str,
    request: Request,
    settings: Annotated[list[str] | None, Query(alias="set", max_length=100)] = None,
    additions: Annotated[list[str] | None, Query(alias="add", max_length=100)] = None,
) -> dict[str, Any]:
    """One event type with a sample event of it."""
    merged = await _catalog(request)
    try:
        entry = merged.get(name)
    except catalog.UnknownEventType as exc:
        raise HTTPException(404, str(exc)) from None
    overrides = _overrides(settings or [])
    added = _overrides(additions or [], "add")
    if entry.vmomi_class is None and entry.seen:
        # Not a vSphere type (a webhook's): the newest logged event is the sample.
        records = await appliance_of(request).log.events(
            subject=entry.type, limit=1, newest_first=True
        )
        if records and not overrides and not added:
            return {**entry.to_dict(), "sample": records[0].event.to_dict(), "sample_origin": "log"}
    try:
        event, origin = await asyncio.to_thread(
            lambda: catalog.sample(entry, added=added, **overrides)
        )
    except (ValueError, TypeError, KeyError, IndexError) as exc:  # SimulationError, bad path
        raise HTTPException(422, f"{entry.type}: {exc}") from None
    return {**entry.to_dict(), "sample": event.to_dict(), "sample_origin": origin}
