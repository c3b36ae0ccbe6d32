"""The CloudEvents webhook: binary, structured and batch mode.

A 2xx answer means every event of the request is durable in the log; a
malformed request gets a 400 that names the problem and nothing of it is kept.

Who may post: the API token always; the webhook's own bearer token
(`--webhook-token`) or basic auth (`--webhook-user`/`--webhook-password`, a
RouterConfig's `eventProvider.webhook.auth`) when set; anyone only when the
operator opened it (`settings.webhook_open`). How much: `veba.api.limits`
bounds the body before it is read; each event of a batch must also stay within
the one-event limit. `veba.api.auth.CredentialsFirst` checks the credentials
before the body is read; the handler checks again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from veba.api.auth import webhook_authorised, webhook_refusal
from veba.api.errors import StrictRoute, error_response
from veba.api.limits import format_size
from veba.appliance import Appliance
from veba.eventlog import LogFull
from veba.events import BATCH_CONTENT_TYPE, STRUCTURED_CONTENT_TYPE, InvalidEvent, parse_http

if TYPE_CHECKING:
    from veba.observability import Metrics

__all__ = ["CountRequests", "webhook_router"]


_CLOUDEVENT: dict[str, Any] = {
    "type": "object",
    "required": ["specversion", "id", "source", "type"],
    "properties": {
        "specversion": {"type": "string", "enum": ["1.0"]},
        "id": {"type": "string", "minLength": 1},
        "source": {"type": "string", "minLength": 1},
        "type": {"type": "string", "minLength": 1},
        "subject": {"type": "string"},
        "time": {"type": "string", "format": "date-time"},
        "datacontenttype": {"type": "string"},
        "data": {},
    },
}
_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            STRUCTURED_CONTENT_TYPE: {"schema": _CLOUDEVENT},
            BATCH_CONTENT_TYPE: {"schema": {"type": "array", "items": _CLOUDEVENT}},
        },
    },
}
_ANSWERS: dict[int | str, dict[str, Any]] = {
    400: {"description": "not a CloudEvent; nothing of the request was kept"},
    401: {"description": "missing or wrong credentials"},
    413: {"description": "the body, or an event of a batch, is over its limit"},
    507: {"description": "the log cannot commit (disk full)"},
}


def webhook_router(path: str) -> APIRouter:
    router = APIRouter(route_class=StrictRoute)

    @router.post(
        path,
        tags=["webhook"],
        summary="Ingest CloudEvents",
        openapi_extra=_OPENAPI,
        responses=_ANSWERS,
    )
    async def ingest(request: Request) -> Response:
        appliance: Appliance = request.app.state.appliance
        settings = appliance.settings
        if not webhook_authorised(request, appliance):  # CredentialsFirst checked already
            return webhook_refusal(settings)
        body = await request.body()  # no larger than its limit (veba.api.limits)
        try:
            events = parse_http(request.headers, body)
        except InvalidEvent as exc:
            appliance.metrics.rejected.labels("webhook").inc()
            return error_response(400, str(exc))
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == BATCH_CONTENT_TYPE:  # one event's body was bounded already
            for index, event in enumerate(events):
                size = len(event.to_json())
                if size > settings.webhook_max_event:
                    appliance.metrics.rejected.labels("webhook").inc()
                    return error_response(
                        413,
                        f"event [{index}] is {size} bytes; an event may be"
                        f" {format_size(settings.webhook_max_event)} at most",
                    )
        try:
            result = await appliance.publish(events, via="webhook")
        except InvalidEvent as exc:
            appliance.metrics.rejected.labels("webhook").inc()
            return error_response(400, str(exc))
        except LogFull as exc:
            return error_response(507, str(exc))
        return JSONResponse({"accepted": result.accepted, "duplicates": result.duplicates})

    return router


class CountRequests:
    """ASGI: every answer on the webhook's path counted by HTTP status
    (`veba_webhook_requests_total`), the 401s and 413s of the middlewares it
    wraps (`CredentialsFirst`, `BodyLimit`) included; so it goes outermost."""

    def __init__(self, app: Any, *, path: str, metrics: Metrics) -> None:
        self.app = app
        self.path = path
        self.counter = metrics.webhook_requests

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") != self.path:
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets if nothing answers (the server's own 500)

        async def counted(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            self.counter.labels(str(status)).inc()
