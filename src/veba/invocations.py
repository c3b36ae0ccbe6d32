"""Asynchronous function calls (`/async-function/NAME`), kept in the event log.

A 202 means the call is durable: it is logged as an event of a reserved type
with one delivery, to that function, so it survives a crash and is retried
under the function's delivery policy like any event. On delivery the original
request (method, path, query, headers, body) is replayed to the function, and
the answer posted to the `X-Callback-Url` if one was given.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from veba.events import INVOCATION_TYPE, Event, format_time
from veba.functions.supervisor import Invocation

__all__ = ["INVOCATION_TYPE", "AsyncCall", "invocation_event", "read_invocation"]

# Headers a caller sent that the function should not see again on replay.
_DROP = frozenset({"authorization", "content-length", "host", "connection"})


@dataclass(frozen=True)
class AsyncCall:
    call_id: str
    function: str
    invocation: Invocation
    callback: str | None


def invocation_event(call: AsyncCall) -> Event:
    inv = call.invocation
    data = {
        "method": inv.method,
        "path": inv.path,
        "query": dict(inv.query),
        "headers": {k: v for k, v in inv.headers.items() if k.lower() not in _DROP},
        "body": base64.b64encode(inv.body).decode(),
        "callback": call.callback,
    }
    attrs = {
        "specversion": "1.0",
        "id": call.call_id,
        "source": f"/async-function/{call.function}",
        "type": INVOCATION_TYPE,
        "subject": call.function,
        "time": format_time(datetime.now(UTC)),
        "datacontenttype": "application/json",
    }
    return Event(attrs, data)


def read_invocation(event: Event) -> AsyncCall:
    data: Mapping[str, object] = event.data if isinstance(event.data, Mapping) else {}
    headers = data.get("headers")
    query = data.get("query")
    callback = data.get("callback")
    invocation = Invocation(
        body=base64.b64decode(str(data.get("body", ""))),
        headers=dict(headers) if isinstance(headers, Mapping) else {},
        method=str(data.get("method", "POST")),
        path=str(data.get("path", "/")),
        query=dict(query) if isinstance(query, Mapping) else {},
    )
    return AsyncCall(
        event.id, event.subject, invocation, callback if isinstance(callback, str) else None
    )
