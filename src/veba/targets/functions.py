"""Deliveries to a function running in this appliance's warm workers.

The body is the structured CloudEvent JSON, exactly what VEBA's OpenFaaS
processor posts, so VEBA functions that `json.loads(req)["data"]` run unchanged.
"""

from __future__ import annotations

import time

from veba.events import STRUCTURED_CONTENT_TYPE, Event
from veba.functions.supervisor import FunctionPool, Invocation
from veba.targets.base import Result

__all__ = ["FunctionTarget", "delivery_headers"]


def delivery_headers(event: Event, *, attempt: int, deadline: float | None) -> dict[str, str]:
    """The headers of a delivery to a function (the body is ``event.to_json()``)."""
    headers = {
        "Content-Type": STRUCTURED_CONTENT_TYPE,
        "Ce-Id": event.id,
        "Ce-Source": event.source,
        "Ce-Type": event.type,
        "Ce-Subject": event.subject,
        "X-Veba-Attempt": str(attempt),
    }
    if deadline is not None:
        headers["X-Veba-Deadline"] = f"{deadline:.6f}"
    return headers


class FunctionTarget:
    def __init__(self, name: str, pool: FunctionPool) -> None:
        self.name = name
        self.pool = pool

    async def deliver(self, event: Event, *, attempt: int, deadline: float) -> Result:
        headers = delivery_headers(event, attempt=attempt, deadline=deadline)
        outcome = await self.pool.invoke(
            Invocation(body=event.to_json(), headers=headers),
            timeout=max(deadline - time.time(), 0.001),
        )
        error = outcome.error
        if outcome.traceback:
            error = f"{error}\n{outcome.traceback}" if error else outcome.traceback
        if outcome.kind == "ok":
            return Result("ok", outcome.status, None, outcome.started, outcome.body)
        kind = outcome.kind if outcome.kind in ("timeout", "crash") else "error"
        return Result(kind, outcome.status, error, outcome.started, outcome.body[:1024])  # type: ignore[arg-type]
