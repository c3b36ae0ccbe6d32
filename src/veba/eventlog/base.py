"""The `EventLog` protocol: what the rest of the appliance needs from a durable log.

Every implementation (SQLite now, NATS JetStream later) passes the same
conformance suite in tests/eventlog/conformance.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from veba.events import Event

__all__ = [
    "AppendResult",
    "Attempt",
    "Backlog",
    "Checkpoint",
    "Delivery",
    "DeliveryInfo",
    "EventLog",
    "EventRecord",
    "LogFull",
    "LogSize",
    "Route",
    "Status",
    "SubjectCounts",
]

Status = Literal["pending", "leased", "delivered", "dead"]

# Given an event, the names of the subscriptions that must receive it.
Route = Callable[[Event], Sequence[str]]


class LogFull(OSError):
    """The log could not commit (disk full, read-only); nothing of that call was kept."""


class LogUnavailable(OSError):
    """The log's servers cannot answer now (NATS without a quorum, or out of
    reach); whether that call was kept is not known: try it again."""


class ReplayTooLarge(ValueError):
    """A replay that would deliver more events again than its caller allows."""

    def __init__(self, count: int, at_most: int) -> None:
        super().__init__(
            f"the replay would deliver {count} events again; at most {at_most} per"
            " request: narrow it with since, until or types"
        )
        self.count = count
        self.at_most = at_most


@dataclass(frozen=True, slots=True)
class AppendResult:
    accepted: int
    duplicates: int
    # subscription name -> number of new deliveries, so dispatchers can be woken.
    deliveries: dict[str, int] = field(default_factory=dict)
    # (seq, index in the appended sequence) of each event that was new, in log
    # order, and when they were received: what the live feed (veba.feed) shows.
    logged: tuple[tuple[int, int], ...] = ()
    received: float = 0.0
    # Deliveries leased in the same transaction (`append(lease=...)`): attempt 1,
    # in log order. Counted in `deliveries` too.
    leased: tuple[Delivery, ...] = ()


@dataclass(frozen=True, slots=True)
class SubjectCounts:
    """Events by (subject, type) with a seq in (after, upto]."""

    upto: int
    counts: tuple[tuple[str, str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event leased to one subscription for one attempt."""

    id: int
    seq: int
    subscription: str
    event: Event
    attempt: int  # 1 for the first attempt
    available_at: float  # when this attempt may start (ordered subscriptions wait for it)


@dataclass(frozen=True, slots=True)
class Attempt:
    attempt: int
    started: float
    finished: float
    outcome: str  # "ok" | "error" | "timeout" | "crash"
    status: int
    error: str | None = None


@dataclass(frozen=True, slots=True)
class DeliveryInfo:
    id: int
    seq: int
    subscription: str
    event_id: str
    event_source: str
    subject: str
    status: Status
    attempts: int
    created: float
    available_at: float
    finished: float | None
    last_status: int | None
    last_error: str | None
    history: tuple[Attempt, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class EventRecord:
    seq: int
    received: float
    event: Event

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "received": self.received, "event": self.event.to_dict()}


@dataclass(frozen=True, slots=True)
class Backlog:
    """One subscription's deliveries as they stand: those still to be made
    (pending or leased), when the oldest of them was created, its dead letters."""

    open: int = 0
    oldest: float | None = None  # `created` of the oldest open delivery
    dead: int = 0

    def lag(self, now: float) -> float:
        """How long the oldest open delivery has waited, in seconds (0 when none)."""
        return 0.0 if self.oldest is None else max(0.0, now - self.oldest)


@dataclass(frozen=True, slots=True)
class LogSize:
    bytes: int  # what the log takes on disk (SQLite: the database file)
    wal_bytes: int  # written but not yet folded into it (SQLite: the -wal file); 0 if none


@dataclass(frozen=True, slots=True)
class Checkpoint:
    name: str  # the provider's
    value: str
    updated: float  # when it was last written


class EventLog(Protocol):
    """A durable, deduplicating event log with per-subscription delivery state."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def append(
        self,
        events: Sequence[Event],
        *,
        route: Route,
        checkpoint: tuple[str, str] | None = None,
        lease: Mapping[str, tuple[int, float]] | None = None,
    ) -> AppendResult:
        """Store new events (dedup on (source, id)) with their deliveries and the
        provider checkpoint, in one transaction. Returns once durable.

        `lease`: subscription -> (at most how many, for how long): that many
        deliveries are leased as part of the append (attempt 1) and come back in
        `AppendResult.leased`; the rest stay pending. A dispatcher asks only when
        its subscription has no backlog, and then they are the new events'
        deliveries in log order (with a backlog, which ones is the log's choice:
        SQLite takes new ones, JetStream's shared queue the oldest). So a
        dispatcher with room takes new events without a lease of its own."""
        ...

    async def get_checkpoint(self, name: str) -> str | None: ...

    async def lease(
        self, subscription: str, limit: int, ttl: float, *, include_delayed: bool = False
    ) -> list[Delivery]:
        """Lease up to `limit` open deliveries in log order: pending ones whose time
        has come (any pending one with `include_delayed`, for ordered subscriptions)
        and leased ones whose lease expired. Each lease counts one attempt."""
        ...

    async def extend(self, delivery_ids: Sequence[int], ttl: float) -> None: ...

    async def ack(self, delivery_id: int, attempt: Attempt) -> None:
        """The attempt succeeded: the delivery is done."""
        ...

    async def ack_many(self, acks: Sequence[tuple[int, Attempt]]) -> None:
        """`ack` for many deliveries in one write."""
        ...

    async def retry(
        self,
        delivery_id: int,
        attempt: Attempt,
        available_at: float,
        *,
        lease_ttl: float | None = None,
    ) -> None:
        """The attempt failed: try again no earlier than `available_at`.

        Without `lease_ttl` the delivery goes back to pending for a later lease.
        With it the caller keeps the lease and retries in place (ordered
        subscriptions must, so no later event of the same key overtakes it); the
        next attempt is counted now and the lease runs to `available_at + lease_ttl`.
        """
        ...

    async def dead(self, delivery_id: int, attempt: Attempt) -> None:
        """The attempt failed for the last time: move the delivery to the dead-letter queue."""
        ...

    async def release(self, delivery_ids: Sequence[int]) -> None:
        """Give leased deliveries back untouched (shutdown, undeploy); the attempt is not counted."""
        ...

    async def redrive(
        self, *, delivery_ids: Sequence[int] | None = None, subscription: str | None = None
    ) -> int:
        """Move dead deliveries back to pending with a fresh attempt count."""
        ...

    async def replay(
        self,
        subscription: str,
        *,
        since: float | None = None,
        until: float | None = None,
        subjects: Sequence[str] | None = None,
        at_most: int | None = None,
        matches: Callable[[Event], bool] | None = None,
        dry_run: bool = False,
    ) -> int:
        """Create new deliveries to `subscription` for logged events received in a
        range (and, with `matches`, that it takes: the subscriber's own rule);
        `ReplayTooLarge`, and nothing done, if the range holds more than `at_most`.
        Returns how many; `dry_run` only counts them."""
        ...

    async def events(
        self,
        *,
        after_seq: int = 0,
        limit: int = 100,
        subject: str | None = None,
        newest_first: bool = False,
    ) -> list[EventRecord]: ...

    async def event(self, event_id: str) -> EventRecord | None: ...

    async def deliveries(
        self,
        *,
        subscription: str | None = None,
        status: Status | None = None,
        event_id: str | None = None,
        limit: int = 100,
        with_history: bool = False,
    ) -> list[DeliveryInfo]: ...

    async def delivery(self, delivery_id: int) -> DeliveryInfo | None: ...

    async def counts(self) -> dict[str, dict[str, int]]:
        """subscription -> status -> number of deliveries."""
        ...

    async def backlog(self) -> dict[str, Backlog]:
        """Every subscription with open deliveries or dead letters, as they stand.
        Read at every metrics scrape: it reads only open and dead deliveries,
        never the whole log."""
        ...

    async def size(self) -> LogSize: ...

    async def checkpoints(self) -> list[Checkpoint]:
        """Every provider checkpoint, by name, with when it was last written."""
        ...

    async def subject_counts(self, after_seq: int = 0) -> SubjectCounts:
        """How many events of each (subject, CloudEvent type) the log holds past
        `after_seq`, up to the newest seq, which it returns too: asked again from
        there, only what came since is counted (the catalogue's seen counts)."""
        ...

    async def forget(self, subscription: str) -> int:
        """Drop the open deliveries of a removed subscription; returns how many."""
        ...

    async def prune(self, received_before: float) -> int:
        """Retention: drop every event received before the cutoff whose deliveries
        are all delivered (nothing pending, leased or dead), with its deliveries and
        their attempts; returns how many events. However many there are, appends,
        leases and acks made meanwhile must not wait for it: it goes in short steps
        that give way to them. Deduplication holds within the retention window only."""
        ...
