"""The call being run: what the worker (``worker.py``) tells the SDK about it.

The worker registers itself as ``sys.modules["_veba_worker"]`` and sets its
`current_call()` around each handler call; outside a worker there is no call.
"""

from __future__ import annotations

import sys
import time
from typing import Any

__all__ = ["attempt", "call_event_ids", "current_call", "deadline", "remaining"]


def current_call() -> Any | None:
    """The worker's `CallInfo` for the call being run, or None."""
    worker = sys.modules.get("_veba_worker")
    get = getattr(worker, "current_call", None)
    return get() if callable(get) else None


def deadline() -> float | None:
    """When the current delivery attempt times out (``time.time()`` seconds), or None.

    The worker sets it for each call from the delivery's deadline and the function's
    timeout; outside a call (a plain unit test) it is None: no limit known.
    """
    call = current_call()
    value = getattr(call, "deadline", None)
    return float(value) if isinstance(value, int | float) else None


def remaining() -> float | None:
    """Seconds left before the current attempt times out, or None when unknown."""
    end = deadline()
    return None if end is None else end - time.time()


def attempt() -> int:
    """The current delivery attempt, 1 for the first (and outside a call)."""
    value = getattr(current_call(), "attempt", 1)
    return value if isinstance(value, int) else 1


def call_event_ids() -> tuple[str | None, str | None]:
    """(id, subject) of the event being handled, or (None, None)."""
    call = current_call()
    ids = getattr(call, "event_ids", None)
    if callable(ids):
        got = ids()
        if isinstance(got, tuple) and len(got) == 2:
            return got[0], got[1]
    return None, None
