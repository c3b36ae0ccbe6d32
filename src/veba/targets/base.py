"""The `Target` protocol: where a delivery goes (a local function, an HTTP sink)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from veba.events import Event
from veba.tracing import EventScope

__all__ = ["Result", "StartingTarget", "Target"]

Kind = Literal["ok", "error", "timeout", "crash", "transport"]


@dataclass(frozen=True, slots=True)
class Result:
    """What one attempt came to. `status` is HTTP-like; 0 when there was no answer."""

    kind: Kind
    status: int
    error: str | None = None
    started: float | None = None
    body: bytes = b""

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


class Target(Protocol):
    name: str

    async def deliver(self, event: Event, *, attempt: int, deadline: float) -> Result:
        """Deliver one event; never raises for the target's own faults."""
        ...


@runtime_checkable
class StartingTarget(Target, Protocol):
    """A target that can also begin a delivery without a coroutine of its own:
    the dispatcher's quick path, one future and one callback a delivery instead
    of a task (what most of a busy dispatcher's time went on)."""

    def start(
        self, event: Event, *, attempt: int, deadline: float, scope: EventScope
    ) -> asyncio.Future[Any] | None:
        """The delivery begun: a future that is done when it is (`result_of` reads
        it; cancelling it forgets the delivery). None when this event needs
        `deliver`: nothing was begun."""
        ...

    def result_of(self, done: asyncio.Future[Any]) -> Result:
        """What a future from `start` came to; never raises."""
        ...
