"""`/api/v1/store/{namespace}/...`: the functions' key-value store over HTTP.

A function's workers call it with their pool's store token
(`VEBA_STORE_TOKEN`), which opens their own namespace only: another namespace
is a 403. The appliance's API token opens every namespace, for operators.

    GET    /api/v1/store/NS?prefix=P&limit=N   live entries, in key order
    GET    /api/v1/store/NS/KEY                one entry, or 404
    PUT    /api/v1/store/NS/KEY                {"value": JSON, "ttl": s, "expect_revision": n}
                                               200 entry, or 409 {"error", "current"}
    DELETE /api/v1/store/NS/KEY?expect_revision=n
                                               200 {"deleted": bool}, or 409
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse

from veba.api.auth import check_bearer
from veba.api.errors import StrictRoute
from veba.api.models import MAX_INT64, Limit, StorePutRequest
from veba.api.state import appliance_of
from veba.store import InvalidStoreRequest, RevisionMismatch, Store, ValueTooLarge

__all__ = ["require_store_access", "store_router"]


async def require_store_access(namespace: str, request: Request) -> None:
    """The appliance token opens every namespace; a function's store token its own."""
    appliance = appliance_of(request)
    if check_bearer(request.headers, appliance.token):
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    owner = appliance.store_tokens.namespace(given.strip()) if scheme.lower() == "bearer" else None
    if owner is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or unknown token: a function sends 'Authorization: Bearer"
            " $VEBA_STORE_TOKEN', an operator the appliance's API token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if owner != namespace:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"the store token of function {owner!r} opens namespace {owner!r} only,"
            f" not {namespace!r}",
        )


store_router = APIRouter(
    prefix="/api/v1/store/{namespace}",
    dependencies=[Depends(require_store_access)],
    tags=["store"],
    route_class=StrictRoute,
)


def _store(request: Request) -> Store:
    return appliance_of(request).store


def _bad(exc: InvalidStoreRequest) -> JSONResponse:
    return JSONResponse(
        {"error": str(exc)}, status_code=413 if isinstance(exc, ValueTooLarge) else 400
    )


def _conflict(exc: RevisionMismatch) -> JSONResponse:
    current = exc.current.to_dict() if exc.current else None
    return JSONResponse({"error": str(exc), "current": current}, status_code=409)


@store_router.get("")
@store_router.get("/", include_in_schema=False)  # the same listing, documented once
async def list_entries(
    namespace: str, request: Request, prefix: str = "", limit: Limit = 1000
) -> JSONResponse:
    try:
        entries = await _store(request).list(namespace, prefix=prefix, limit=limit)
    except InvalidStoreRequest as exc:
        return _bad(exc)
    return JSONResponse({"namespace": namespace, "entries": [entry.to_dict() for entry in entries]})


@store_router.get("/{key:path}")
async def get_entry(namespace: str, key: str, request: Request) -> JSONResponse:
    try:
        entry = await _store(request).get(namespace, key)
    except InvalidStoreRequest as exc:
        return _bad(exc)
    if entry is None:
        return JSONResponse({"error": f"no entry {key!r} in {namespace!r}"}, status_code=404)
    return JSONResponse(entry.to_dict())


@store_router.put("/{key:path}")
async def put_entry(
    namespace: str, key: str, body: StorePutRequest, request: Request
) -> JSONResponse:
    """Write an entry; its body is at most a store value's size (veba.api.limits)."""
    try:
        entry = await _store(request).put(
            namespace, key, body.value, ttl=body.ttl, expect_revision=body.expect_revision
        )
    except InvalidStoreRequest as exc:
        return _bad(exc)
    except RevisionMismatch as exc:
        return _conflict(exc)
    return JSONResponse(entry.to_dict())


@store_router.delete("/{key:path}")
async def delete_entry(
    namespace: str,
    key: str,
    request: Request,
    expect_revision: Annotated[int | None, Query(ge=0, le=MAX_INT64)] = None,
) -> JSONResponse:
    try:
        deleted = await _store(request).delete(namespace, key, expect_revision=expect_revision)
    except InvalidStoreRequest as exc:
        return _bad(exc)
    except RevisionMismatch as exc:
        return _conflict(exc)
    return JSONResponse({"deleted": deleted})
