"""The handler call a state decorator wraps: its event, its signature, its time.

Standard library only: this runs inside function venvs. `@idempotent` and
`@latest_only` find the CloudEvent among the handler's arguments whatever the
function's signature, and bound their waiting by the call's deadline.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from veba.sdk._call import deadline as _call_deadline
from veba.sdk.event import Event, MissingField, NotACloudEvent

__all__ = [
    "HandlerCall",
    "as_text",
    "budget_end",
    "digest_of",
    "find_call",
    "function_timeout",
    "lookup_key",
    "remaining_until",
    "scope_name",
]

_DEFAULT_TIMEOUT = 30.0  # the function's timeout when the appliance did not say
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


# --- finding the event among a handler's arguments ------------------------------------


@dataclass(frozen=True, slots=True)
class HandlerCall:
    """One call of a decorated handler: the event it handles, and what is known of it."""

    event: Event
    shape: str  # "plain" (python3), "http" (python3-http), "native", "other"
    deadline: float | None  # when this attempt times out (time.time()), if known


def _shape(value: Any) -> str:
    if isinstance(value, str | bytes | bytearray | memoryview):
        return "plain"
    if isinstance(getattr(value, "body", None), bytes | bytearray) and hasattr(value, "headers"):
        return "http"
    if isinstance(getattr(value, "attributes", None), dict) and hasattr(value, "data"):
        return "native"
    return "other"


def find_call(helper: str, fn: Callable[..., Any], args: Any, kwargs: Any) -> HandlerCall:
    event: Event | None = None
    shape = "other"
    found_deadline: float | None = None
    for value in (*args, *kwargs.values()):
        if event is None:
            try:
                event = Event(value)
                shape = _shape(value)
                continue
            except (NotACloudEvent, TypeError):
                pass
        given = getattr(value, "deadline", None)  # the veba-cloudevent ctx
        if isinstance(given, int | float) and not isinstance(given, bool):
            found_deadline = float(given)
    if event is None:
        raise NotACloudEvent(
            f"@{helper} on {fn.__qualname__}(): none of its arguments is a CloudEvent"
            " (expected the request text, the python3-http event, or the CloudEvent)"
        )
    running = _call_deadline()
    return HandlerCall(event, shape, running if running is not None else found_deadline)


# --- time and keys --------------------------------------------------------------------


def function_timeout(call: HandlerCall, now: float) -> float:
    """An upper bound of how long this call may still run: the function's timeout
    (set by the appliance), else what is left of the attempt, else 30 s."""
    raw = os.environ.get("VEBA_FUNCTION_TIMEOUT")
    try:
        timeout = float(raw) if raw else None
    except ValueError:
        timeout = None
    if timeout is not None and timeout > 0:
        return timeout
    if call.deadline is not None:
        return max(call.deadline - now, 0.0)
    return _DEFAULT_TIMEOUT


def budget_end(call: HandlerCall, now: float) -> float:
    """Until when this call may wait for another: its deadline less a margin, so it
    answers (and the delivery is retried) before it is killed."""
    end = call.deadline if call.deadline is not None else now + function_timeout(call, now)
    margin = min(1.0, max(end - now, 0.0) * 0.1)
    return end - margin


def lookup_key(call: HandlerCall, key: str | Callable[[Event], Any], helper: str) -> Any:
    if callable(key):
        value = key(call.event)
        if value is None:
            raise MissingField(
                f"key of @{helper}", call.event.id, call.event.subject, "the key function gave None"
            )
        return value
    return call.event.require(key)


def as_text(value: Any) -> str:
    """A key or payload as text; JSON with sorted keys, so equal values give equal text."""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def digest_of(*parts: str) -> str:
    """A short hash for storage keys; the parts are NUL-terminated, so ("ab", "c")
    and ("a", "bc") differ."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:40]


def scope_name(fn: Callable[..., Any], name: str | None) -> str:
    """The records' scope: ``name``, else the handler's qualified name, made safe for a key."""
    scope = name or str(getattr(fn, "__qualname__", "handler"))
    return _UNSAFE.sub("_", scope)[:100] or "handler"


def remaining_until(end: float) -> float:
    """Seconds from now until ``end`` (a ``time.time()``), never below zero."""
    return max(end - time.time(), 0.0)
