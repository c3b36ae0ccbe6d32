"""The `Target` protocol: where a delivery goes (a local function, an HTTP sink)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from veba.events import Event

__all__ = ["Result", "Target"]

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
