"""The seam between providers (where events come from) and the log they publish into."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from veba.events import Event

__all__ = ["EventSink", "Provider"]


class EventSink(Protocol):
    """Where a provider publishes: in practice the appliance, in tests a list."""

    async def publish(
        self, events: Sequence[Event], *, checkpoint: tuple[str, str] | None = None
    ) -> object:
        """Return once the events and the checkpoint `(provider_name, value)` are
        durable, in one transaction. Whatever it returns is the sink's business."""
        ...

    async def checkpoint(self, provider_name: str) -> str | None:
        """The last checkpoint value committed for `provider_name`, if any."""
        ...


class Provider(Protocol):
    name: str

    async def run(self, sink: EventSink) -> None:
        """Publish into `sink` until cancelled; transient trouble is retried, not raised."""
        ...

    def status(self) -> dict[str, Any]:
        """At least `name`, `type`, `connected`, `last_key`, `events`, `last_error`."""
        ...
