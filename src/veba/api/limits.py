"""How large a request body may be, checked before it is read whole.

`BodyLimit` wraps an app: a request whose `Content-Length` is over its route's
limit gets a 413 at once, nothing of the body read; a chunked one is counted
as it streams in and refused with a 413 the moment it passes the limit
(uvicorn reads ahead no more than 64 KiB). Either way memory stays bounded by
the limit, whatever a client sends.

The webhook's limits are the operator's (`veba serve --webhook-max-event`,
`--webhook-max-batch`): one structured or binary event, or a whole batch
(`application/cloudevents-batch+json`), whose events must each stay within the
event limit too (checked by the webhook once parsed). Other routes have fixed
limits, by what they carry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException

from veba.api.errors import error_response
from veba.events import BATCH_CONTENT_TYPE
from veba.settings import DEFAULT_BATCH_MAX, DEFAULT_EVENT_MAX, ApplianceSettings

__all__ = [
    "DEFAULT_BATCH_MAX",
    "DEFAULT_EVENT_MAX",
    "BodyLimit",
    "BodyLimits",
    "BodyTooLarge",
    "body_limits",
    "format_size",
    "parse_size",
]

KiB, MiB = 1 << 10, 1 << 20
DEPLOY_MAX = 256 * MiB  # a function's code, base64 tar.gz (its packages are built here)
STORE_MAX = 1 * MiB + 64 * KiB  # one store value (veba.store.MAX_VALUE_BYTES) and its envelope
API_MAX = 16 * MiB  # anything else: secrets, redrive ids, a function's request


def format_size(size: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", KiB)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} bytes"


_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]i?B?|B)?\s*$", re.IGNORECASE)


def parse_size(text: str, setting: str) -> int:
    """`1048576`, `512KiB`, `1MiB`, `16M` (binary units, as every unit here)."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"{setting} {text!r}: expected a size like 1MiB, 512KiB or 1048576")
    number, unit = int(match.group(1)), (match.group(2) or "B").upper()
    size = number * {"B": 1, "K": KiB, "M": MiB, "G": 1 << 30}[unit[0]]
    if size < 1 * KiB:
        raise ValueError(f"{setting} {text!r}: at least 1KiB")
    return size


class BodyTooLarge(HTTPException):
    """A body over its limit, found while it streamed in."""

    def __init__(self, message: str) -> None:
        super().__init__(413, message)


@dataclass(frozen=True)
class BodyLimits:
    webhook_path: str = "/webhook"
    event: int = DEFAULT_EVENT_MAX
    batch: int = DEFAULT_BATCH_MAX

    def limit(self, path: str, content_type: str) -> tuple[int, str]:
        """(bytes, what they are for) for a request to `path`."""
        if path == self.webhook_path:
            if content_type.split(";")[0].strip().lower() == BATCH_CONTENT_TYPE:
                return self.batch, "a batch of events"
            return self.event, "an event"
        if path == "/system/functions":
            return DEPLOY_MAX, "a deploy request"
        if path.startswith("/api/v1/store/"):
            return STORE_MAX, "a store request"
        return API_MAX, "a request body"


def body_limits(settings: ApplianceSettings) -> BodyLimits:
    return BodyLimits(settings.webhook_path, settings.webhook_max_event, settings.webhook_max_batch)


class BodyLimit:
    """ASGI middleware enforcing `BodyLimits` (see the module)."""

    def __init__(self, app: Any, *, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", ())}
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        limit, what = self.limits.limit(scope.get("path", ""), content_type)
        message = f"{what} may be {format_size(limit)} at most"
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            await error_response(413, f"{message}; this one is {int(length)} bytes")(
                scope, receive, send
            )
            return
        received = 0

        async def counted() -> Any:
            nonlocal received
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(f"{message}; this one is larger")
            return event

        await self.app(scope, counted, send)
