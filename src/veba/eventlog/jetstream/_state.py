"""A delivery's state as every node reads it: one JSON message per delivery in
the states stream (the last one per subject counts), written at each change
after its first lease. A delivery never leased has no state message: it is
pending, attempt 0, and what there is to know of it is in its message in the
deliveries stream (`DeliveryState.pending_from`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, cast

import orjson

from veba.eventlog.base import Attempt, DeliveryInfo, Status
from veba.eventlog.jetstream._names import token, untoken
from veba.events import Event

__all__ = ["DeliveryState", "delivery_headers"]

ERROR_LIMIT = 8192


def delivery_headers(
    delivery_id: int | None, seq: int, created: float, event: Event
) -> dict[str, str]:
    """What a delivery's message carries besides its event (the body)."""
    headers = {
        "Veba-Seq": str(seq),
        "Veba-Created": repr(created),
        "Veba-Event-Id": token(event.id),
        "Veba-Event-Source": token(event.source),
        "Veba-Subject": token(event.subject),
    }
    if delivery_id is not None:  # redriven: it keeps its id (else its own stream seq)
        headers["Veba-Delivery"] = str(delivery_id)
    return headers


@dataclass(slots=True)
class DeliveryState:
    id: int
    seq: int
    subscription: str
    event_id: str
    event_source: str
    subject: str
    status: Status = "pending"
    attempts: int = 0
    # attempts - num_delivered of its message: down one per release (a redelivery
    # that is no attempt), up one per retry in place (an attempt with no
    # redelivery). A message's first delivery always has 0.
    adjust: int = 0
    created: float = 0.0
    available_at: float = 0.0
    started: float | None = None
    finished: float | None = None
    last_status: int | None = None
    last_error: str | None = None
    history: list[Attempt] = field(default_factory=list)  # failed attempts

    @classmethod
    def pending_from(
        cls, delivery_id: int, subscription: str, headers: Mapping[str, str]
    ) -> DeliveryState:
        created = float(headers["Veba-Created"])
        return cls(
            id=delivery_id,
            seq=int(headers["Veba-Seq"]),
            subscription=subscription,
            event_id=untoken(headers["Veba-Event-Id"]),
            event_source=untoken(headers["Veba-Event-Source"]),
            subject=untoken(headers["Veba-Subject"]),
            created=created,
            available_at=created,
        )

    def failed(self, attempt: Attempt) -> None:
        error = attempt.error[:ERROR_LIMIT] if attempt.error else None
        self.history.append(
            Attempt(
                attempt.attempt,
                attempt.started,
                attempt.finished,
                attempt.outcome,
                attempt.status,
                error,
            )
        )
        self.last_status, self.last_error = attempt.status, error

    def to_json(self) -> bytes:
        # Field by field, not `asdict` (which copies deeply): one is written per
        # lease and per ack. A failed attempt is a row, in Attempt's field order.
        data: dict[str, Any] = {name: getattr(self, name) for name in _FIELDS}
        data["history"] = [[getattr(a, name) for name in _ATTEMPT_FIELDS] for a in self.history]
        return orjson.dumps(data)

    @classmethod
    def from_json(cls, body: bytes) -> DeliveryState:
        data: dict[str, Any] = orjson.loads(body)
        history = [Attempt(*row) for row in data.pop("history")]
        data["status"] = cast(Status, data["status"])
        return cls(**data, history=history)

    def info(self, *, with_history: bool = True) -> DeliveryInfo:
        history: tuple[Attempt, ...] = ()
        if with_history:
            history = tuple(self.history)
            if self.status == "delivered" and self.finished is not None:
                ok = Attempt(
                    self.attempts,
                    self.started or self.finished,
                    self.finished,
                    "ok",
                    self.last_status or 200,
                )
                history = (*history, ok)
        return DeliveryInfo(
            id=self.id,
            seq=self.seq,
            subscription=self.subscription,
            event_id=self.event_id,
            event_source=self.event_source,
            subject=self.subject,
            status=self.status,
            attempts=self.attempts,
            created=self.created,
            available_at=self.available_at,
            finished=self.finished,
            last_status=self.last_status,
            last_error=self.last_error,
            history=history,
        )


_FIELDS = tuple(f.name for f in fields(DeliveryState) if f.name != "history")
_ATTEMPT_FIELDS = tuple(f.name for f in fields(Attempt))
