"""What the parts of `JetStreamLog` share: the connection, the names, this
node's leases and the delivery states it holds, and the reads and writes that
more than one part makes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from veba.eventlog.jetstream._leases import LeaseKeeper
from veba.eventlog.jetstream._names import Names
from veba.eventlog.jetstream._state import DeliveryState
from veba.eventlog.jetstream._tally import Tally, notice
from veba.eventlog.jetstream._wire import (
    AT_ONCE,
    Outgoing,
    check_ack,
    delete_many,
    direct_get,
    publish_many,
    scan,
    seq_of,
    walk,
)

__all__ = ["CHUNK", "LogBase", "delivery_id_of", "own_headers", "received", "stored"]

CHUNK = 1000  # messages one publish_many sends
_NOTICE_IDS = 5000  # delivery ids a notice of deleted states carries (~40 KB)


def received(msg: Msg) -> float:
    """When the event of an events-stream message was appended."""
    return float((msg.headers or {})["Veba-Received"])


def delivery_id_of(msg: Msg) -> int:
    """A deliveries-stream message's delivery id: its seq, or the one it kept
    when redriven."""
    return int((msg.headers or {}).get("Veba-Delivery", seq_of(msg)))


def stored(msg: Msg) -> float:
    """When the server stored a message a consumer gave (its clock)."""
    return msg.metadata.timestamp.timestamp()


def own_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """A message's headers without those the server added (Nats-*)."""
    return {k: v for k, v in headers.items() if not k.startswith("Nats-")}


class LogBase:
    names: Names
    replicas: int
    ack_wait: float
    _clock: Callable[[], float]
    _nc: Client | None
    _js: JetStreamContext | None
    _kv: KeyValue | None
    _consumers: set[str]
    _leases: LeaseKeeper
    _states: dict[int, DeliveryState]  # of the deliveries this node holds
    _elected: dict[str, float]  # consumer -> until when its first deliveries are doubted
    _offered: dict[str, int]  # consumer -> the highest delivery seq it offered this node
    _tally: Tally | None  # counts() (_queries.py)
    _tally_lock: asyncio.Lock

    def _conn(self) -> Client:
        if self._nc is None:
            raise RuntimeError("event log is not open")
        return self._nc

    def _jetstream(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("event log is not open")
        return self._js

    def _checkpoint_kv(self) -> KeyValue:
        if self._kv is None:
            raise RuntimeError("event log is not open")
        return self._kv

    async def _publish(self, messages: Sequence[Outgoing], what: str) -> list[int]:
        """Publish in chunks; the stream seq of each (its error raised)."""
        acks = await self._publish_acks(messages)
        return [check_ack(ack, what) for ack in acks]

    async def _publish_acks(self, messages: Sequence[Outgoing]) -> list[dict[str, Any]]:
        acks: list[dict[str, Any]] = []
        for at in range(0, len(messages), CHUNK):
            acks.extend(await publish_many(self._conn(), messages[at : at + CHUNK]))
        return acks

    async def _delete_states(
        self,
        which: Callable[[DeliveryState], bool],
        *,
        since: float | None = None,
        stored_before: float | None = None,
    ) -> None:
        """Delete the states `which` picks (of those stored from `since` and
        before `stored_before`, when given), and tell every node's tally which
        (_tally.py): a tally never sees a deletion in the states stream. One
        another node deleted first is its to tell."""
        picked: dict[int, int] = {}  # seq -> delivery id
        async for seq, state in self._all_states(since=since, stored_before=stored_before):
            if which(state):
                picked[seq] = state.id
        done = await delete_many(self._conn(), self.names.states, list(picked))
        deleted = [delivery_id for delivery_id, ok in zip(picked.values(), done, strict=True) if ok]
        subject = self.names.gone_subject
        notices: list[Outgoing] = [
            (subject, notice(deleted[at : at + _NOTICE_IDS]), {})
            for at in range(0, len(deleted), _NOTICE_IDS)
        ]
        await self._publish(notices, "notice of deleted states")

    async def _get(self, stream: str, request: Mapping[str, Any]) -> Msg | None:
        """One message by `direct_get`'s request; from the stream's leader when
        the stream is kept on several servers (a replica may lag a write)."""
        return await direct_get(self._conn(), stream, request, leader=self.replicas > 1)

    def _walk(self, stream: str, subjects: str, start: int = 1) -> AsyncGenerator[Msg, None]:
        return walk(self._conn(), stream, subjects, start, leader=self.replicas > 1)

    async def _read_state(self, delivery_id: int) -> DeliveryState | None:
        subject = self.names.state_subject(delivery_id)
        msg = await self._get(self.names.states, {"last_by_subj": subject})
        return None if msg is None else DeliveryState.from_json(msg.data)

    async def _read_states(self, delivery_ids: Sequence[int]) -> list[DeliveryState | None]:
        """`_read_state` of each, AT_ONCE reads in flight together."""
        found: list[DeliveryState | None] = []
        for at in range(0, len(delivery_ids), AT_ONCE):
            part = delivery_ids[at : at + AT_ONCE]
            found.extend(await asyncio.gather(*(self._read_state(i) for i in part)))
        return found

    async def _state(self, delivery_id: int) -> DeliveryState | None:
        return self._states.get(delivery_id) or await self._read_state(delivery_id)

    async def _save(self, states: Sequence[DeliveryState]) -> None:
        names = self.names
        messages: list[Outgoing] = [(names.state_subject(s.id), s.to_json(), {}) for s in states]
        await self._publish(messages, "delivery state")

    async def _save_unconfirmed(self, states: Sequence[DeliveryState]) -> None:
        """Write leased states without waiting for the stream to confirm them:
        a delivery's first lease needs no state to be redelivered right (its
        attempt is the consumer's count), so no round trip is spent on the way
        to the handler. One lost (the stream electing a leader) shows that
        delivery pending until it is settled; the states written after it go
        out later on the same connection, so they land after it."""
        nc, names = self._conn(), self.names
        for state in states:
            await nc.publish(names.state_subject(state.id), state.to_json())

    def _events(self, *, start: int = 1, headers_only: bool = False) -> AsyncGenerator[Msg, None]:
        names = self.names
        return scan(
            self._jetstream(), self._conn(), names.events, start=start, headers_only=headers_only
        )

    async def _all_states(
        self,
        start: int = 1,
        upto: int | None = None,
        *,
        since: float | None = None,
        stored_before: float | None = None,
    ) -> AsyncGenerator[tuple[int, DeliveryState], None]:
        """Every delivery state (from seq `start`, or those stored from `since`
        on; up to seq `upto`, or those stored before `stored_before`), with the
        seq of its message in the states stream (one a delivery: its last)."""
        names = self.names
        states = scan(
            self._jetstream(), self._conn(), names.states, start=start, since=since, upto=upto
        )
        async with contextlib.aclosing(states) as found:
            async for msg in found:
                if stored_before is not None and stored(msg) >= stored_before:
                    return
                yield seq_of(msg), DeliveryState.from_json(msg.data)
