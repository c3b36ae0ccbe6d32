"""Deliveries to a function running in this appliance (warm workers or web apps).

For VEBA v0.7-shaped functions the body is the structured CloudEvent JSON,
exactly what VEBA's OpenFaaS processor posts, so VEBA functions that
`json.loads(req)["data"]` run unchanged. Functions that get VEBA v0.8's shape
(Knative function.yaml, or `veba.event-shape: v0.8`) get binary mode, as a
Knative broker sends: `ce-*` headers, the vCenter event as the body.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from veba.delivery import is_retryable
from veba.events import STRUCTURED_CONTENT_TYPE, Event
from veba.functions.runtime import FunctionRuntime, Invocation, Outcome
from veba.functions.supervisor import FunctionPool
from veba.invocations import INVOCATION_TYPE, AsyncCall, read_invocation
from veba.targets.base import Result
from veba.tracing import EventScope, trace_headers

__all__ = ["FunctionTarget", "delivery_headers", "delivery_request"]


def delivery_request(
    event: Event, *, attempt: int, deadline: float | None, binary: bool = False
) -> tuple[dict[str, str], bytes]:
    """Headers and body of a delivery to a function, structured or binary mode."""
    if not binary:
        return delivery_headers(event, attempt=attempt, deadline=deadline), event.to_json()
    headers, body = event.to_binary()
    headers.update(trace_headers(event))  # ce-traceparent too; HTTP templates read this one
    headers["X-Veba-Attempt"] = str(attempt)
    if deadline is not None:
        headers["X-Veba-Deadline"] = f"{deadline:.6f}"
    return headers, body


def delivery_headers(event: Event, *, attempt: int, deadline: float | None) -> dict[str, str]:
    """The headers of a structured delivery (the body is ``event.to_json()``)."""
    headers = {
        "Content-Type": STRUCTURED_CONTENT_TYPE,
        "Ce-Id": event.id,
        "Ce-Source": event.source,
        "Ce-Type": event.type,
        "Ce-Subject": event.subject,
        "X-Veba-Attempt": str(attempt),
        **trace_headers(event),
    }
    if deadline is not None:
        headers["X-Veba-Deadline"] = f"{deadline:.6f}"
    return headers


class FunctionTarget:
    def __init__(
        self,
        name: str,
        pool: FunctionRuntime,
        callbacks: httpx.AsyncClient | None = None,
        *,
        binary: bool = False,
    ) -> None:
        self.name = name
        self.pool = pool
        self.binary = binary  # CloudEvents binary mode (VEBA v0.8) rather than structured
        self._callbacks = callbacks
        # Warm workers take a call without a coroutine (`start`); web apps do not.
        self._submit = pool.submit if isinstance(pool, FunctionPool) else None

    def start(
        self, event: Event, *, attempt: int, deadline: float, scope: EventScope
    ) -> asyncio.Future[Any] | None:
        """`deliver` begun on a warm worker pool, for the dispatcher's quick path;
        None for an async call (its callback needs `deliver`) or a web app."""
        if self._submit is None or event.type == INVOCATION_TYPE:
            return None
        headers, body = delivery_request(
            event, attempt=attempt, deadline=deadline, binary=self.binary
        )
        timeout = max(deadline - time.time(), 0.001)
        return self._submit(Invocation(body=body, headers=headers), timeout, scope)

    def result_of(self, done: asyncio.Future[Any]) -> Result:
        if done.cancelled():
            return Result("crash", 0, "delivery cancelled")
        exc = done.exception()
        if exc is not None:
            return Result("crash", 0, f"{type(exc).__name__}: {exc}")
        outcome: Outcome = done.result()
        return _result(outcome)

    async def deliver(self, event: Event, *, attempt: int, deadline: float) -> Result:
        if event.type == INVOCATION_TYPE:
            call = read_invocation(event)
            return await self._async_call(call, attempt, deadline, trace_headers(event))
        headers, body = delivery_request(
            event, attempt=attempt, deadline=deadline, binary=self.binary
        )
        outcome = await self.pool.invoke(
            Invocation(body=body, headers=headers),
            timeout=max(deadline - time.time(), 0.001),
        )
        return _result(outcome)

    async def _async_call(
        self, call: AsyncCall, attempt: int, deadline: float, trace: dict[str, str]
    ) -> Result:
        inv = call.invocation
        headers = {k: v for k, v in inv.headers.items() if k.lower() not in trace}
        headers.update(trace)
        headers.update({"X-Call-Id": call.call_id, "X-Veba-Attempt": str(attempt)})
        headers["X-Veba-Deadline"] = f"{deadline:.6f}"
        outcome = await self.pool.invoke(
            Invocation(inv.body, headers, inv.method, inv.path, inv.query),
            timeout=max(deadline - time.time(), 0.001),
        )
        result = _result(outcome)
        # The caller hears once: on success, or on a failure no retry will mend.
        if call.callback and (result.ok or not is_retryable(result.kind, result.status)):
            await self._call_back(call, outcome)
        return result

    async def _call_back(self, call: AsyncCall, outcome: Outcome) -> None:
        if self._callbacks is None or call.callback is None:
            return
        headers = {
            "X-Call-Id": call.call_id,
            "X-Function-Status": str(outcome.status),
            "X-Function-Name": self.name,
        }
        try:
            await self._callbacks.post(call.callback, content=outcome.body, headers=headers)
        except httpx.HTTPError as exc:
            line = f"async call {call.call_id}: callback {call.callback} failed: {exc}"
            self.pool.log_sink(self.name, "system", line)


def _result(outcome: Outcome) -> Result:
    error = outcome.error
    if outcome.traceback:
        error = f"{error}\n{outcome.traceback}" if error else outcome.traceback
    if outcome.kind == "ok":
        return Result("ok", outcome.status, None, outcome.started, outcome.body)
    kind = outcome.kind if outcome.kind in ("timeout", "crash") else "error"
    return Result(kind, outcome.status, error, outcome.started, outcome.body[:1024])  # type: ignore[arg-type]
