"""Leasing and settling deliveries on the shared consumers, dead letters,
redrive and replay."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import replace

from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from veba.eventlog.base import Attempt, Delivery, ReplayTooLarge
from veba.eventlog.jetstream._base import CHUNK, LogBase, delivery_id_of, own_headers, received
from veba.eventlog.jetstream._names import token
from veba.eventlog.jetstream._state import DeliveryState, delivery_headers
from veba.eventlog.jetstream._wire import (
    ACK,
    NAK,
    JetStreamError,
    Outgoing,
    api,
    delete_many,
    pull,
    scan,
    seq_of,
    settle,
    settle_many,
)
from veba.events import INVOCATION_TYPE, Event

__all__ = ["ELECTED", "DeliveryOps"]

# What the server tells every client when a consumer has a new leader.
ELECTED = "$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED"


class DeliveryOps(LogBase):
    async def _consumer(self, subscription: str) -> str:
        consumer = self.names.consumer(subscription)
        if consumer not in self._consumers:
            config = ConsumerConfig(
                durable_name=consumer,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.ack_wait,
                deliver_policy=DeliverPolicy.ALL,
                filter_subject=self.names.delivery_subject(subscription),
                max_deliver=-1,
                max_ack_pending=-1,
            )
            await self._jetstream().add_consumer(self.names.deliveries, config)
            self._consumers.add(consumer)
        return consumer

    async def lease(
        self, subscription: str, limit: int, ttl: float, *, include_delayed: bool = False
    ) -> list[Delivery]:
        # include_delayed is not honoured: a retried delivery waits out its delay
        # on the server (nak with delay), out of every node's reach. Ordered
        # subscriptions retry in place (dispatch.py), so theirs never wait there.
        try:
            consumer = await self._consumer(subscription)
            msgs = await pull(self._conn(), self.names.deliveries, consumer, limit)
        except JetStreamError:  # its consumer was deleted (`forget` on another node)
            self._consumers.discard(self.names.consumer(subscription))
            consumer = await self._consumer(subscription)
            msgs = await pull(self._conn(), self.names.deliveries, consumer, limit)
        msgs, doubted = self._offered_again(consumer, msgs)
        if not msgs:
            return []
        now = self._clock()
        try:
            found = await asyncio.gather(*(self._state_for(m, subscription, doubted) for m in msgs))
            msgs, states = await self._without_delivered(msgs, found)
            for msg, state in zip(msgs, states, strict=True):
                state.attempts = msg.metadata.num_delivered + state.adjust
                state.status = "leased"
                self._states[state.id] = state
                self._leases.hold(state.id, msg, subscription, now + ttl)
        except BaseException:
            # Not recorded as leased (an election under way): given back at once,
            # not kept from every node until the lease or the ack wait runs out.
            await self._give_back(msgs)
            raise
        await self._save_unconfirmed(states)
        return [
            Delivery(s.id, s.seq, subscription, Event.from_json(m.data), s.attempts, s.available_at)
            for m, s in zip(msgs, states, strict=True)
        ]

    def _offered_again(self, consumer: str, msgs: list[Msg]) -> tuple[list[Msg], set[int]]:
        """The messages not in flight on this node already, and which of them
        are doubted (their states read, first deliveries though they are). A
        consumer's new leader that lost its old one's record of some deliveries
        offers them again as first deliveries: for an ack wait after its
        election's advisory (`_on_election`), and under a delivery seq given
        out before, which tells before the advisory may have come.
        One this node still holds is not made twice: its lease is settled
        through the newest offer, the one the new leader knows of."""
        highest = self._offered.get(consumer, 0)
        elected = bool(self._elected) and self._doubted(consumer)
        fresh, doubted = [], set()
        for msg in msgs:
            delivery_id, offered = delivery_id_of(msg), msg.metadata.sequence.consumer
            held = self._leases.held.get(delivery_id)
            if held is not None and not held.lapsed:
                held.msg, held.touched = msg, time.time()
                continue
            if elected or offered <= highest:
                doubted.add(delivery_id)
            highest = max(highest, offered)
            fresh.append(msg)
        self._offered[consumer] = highest
        return fresh, doubted

    async def _without_delivered(
        self, msgs: list[Msg], states: list[DeliveryState]
    ) -> tuple[list[Msg], list[DeliveryState]]:
        """The messages to deliver: one whose delivery is recorded as made is
        offered again only because its ack did not stick (the consumer's
        leader changed before it had it, say), so it is acked again, not made."""
        done = [msg for msg, state in zip(msgs, states, strict=True) if state.status == "delivered"]
        if not done:
            return msgs, states
        with contextlib.suppress(JetStreamError):  # not acked: offered again, and acked then
            await settle_many(done, ACK)
        kept = [(m, s) for m, s in zip(msgs, states, strict=True) if s.status != "delivered"]
        return [m for m, _ in kept], [s for _, s in kept]

    async def _give_back(self, msgs: Sequence[Msg]) -> None:
        for msg in msgs:
            delivery_id = delivery_id_of(msg)
            self._states.pop(delivery_id, None)
            self._leases.take(delivery_id)
        with contextlib.suppress(JetStreamError):  # not given back: it lapses instead
            await settle_many(msgs, NAK)

    async def _on_election(self, msg: Msg) -> None:
        """A consumer's new leader knows of the deliveries its old one made only
        what reached the others before it went: one whose record was lost is
        offered again as a first delivery, though a node may have made it and
        recorded it delivered. For a while after an election (an ack wait), a
        first delivery of that consumer has its state read like any other."""
        consumer = msg.subject.rsplit(".", 1)[-1]
        self._elected[consumer] = time.monotonic() + self.ack_wait

    def _doubted(self, consumer: str) -> bool:
        until = self._elected.get(consumer)
        if until is None:
            return False
        if time.monotonic() < until:
            return True
        del self._elected[consumer]
        return False

    async def _state_for(self, msg: Msg, subscription: str, doubted: set[int]) -> DeliveryState:
        headers = msg.headers or {}
        delivery_id = delivery_id_of(msg)
        # A message's first delivery has no state to read, unless it was redriven
        # or its consumer has just changed leader (`_offered_again`).
        if msg.metadata.num_delivered > 1 or "Veba-Delivery" in headers or delivery_id in doubted:
            state = self._states.get(delivery_id) or await self._read_state(delivery_id)
            if state is not None:
                return state
        return DeliveryState.pending_from(delivery_id, subscription, headers)

    async def extend(self, delivery_ids: Sequence[int], ttl: float) -> None:
        until = self._clock() + ttl
        for delivery_id in delivery_ids:
            await self._leases.extend(delivery_id, until)

    async def ack(self, delivery_id: int, attempt: Attempt) -> None:
        await self.ack_many([(delivery_id, attempt)])

    async def ack_many(self, acks: Sequence[tuple[int, Attempt]]) -> None:
        # The states first, then the messages off the queue: should the states
        # not be written (an election under way), nothing is settled, the
        # leases stand and the caller may ack again; never an acked message
        # whose state stays "leased" for ever.
        async def delivered(delivery_id: int, attempt: Attempt) -> DeliveryState | None:
            state = await self._state(delivery_id)
            if state is None:
                return None
            state = replace(state, status="delivered", last_status=attempt.status)
            state.started, state.finished = attempt.started, attempt.finished
            return state

        states = await asyncio.gather(*(delivered(did, a) for did, a in acks))
        await self._save([s for s in states if s is not None])
        held = []
        for delivery_id, _ in acks:
            self._states.pop(delivery_id, None)
            one = self._leases.take(delivery_id)
            if one is not None:
                held.append(one)
        await settle_many([one.msg for one in held], ACK)

    async def retry(
        self,
        delivery_id: int,
        attempt: Attempt,
        available_at: float,
        *,
        lease_ttl: float | None = None,
    ) -> None:
        state = await self._state(delivery_id)
        if state is None:
            return
        state.failed(attempt)
        state.available_at = available_at
        if lease_ttl is not None:  # kept, and the next attempt counted now
            state.attempts += 1
            state.adjust += 1
            self._states[delivery_id] = state
            await self._save([state])
            await self._leases.extend(delivery_id, available_at + lease_ttl)
            return
        state.status = "pending"
        await self._save([state])
        self._states.pop(delivery_id, None)
        held = self._leases.take(delivery_id)
        if held is not None and not held.lapsed:  # a lapsed one was given back already
            await settle(held.msg, NAK, delay=max(0.0, available_at - self._clock()))

    async def dead(self, delivery_id: int, attempt: Attempt) -> None:
        state = await self._state(delivery_id)
        held = self._leases.take(delivery_id)
        self._states.pop(delivery_id, None)
        if state is None:
            return
        if held is not None:
            # Into the DLQ first, then off the queue: a crash between the two
            # delivers it once more rather than losing it.
            headers = own_headers(held.msg.headers or {})
            headers["Veba-Delivery"] = str(delivery_id)
            dlq = self.names.dlq_subject(state.subscription)
            await self._publish([(dlq, held.msg.data, headers)], "dead letter")
            await settle(held.msg, ACK)
        state.failed(attempt)
        state.status, state.finished = "dead", attempt.finished
        await self._save([state])

    async def release(self, delivery_ids: Sequence[int]) -> None:
        released = []
        for delivery_id in delivery_ids:
            held = self._leases.take(delivery_id)
            state = self._states.pop(delivery_id, None)
            if held is None or held.lapsed or state is None:
                continue
            # Its next delivery is no attempt of its own: the count goes back.
            state.attempts, state.adjust, state.status = (
                state.attempts - 1,
                state.adjust - 1,
                "pending",
            )
            released.append((held, state))
        await self._save([state for _, state in released])
        await settle_many([held.msg for held, _ in released], NAK)

    async def redrive(
        self, *, delivery_ids: Sequence[int] | None = None, subscription: str | None = None
    ) -> int:
        names, nc, js = self.names, self._conn(), self._jetstream()
        wanted = set(delivery_ids or ())
        subjects = names.all(names.dlq) if subscription is None else names.dlq_subject(subscription)
        now = self._clock()
        total = 0
        batch: list[Msg] = []

        async def move(msgs: list[Msg]) -> None:
            outgoing: list[Outgoing] = []
            for msg in msgs:
                headers = dict(msg.headers or {})
                sub = names.subscription_of(msg.subject)
                outgoing.append((names.delivery_subject(sub), msg.data, own_headers(headers)))
            await self._publish(outgoing, "redrive")
            states = []
            for state in await self._read_states([delivery_id_of(msg) for msg in msgs]):
                if state is not None:
                    state.status, state.attempts, state.adjust = "pending", 0, 0
                    state.available_at, state.finished = now, None
                    states.append(state)
            # Redriven by another node at once too: it is out of the DLQ either way.
            await delete_many(nc, names.dlq, [msg.metadata.sequence.stream for msg in msgs])
            await self._save(states)

        async with contextlib.aclosing(scan(js, nc, names.dlq, subjects=subjects)) as dead:
            async for msg in dead:
                if wanted and int((msg.headers or {})["Veba-Delivery"]) not in wanted:
                    continue
                batch.append(msg)
                if len(batch) >= CHUNK:
                    await move(batch)
                    total, batch = total + len(batch), []
        if batch:
            await move(batch)
            total += len(batch)
        return total

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
        now = self._clock()
        low, high = since if since is not None else 0.0, until if until is not None else now
        kinds = {token(s) for s in subjects} if subjects else None
        invocation = token(INVOCATION_TYPE)

        def in_range(msg: Msg) -> bool:
            headers = msg.headers or {}
            return (
                low <= received(msg) <= high
                and headers.get("Veba-Type") != invocation
                and (kinds is None or headers.get("Veba-Subject") in kinds)
            )

        async def chosen(headers_only: bool) -> AsyncGenerator[tuple[Msg, Event | None], None]:
            async with contextlib.aclosing(self._events(headers_only=headers_only)) as found:
                async for msg in found:
                    if not in_range(msg):
                        continue
                    event = None if headers_only else Event.from_json(msg.data)
                    if matches is None or (event is not None and matches(event)):
                        yield msg, event

        if at_most is not None or dry_run:
            count = 0
            async for _ in chosen(headers_only=matches is None):
                count += 1
            if at_most is not None and count > at_most:
                raise ReplayTooLarge(count, at_most)
            if dry_run:
                return count
        outgoing: list[Outgoing] = []
        total = 0
        subject = self.names.delivery_subject(subscription)
        async for msg, event in chosen(headers_only=False):
            assert event is not None
            headers = delivery_headers(None, seq_of(msg), now, event)
            outgoing.append((subject, msg.data, headers))
            if len(outgoing) >= CHUNK:
                total += len(await self._publish(outgoing, "replay"))
                outgoing = []
        return total + len(await self._publish(outgoing, "replay"))

    async def forget(self, subscription: str) -> int:
        """Its open deliveries, their states and its consumer go; a later lease
        makes a new consumer."""
        names = self.names
        consumer = names.consumer(subscription)
        self._consumers.discard(consumer)
        with contextlib.suppress(NotFoundError):
            await self._jetstream().delete_consumer(names.deliveries, consumer)
        answer = await api(
            self._conn(),
            f"$JS.API.STREAM.PURGE.{names.deliveries}",
            {"filter": names.delivery_subject(subscription)},
        )
        for delivery_id, held in list(self._leases.held.items()):
            if held.subscription == subscription:
                self._leases.take(delivery_id)
                self._states.pop(delivery_id, None)
        # Their states go too (those leased at least once have one).
        await self._delete_states(
            lambda state: (
                state.subscription == subscription and state.status in ("pending", "leased")
            )
        )
        return int(answer.get("purged", 0))
