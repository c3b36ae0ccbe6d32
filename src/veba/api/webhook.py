"""The CloudEvents webhook: binary, structured and batch mode.

A 2xx answer means every event of the request is durable in the log; a
malformed request gets a 400 that names the problem and nothing of it is kept.

Who may post: the API token always; the webhook's own bearer token
(`--webhook-token`) or basic auth (`--webhook-user`/`--webhook-password`, a
RouterConfig's `eventProvider.webhook.auth`) when set; anyone only when the
operator opened it (`settings.webhook_open`). How much: `veba.api.limits`
bounds the body before it is read; each event of a batch must also stay within
the one-event limit.

The hot path is `WebhookIngest`, a plain ASGI layer outermost on every app that
serves the webhook: a POST to the webhook's path is checked (credentials before
the body is read, then its size as it streams in), parsed and logged there,
without the framework's routing, dependencies and middleware, which cost more
than the ingest itself at one event per request. The FastAPI route below does
the same through `ingest` for whatever reaches it (and documents the webhook).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from veba.api.auth import webhook_authorised, webhook_refusal
from veba.api.errors import INTERNAL_ERROR, StrictRoute
from veba.api.limits import body_limits, format_size
from veba.appliance import Appliance
from veba.eventlog import LogFull
from veba.events import BATCH_CONTENT_TYPE, STRUCTURED_CONTENT_TYPE, InvalidEvent, parse_http

__all__ = ["WebhookIngest", "ingest", "webhook_router"]

log = logging.getLogger("veba.api")


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
    503: {"description": "the log cannot answer now (NATS away or electing): send again"},
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
    async def webhook(request: Request) -> Response:
        appliance: Appliance = request.app.state.appliance
        if not webhook_authorised(request.headers, appliance):  # CredentialsFirst did too
            return webhook_refusal(appliance.settings)
        body = await request.body()  # no larger than its limit (veba.api.limits)
        status, answer = await ingest(appliance, request.headers, body)
        headers = {"Retry-After": "1"} if status == 503 else None
        return Response(answer, status_code=status, media_type="application/json", headers=headers)

    return router


async def ingest(
    appliance: Appliance, headers: Mapping[str, str], body: bytes
) -> tuple[int, bytes]:
    """Parse and log the events of one webhook request whose credentials and
    size were checked: (status, JSON answer). 200 only once all are durable."""
    settings = appliance.settings
    try:
        events = parse_http(headers, body)
    except InvalidEvent as exc:
        appliance.metrics.rejected_webhook.inc()
        return 400, _error(str(exc))
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == BATCH_CONTENT_TYPE:  # one event's body was bounded already
        for index, event in enumerate(events):
            size = len(event.to_json())
            if size > settings.webhook_max_event:
                appliance.metrics.rejected_webhook.inc()
                return 413, _error(
                    f"event [{index}] is {size} bytes; an event may be"
                    f" {format_size(settings.webhook_max_event)} at most"
                )
    try:
        result = await appliance.publish(events, via="webhook")
    except InvalidEvent as exc:
        appliance.metrics.rejected_webhook.inc()
        return 400, _error(str(exc))
    except LogFull as exc:
        return 507, _error(str(exc))
    except OSError as exc:
        # The log out of reach for now (a NATS cluster electing a leader, say):
        # nothing is acknowledged, and the sender may try again, not a 500.
        log.warning("webhook: the event log could not take %d event(s): %s", len(events), exc)
        return 503, _error(f"the event log cannot take events now, try again: {exc}")
    return 200, b'{"accepted":%d,"duplicates":%d}' % (result.accepted, result.duplicates)


def _error(message: str) -> bytes:
    return orjson.dumps({"error": message})


_JSON = (b"content-type", b"application/json")
_RETRY_SOON = (b"retry-after", b"1")


class WebhookIngest:
    """ASGI: POSTs to the webhook's path handled here (see the module), every
    answer on that path counted by HTTP status (`veba_webhook_requests_total`);
    anything else passes through to `app`. Goes outermost, so that nothing of
    the framework runs for an event."""

    def __init__(self, app: Any, *, appliance: Appliance) -> None:
        self.app = app
        self.appliance = appliance
        self.path = appliance.settings.webhook_path
        self.limits = body_limits(appliance.settings)
        self.count = appliance.metrics.webhook_answer

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
        elif scope["method"] != "POST":
            await self._passed_on(scope, receive, send)
        else:
            try:
                answer = await self._post(scope, receive)
            except Exception:
                log.exception("POST %s failed", self.path)
                answer = 500, _error(INTERNAL_ERROR), ()
            if answer is not None:
                status, body, extra = answer
                headers = [_JSON, (b"content-length", b"%d" % len(body)), *extra]
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                self.count(status)

    async def _post(
        self, scope: Any, receive: Any
    ) -> tuple[int, bytes, tuple[tuple[bytes, bytes], ...]] | None:
        """The answer to a POST, or None if the client went away before it was read."""
        headers: dict[str, str] = {}
        for name, value in reversed(scope["headers"]):  # the first of a repeated header wins
            headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        appliance = self.appliance
        if not webhook_authorised(headers, appliance):  # before a byte of the body is read
            refusal = webhook_refusal(appliance.settings)
            challenge = (b"www-authenticate", refusal.headers["www-authenticate"].encode())
            return 401, bytes(refusal.body), (challenge,)
        limit, what = self.limits.limit(self.path, headers.get("content-type", ""))
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            message = f"{what} may be {format_size(limit)} at most; this one is {int(length)} bytes"
            return 413, _error(message), ()
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > limit:
                return (
                    413,
                    _error(f"{what} may be {format_size(limit)} at most; this one is larger"),
                    (),
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        status, answer = await ingest(appliance, headers, b"".join(chunks))
        return status, answer, (_RETRY_SOON,) if status == 503 else ()

    async def _passed_on(self, scope: Any, receive: Any, send: Any) -> None:
        status = 500  # what the client gets if nothing answers (the server's own 500)

        async def counted(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            self.count(status)
