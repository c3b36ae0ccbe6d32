"""`@latest_only`: drop an event that is not newer than the last one seen for its key.

Standard library only: this runs inside function venvs. The watermark of each
key lives in the function's namespace of the appliance's store (`veba.sdk._store`).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from typing import Any, ParamSpec

from veba.sdk._handler_call import (
    HandlerCall,
    as_text,
    budget_end,
    digest_of,
    find_call,
    lookup_key,
    remaining_until,
    scope_name,
)
from veba.sdk._store import (
    REQUEST_TIMEOUT,
    RevisionConflict,
    StoreClient,
    StoreUnavailable,
    default_client,
)
from veba.sdk.event import Event, MissingField
from veba.sdk.log import get_logger

__all__ = ["latest_only"]

P = ParamSpec("P")


def latest_only(
    key: str | Callable[[Event], Any],
    *,
    order_by: str = "data.Key",
    name: str | None = None,
    store: StoreClient | None = None,
    on_skip: Callable[[str], Any] | None = None,
) -> Callable[[Callable[P, Any]], Callable[P, Any]]:
    """Drop an event that is not newer than the last one seen for its key.

    ``key``: what the events are about, a dotted path or a function of the `Event`
    (``"data.Vm.Vm.Value"``: one watermark per VM, per event source). ``order_by``:
    the number that orders them (vCenter's event ``Key``). The watermark is moved
    by compare-and-set, so concurrent workers never move it back, and before the
    handler runs, so an older event arriving meanwhile is dropped too. A
    redelivery of the very event that set the watermark (a failed attempt) runs
    again. A dropped event returns, by signature: python3 ``{"skipped": true,
    "reason": ...}``; python3-http that as the body of a 200 with header
    ``X-Veba-Skipped``; veba-cloudevent the same as (body, 200, headers); any
    other function None. ``on_skip(reason)`` returns something else instead.
    """

    def decorate(func: Callable[P, Any]) -> Callable[P, Any]:
        scope = scope_name(func, name)

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            call = find_call("latest_only", func, args, kwargs)
            event = call.event
            subject = as_text(lookup_key(call, key, "latest_only"))
            order = _order(call, order_by)
            client = store or default_client()
            storage_key = f"latest.{scope}.{digest_of(event.source or '', subject)}"
            reason = _advance(client, storage_key, call, subject, order)
            if reason is None:
                return func(*args, **kwargs)
            get_logger(event, helper="latest_only").info(
                "skipped: " + reason, key=subject[:200], order=order
            )
            if on_skip is not None:
                return on_skip(reason)
            return _skipped(call.shape, reason)

        return wrapper

    return decorate


def _order(call: HandlerCall, path: str) -> float:
    value = call.event.require(path)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MissingField(path, call.event.id, call.event.subject, "it is not a number")
    return value


def _advance(
    client: StoreClient, storage_key: str, call: HandlerCall, subject: str, order: float
) -> str | None:
    """Move the watermark to ``order``; None to run the call, else why it is dropped."""
    event = call.event
    end = budget_end(call, time.time())
    timeout = min(REQUEST_TIMEOUT, max(remaining_until(end), 1.0))
    current = client.get(storage_key, timeout=timeout)
    while True:
        if current is not None and isinstance(current.value, dict):
            mark = current.value.get("order")
            seen = current.value.get("event")
            if isinstance(mark, int | float):
                if order < mark or (order == mark and seen != event.id):
                    return (
                        f"{_order_text(order)} is not newer than {_order_text(mark)}"
                        f" (event {seen}) for {subject[:200]}"
                    )
                if order == mark:
                    return None  # a redelivery of the event that set the watermark
        watermark = {
            "order": order,
            "event": event.id,
            "key": subject[:256],
            "source": event.source,
            "subject": event.subject,
            "seen": time.time(),
        }
        try:
            client.put(
                storage_key,
                watermark,
                expect_revision=current.revision if current is not None else 0,
                timeout=timeout,
            )
            return None
        except RevisionConflict as conflict:
            current = conflict.current  # another worker moved it: judge again
            if remaining_until(end) <= 0:
                raise StoreUnavailable(
                    f"could not move the watermark of {subject[:200]} before the deadline"
                ) from conflict


def _order_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _skipped(shape: str, reason: str) -> Any:
    note = {"skipped": True, "reason": reason}
    headers = {"X-Veba-Skipped": "latest_only"}
    if shape == "http":
        return {"statusCode": 200, "body": note, "headers": headers}
    if shape == "native":
        return note, 200, headers
    if shape == "plain":
        return note
    return None
