"""The CloudEvents webhook: binary, structured and batch mode.

A 2xx answer means every event of the request is durable in the log; a
malformed request gets a 400 that names the problem and nothing of it is kept.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from veba.api.auth import check_basic, check_bearer
from veba.appliance import Appliance
from veba.eventlog import LogFull
from veba.events import InvalidEvent, parse_http

__all__ = ["webhook_router"]


def _authorised(request: Request, appliance: Appliance) -> bool:
    settings = appliance.settings
    if settings.webhook_basic_auth is not None:
        return check_basic(request, *settings.webhook_basic_auth)
    if settings.webhook_bearer_token is not None:
        return check_bearer(request, settings.webhook_bearer_token)
    return True


def webhook_router(path: str) -> APIRouter:
    router = APIRouter()

    @router.post(path, tags=["webhook"], summary="Ingest CloudEvents")
    async def ingest(request: Request) -> Response:
        appliance: Appliance = request.app.state.appliance
        if not _authorised(request, appliance):
            return JSONResponse(
                {"error": "webhook authentication failed"},
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="veba webhook"'},
            )
        body = await request.body()
        try:
            events = parse_http(request.headers, body)
        except InvalidEvent as exc:
            appliance.metrics.rejected.labels("webhook").inc()
            return JSONResponse({"error": str(exc)}, status_code=400)
        try:
            result = await appliance.publish(events, via="webhook")
        except InvalidEvent as exc:
            appliance.metrics.rejected.labels("webhook").inc()
            return JSONResponse({"error": str(exc)}, status_code=400)
        except LogFull as exc:
            return JSONResponse({"error": str(exc)}, status_code=507)
        return JSONResponse({"accepted": result.accepted, "duplicates": result.duplicates})

    return router
