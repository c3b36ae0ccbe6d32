"""Appends, grouped: what arrives while one group is written goes out in the next.

Each append costs two round trips to the server (its events' acks, then its
deliveries' acks), and a node takes one append at a time so that every
subscription's deliveries are in the order of their events. One webhook request
is one append, so sixteen senders waited in line for each other's round trips.
Grouped, the appends queued meanwhile share them: one `publish_many` of all
their events, one of all their deliveries, one mark, one lease pull a
subscription. This is the SQLite log's group commit, on the wire. A group's
leases are pulled, and its appends answered, while the next group is written:
only its events and deliveries need to go out in order.

Each append of a group is answered as if alone: its own accepted, duplicates
and deliveries, its own error. An append refused part way (a stream full, say)
fails alone: its events that were written stay unmarked, and the router makes
their deliveries (_router.py), as it does for a node that died there.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from veba.eventlog.base import AppendResult, Delivery, Route
from veba.eventlog.jetstream._names import token
from veba.eventlog.jetstream._router import Routed, Routing
from veba.eventlog.jetstream._wire import JetStreamError, Outgoing, check_ack
from veba.events import Event, InvalidEvent

__all__ = ["Appending", "QueuedAppend"]

log = logging.getLogger("veba.eventlog.jetstream")

# The header names, separators and numbers of an event's or a delivery's
# message (times, seqs, the subscription's and event's tokens counted apart).
_HEADER_ROOM = 512
_DUPLICATE = 10077  # "maximum messages per subject exceeded": that event is logged already


@dataclass(eq=False)
class QueuedAppend:
    """One caller's append, queued for the next group."""

    events: Sequence[Event]
    route: Route
    checkpoint: tuple[str, str] | None
    lease: Mapping[str, tuple[int, float]]
    answer: asyncio.Future[AppendResult]
    bodies: list[bytes] = field(default_factory=list)
    routes: list[tuple[str, ...]] = field(default_factory=list)
    new: list[tuple[int, int]] = field(default_factory=list)  # (seq, index)
    repeats: list[int] = field(default_factory=list)  # seqs logged by an earlier append
    deliveries: list[Routed] = field(default_factory=list)
    made: Counter[str] = field(default_factory=Counter)
    leased: list[Delivery] = field(default_factory=list)
    received: float = 0.0
    failed: BaseException | None = None


class Appending(Routing):
    _appends: list[QueuedAppend]
    _appender: asyncio.Task[None] | None
    _answering: set[asyncio.Task[None]]  # groups written, their leases being pulled
    # Tests only: called with "events" once an append's events are written
    # and "deliveries" once their deliveries are, to die there as a node may.
    crash_point: Callable[[str], None] | None

    if TYPE_CHECKING:  # DeliveryOps's

        async def lease(
            self, subscription: str, limit: int, ttl: float, *, include_delayed: bool = False
        ) -> list[Delivery]: ...

    async def append(
        self,
        events: Sequence[Event],
        *,
        route: Route,
        checkpoint: tuple[str, str] | None = None,
        lease: Mapping[str, tuple[int, float]] | None = None,
    ) -> AppendResult:
        self._refuse_too_large(events, route)
        answer: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._appends.append(QueuedAppend(events, route, checkpoint, lease or {}, answer))
        if self._appender is None or self._appender.done():
            self._appender = asyncio.create_task(self._append_queued(), name="veba-js-append")
        # A caller that goes away (a request cancelled) leaves its append to finish:
        # the group is written for all of its appends, or for none.
        return await asyncio.shield(answer)

    def _refuse_too_large(self, events: Sequence[Event], route: Route) -> None:
        """An event whose message would be over the server's max_payload is
        refused here, with its own append alone: in a group, nats-py's refusal
        would fail every append beside it, and a message over the limit only
        with its headers makes the server drop the connection."""
        limit = self._conn().max_payload
        for event in events:
            # Its headers, as the event's or a delivery's message carries them, at most.
            names = (event.source, event.id, event.source, event.id, event.subject, event.type)
            headers = sum(len(token(n)) for n in (*names, *route(event))) + _HEADER_ROOM
            if (size := len(event.to_json()) + headers) > limit:
                raise InvalidEvent(
                    f"event {event.id}: {size} bytes with its NATS headers; the NATS server"
                    f" takes messages of {limit} bytes at most (its max_payload)"
                )

    async def _stop_appending(self) -> None:
        tasks = [*self._answering, *([self._appender] if self._appender else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._appender = None
        for append in self._appends:
            append.answer.cancel()
        self._appends.clear()

    async def _append_queued(self) -> None:
        while self._appends:
            group, self._appends = self._appends, []
            try:
                await self._append_group(group)
            except asyncio.CancelledError:
                for append in group:
                    append.answer.cancel()
                raise
            except BaseException as exc:
                for append in group:
                    append.failed = append.failed or exc
            for append in group:
                if append.failed is not None and not append.answer.done():
                    append.answer.set_exception(append.failed)
            if done := [append for append in group if append.failed is None]:
                # Their leases are pulled while the next group is written: the
                # order that matters, of events and their deliveries, is made.
                task = asyncio.create_task(self._lease_and_answer(done), name="veba-js-lease")
                self._answering.add(task)
                task.add_done_callback(self._answering.discard)

    async def _lease_and_answer(self, done: list[QueuedAppend]) -> None:
        try:
            await self._lease_group(done)
        finally:
            for append in done:
                if not append.answer.done():
                    append.answer.set_result(self._result(append))

    async def _append_group(self, group: list[QueuedAppend]) -> None:
        now = self._clock()
        outgoing: list[Outgoing] = []
        for append in group:
            append.received = now
            outgoing.extend(self._event_messages(append, now))
        acks = iter(await self._publish_acks(outgoing))
        repeats: list[tuple[QueuedAppend, int]] = []
        for append in group:
            for index in range(len(append.events)):
                ack = next(acks)
                error = ack.get("error")
                if error and error.get("err_code") == _DUPLICATE:
                    continue  # logged before the duplicate window: the router's if unmarked
                try:
                    seq = check_ack(ack, "append")
                except JetStreamError as exc:
                    append.failed = append.failed or exc
                    continue
                if not ack.get("duplicate"):
                    append.new.append((seq, index))
                elif seq > self._routed_upto:
                    repeats.append((append, seq))
        self._crashed_at("events")
        for append in group:
            for seq, index in append.new:
                append.deliveries.extend(
                    self._deliveries_of(
                        seq, append.bodies[index], append.events[index], now, append.routes[index]
                    )
                )
        # A repeat within the window may be a retry of an append that died
        # before its deliveries: its recorded ones again (dropped if made).
        if repeats:
            found = await self._recorded([seq for _, seq in repeats])
            for (append, seq), msg in zip(repeats, found, strict=True):
                append.repeats.append(seq)
                if msg is not None:
                    append.deliveries.extend(self._redo(msg))
        await self._deliver_group(group)
        self._crashed_at("deliveries")
        done = [append for append in group if append.failed is None]
        await self._mark(
            [seq for a in done for seq, _ in a.new] + [s for a in done for s in a.repeats]
        )
        await self._checkpoint_group(done, now)

    def _event_messages(self, append: QueuedAppend, now: float) -> list[Outgoing]:
        names = self.names
        append.bodies = [e.to_json() for e in append.events]
        append.routes = [tuple(append.route(e)) for e in append.events]
        return [
            (
                names.event_subject(e.source, e.id),
                body,
                {
                    "Nats-Msg-Id": f"{token(e.source)}.{token(e.id)}",
                    "Veba-Received": repr(now),
                    "Veba-Subject": token(e.subject),
                    "Veba-Type": token(e.type),
                    "Veba-Routes": ",".join(token(sub) for sub in subs),
                },
            )
            for e, body, subs in zip(append.events, append.bodies, append.routes, strict=True)
        ]

    async def _deliver_group(self, group: list[QueuedAppend]) -> None:
        """Every append's deliveries in one publish, counted back to each."""
        acks = iter(await self._publish_acks([m for a in group for _, m in a.deliveries]))
        for append in group:
            for sub, _ in append.deliveries:
                ack = next(acks)
                try:
                    check_ack(ack, "append: deliveries")
                except JetStreamError as exc:
                    append.failed = append.failed or exc
                    continue
                if not ack.get("duplicate"):
                    append.made[sub] += 1

    async def _checkpoint_group(self, done: list[QueuedAppend], now: float) -> None:
        """Each provider's last checkpoint of the group, after its events."""
        last: dict[str, list[QueuedAppend]] = {}
        for append in done:
            if append.checkpoint is not None:
                last.setdefault(append.checkpoint[0], []).append(append)
        for name, appends in last.items():
            checkpoint = appends[-1].checkpoint
            assert checkpoint is not None
            value = {"name": name, "value": checkpoint[1], "updated": now}
            try:
                await self._checkpoint_kv().put(token(name), json.dumps(value).encode())
            except Exception as exc:
                for append in appends:
                    append.failed = append.failed or exc

    async def _lease_group(self, done: list[QueuedAppend]) -> None:
        """The leases the appends asked for, one pull a subscription, each
        append given its share in order. Leased after the publish, as `lease`
        leases: the subscription's oldest open deliveries, which are the new
        ones unless it has a backlog (a dispatcher asks for room only when it
        has none). A lease that fails leaves the deliveries in the log; their
        dispatchers are woken for them (AppendResult.deliveries)."""
        wanted: dict[str, list[tuple[QueuedAppend, int]]] = {}
        ttls: dict[str, float] = {}
        for append in done:
            for sub, (count, ttl) in append.lease.items():
                if (n := min(count, append.made.get(sub, 0))) > 0:
                    wanted.setdefault(sub, []).append((append, n))
                    ttls[sub] = ttl
        for sub, shares in wanted.items():
            try:
                leased = await self.lease(sub, sum(n for _, n in shares), ttls[sub])
            except Exception as exc:
                log.debug("lease at append for %s failed (%s): left to its dispatcher", sub, exc)
                continue
            for append, n in shares:
                mine, leased = leased[:n], leased[n:]
                append.leased.extend(mine)

    @staticmethod
    def _result(append: QueuedAppend) -> AppendResult:
        return AppendResult(
            len(append.new),
            len(append.events) - len(append.new),
            dict(append.made),
            tuple(append.new),
            append.received,
            leased=tuple(append.leased),
        )

    def _crashed_at(self, point: str) -> None:
        if self.crash_point is not None:
            self.crash_point(point)
