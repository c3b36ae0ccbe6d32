"""OpenFaaS-style routes: /system/* and /function/*, so faas-cli habits carry over."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from veba import __version__
from veba.api.auth import require_token
from veba.api.errors import StrictRoute, error_response
from veba.api.models import (
    DeployRequest,
    RemoveFunctionRequest,
    RemoveSecretRequest,
    SecretRequest,
)
from veba.api.state import appliance_of
from veba.deployments import DeployError, FunctionBusy
from veba.eventlog import LogFull
from veba.functions.supervisor import Invocation, Outcome
from veba.invocations import AsyncCall, invocation_event
from veba.secrets import SecretError

__all__ = ["function_router", "function_routes", "system_router"]

system_router = APIRouter(
    prefix="/system",
    dependencies=[Depends(require_token)],
    tags=["system"],
    route_class=StrictRoute,
)


@system_router.get("/info")
async def info(request: Request) -> dict[str, Any]:
    return {
        "provider": {"provider": "veba", "orchestration": "processes", "version": __version__},
        "version": {"release": __version__},
        "arch": "x86_64",
    }


@system_router.get("/functions")
async def list_functions(request: Request) -> list[dict[str, Any]]:
    return [d.info() for d in appliance_of(request).functions.all()]


@system_router.get("/function/{name}")
async def get_function(name: str, request: Request) -> dict[str, Any]:
    deployment = appliance_of(request).functions.get(name)
    if deployment is None:
        raise HTTPException(404, f"function {name!r} is not deployed")
    return deployment.info()


@system_router.post("/functions")
@system_router.put("/functions")
async def deploy(body: DeployRequest, request: Request, stream: bool = False) -> Response:
    """Deploy or update a function. With `?stream=true` the answer is NDJSON:
    build progress lines, then one `result` or `error` line."""
    appliance = appliance_of(request)
    payload = body.payload()
    if not stream:
        try:
            deployment = await appliance.functions.deploy(payload, progress=lambda _: None)
        except DeployError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(deployment.info(), status_code=202)

    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    async def run() -> None:
        try:
            deployment = await appliance.functions.deploy(
                payload, progress=lambda line: queue.put_nowait({"progress": line})
            )
            queue.put_nowait({"result": deployment.info()})
        except DeployError as exc:
            queue.put_nowait({"error": str(exc)})
        except Exception as exc:  # report, don't hang the client
            queue.put_nowait({"error": f"deploy failed: {type(exc).__name__}: {exc}"})
        finally:
            queue.put_nowait(None)

    task = asyncio.create_task(run())

    async def lines() -> AsyncIterator[bytes]:
        while (item := await queue.get()) is not None:
            yield json.dumps(item).encode() + b"\n"
        await task

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@system_router.delete("/functions")
async def remove_function(body: RemoveFunctionRequest, request: Request) -> Response:
    name = body.functionName
    if not await appliance_of(request).functions.remove(name):
        raise HTTPException(404, f"function {name!r} is not deployed")
    return Response(status_code=202)


# -- secrets ------------------------------------------------------------------


@system_router.get("/secrets")
async def list_secrets(request: Request) -> list[dict[str, Any]]:
    """OpenFaaS's `[{name}]`, plus each secret's keys (null for a single value)."""
    store = appliance_of(request).secrets
    rows: list[dict[str, Any]] = []
    for name in await store.names():
        try:
            rows.append({"name": name, "keys": await store.keys(name)})
        except SecretError as exc:
            rows.append({"name": name, "keys": None, "error": str(exc)})
    return rows


class _BadSecret(ValueError):
    """A secret request body the API refuses (400), saying which field and why."""


_SECRET_SHAPE = "expected {name, value}, {name, rawValue (base64)} or {name, keys: {KEY: base64}}"


def _base64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise _BadSecret(f"{where}: not valid base64") from None


def _secret_content(body: SecretRequest) -> bytes | dict[str, bytes]:
    """The value or keys of OpenFaaS's body or veba's `keys` form."""
    if not body.name:
        raise _BadSecret(f"body.name: expected the secret's name; {_SECRET_SHAPE}")
    given = [f for f in ("value", "rawValue", "keys") if getattr(body, f) is not None]
    if len(given) != 1:
        raise _BadSecret(f"body: give exactly one of value, rawValue or keys; {_SECRET_SHAPE}")
    if body.value is not None:
        return body.value.encode()
    if body.rawValue is not None:
        return _base64(body.rawValue, "body.rawValue")
    keys = body.keys or {}
    if not keys:
        raise _BadSecret(
            "body.keys: expected an object of KEY: base64 value, with at least one key"
        )
    return {k: _base64(v, f"body.keys.{k}") for k, v in keys.items()}


@system_router.post("/secrets")
@system_router.put("/secrets")
async def put_secret(body: SecretRequest, request: Request) -> Response:
    try:
        content = _secret_content(body)
    except _BadSecret as exc:
        return error_response(400, str(exc))
    name, replace = body.name, body.replace or request.method == "PUT"
    appliance = appliance_of(request)
    try:
        if isinstance(content, bytes):
            replaced = await appliance.secrets.put(name, content, replace=replace)
        else:
            replaced = await appliance.secrets.put_keys(name, content, replace=replace)
    except SecretError as exc:
        return error_response(409 if "exists" in str(exc) else 400, str(exc))
    restarted = await appliance.functions.restart_using(name) if replaced else []
    return JSONResponse(
        {"name": name, "restarted": restarted},
        status_code=201 if request.method == "POST" else 200,
    )


@system_router.delete("/secrets")
async def remove_secret(body: RemoveSecretRequest, request: Request) -> Response:
    name = body.name
    appliance = appliance_of(request)
    users = [d.definition.name for d in appliance.functions.all() if name in d.definition.secrets]
    if users:
        raise HTTPException(409, f"secret {name!r} is used by function(s) {', '.join(users)}")
    try:
        await appliance.secrets.remove(name)
    except SecretError as exc:
        raise HTTPException(404, str(exc)) from None
    return Response(status_code=202)


# -- logs ---------------------------------------------------------------------


@system_router.get("/logs")
async def logs(
    request: Request,
    name: str,
    follow: bool = False,
    tail: Annotated[int, Query(ge=0, le=10_000, description="0: every line kept")] = 100,
) -> Response:
    appliance = appliance_of(request)
    hub = appliance.logs
    if appliance.functions.get(name) is None and not hub.tail(name, 1):
        raise HTTPException(404, f"function {name!r} is not deployed and has no log lines")

    async def lines() -> AsyncIterator[bytes]:
        for line in hub.tail(name, tail):
            yield json.dumps(line.to_dict()).encode() + b"\n"
        if follow:
            async for line in hub.follow(name):
                yield json.dumps(line.to_dict()).encode() + b"\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")


# -- invocation ---------------------------------------------------------------


async def _invocation(request: Request, path: str) -> Invocation:
    headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
    return Invocation(
        body=await request.body(),
        headers=headers,
        method=request.method,
        path="/" + path,
        query=dict(request.query_params),
    )


def _response(outcome: Outcome) -> Response:
    if outcome.kind in ("timeout", "crash"):
        return JSONResponse({"error": outcome.error, "kind": outcome.kind}, status_code=502)
    headers = {k: v for k, v in outcome.headers.items() if k.lower() != "content-length"}
    if outcome.error and outcome.status >= 400 and not outcome.body:
        return JSONResponse({"error": outcome.error}, status_code=outcome.status)
    return Response(outcome.body, status_code=outcome.status or 500, headers=headers)


async def invoke(name: str, request: Request, path: str = "") -> Response:
    try:
        outcome = await appliance_of(request).functions.invoke(
            name, await _invocation(request, path)
        )
    except KeyError:
        raise HTTPException(404, f"function {name!r} is not deployed or not ready") from None
    except FunctionBusy as exc:  # over maxInflight: OpenFaaS's watchdog answers 429 too
        return JSONResponse({"error": str(exc)}, status_code=429, headers={"Retry-After": "1"})
    return _response(outcome)


async def invoke_async(name: str, request: Request, path: str = "") -> Response:
    appliance = appliance_of(request)
    if appliance.functions.get(name) is None:
        raise HTTPException(404, f"function {name!r} is not deployed")
    call_id = request.headers.get("x-call-id") or str(uuid.uuid4())
    call = AsyncCall(
        call_id, name, await _invocation(request, path), request.headers.get("x-callback-url")
    )
    try:
        result = await appliance.enqueue(invocation_event(call), name)
    except LogFull as exc:
        return JSONResponse({"error": str(exc)}, status_code=507)
    if result.duplicates:  # the same X-Call-Id again: already queued, not run twice
        return Response(status_code=202, headers={"X-Call-Id": call_id, "X-Duplicate": "true"})
    return Response(status_code=202, headers={"X-Call-Id": call_id})


def function_routes(guard: Callable[[Request], Awaitable[None]]) -> APIRouter:
    """OpenFaaS's ``/function/NAME`` and ``/async-function/NAME``, behind ``guard``:
    the API token on the main listener, the worker check on the workers' gateway."""
    router = APIRouter(dependencies=[Depends(guard)], tags=["functions"])
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    # One route per method, so each is one operation with an id of its own.
    for method in methods:
        router.add_api_route("/function/{name}", invoke, methods=[method])
        router.add_api_route("/function/{name}/{path:path}", invoke, methods=[method])
    router.add_api_route("/async-function/{name}", invoke_async, methods=["POST"])
    router.add_api_route("/async-function/{name}/{path:path}", invoke_async, methods=["POST"])
    return router


function_router = function_routes(require_token)
