"""Every logged event gets its deliveries, whichever node dies when.

An append writes its events, then their deliveries, then a *mark*: one message
on `NAME_routed` listing the seqs of the events whose deliveries it made. A node
that dies between the events and the mark leaves them unmarked, and the router
finds them: every node, every `repair_after / 2` seconds, looks at the events
past the watermark (KV `NAME-router`). A marked event is done; an unmarked one
older than `repair_after` gets the deliveries its `Veba-Routes` header recorded
when it was appended; then the watermark moves past them, compare-and-set, so
of two nodes doing the same the first wins and the second's work was the same
messages.

Those messages are the same because every delivery an append or the router
makes carries `Nats-Msg-Id` = its event's seq and its subscription: the
deliveries stream drops a second one within its duplicate window, whoever
publishes it (an append that was only slow, a retried append, two routers).
That is also why a repeated event (a sender's retry, answered as a duplicate)
has its recorded deliveries published again by the append that sees it: if the
first append made them they are dropped, if it died first they are made now.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from veba.eventlog.jetstream._base import CHUNK, LogBase, received
from veba.eventlog.jetstream._names import untoken
from veba.eventlog.jetstream._state import delivery_headers
from veba.eventlog.jetstream._wire import (
    JetStreamError,
    Outgoing,
    api,
    check_ack,
    scan,
    seq_of,
)
from veba.events import Event
from veba.jetstream._buckets import patiently

__all__ = ["Routed", "Routing", "mark_body", "marked_seqs", "recorded_routes"]

log = logging.getLogger("veba.eventlog.jetstream")

WATERMARK = "watermark"  # {"events": every seq up to it is routed, "marks": marks read up to it}

Routed = tuple[str, Outgoing]  # a delivery's subscription and its message


def mark_body(seqs: Iterable[int]) -> bytes:
    """Seqs as ranges ("5-9,12"): an append's are mostly one run."""
    runs: list[list[int]] = []
    for seq in sorted(seqs):
        if runs and seq == runs[-1][1] + 1:
            runs[-1][1] = seq
        else:
            runs.append([seq, seq])
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in runs).encode()


def marked_seqs(body: bytes) -> list[int]:
    seqs: list[int] = []
    for run in body.decode().split(","):
        if run:
            low, _, high = run.partition("-")
            seqs.extend(range(int(low), int(high or low) + 1))
    return seqs


def recorded_routes(headers: Mapping[str, str]) -> list[str]:
    """The subscriptions an event was routed to when it was appended."""
    return [untoken(t) for t in headers.get("Veba-Routes", "").split(",") if t]


class Routing(LogBase):
    replicas: int
    repair_after: float
    _router_kv: KeyValue | None
    _router_task: asyncio.Task[None] | None
    _router_stopping: asyncio.Event
    # The watermark as this node last read or moved it: every event up to this
    # seq has its deliveries, so a repeat of one needs no second look.
    _routed_upto: int

    def _deliveries_of(
        self, seq: int, body: bytes, event: Event, created: float, subscriptions: Sequence[str]
    ) -> list[Routed]:
        names = self.names
        messages: list[Routed] = []
        for sub in subscriptions:
            headers = delivery_headers(None, seq, created, event)
            headers["Nats-Msg-Id"] = names.delivery_msg_id(seq, sub)
            messages.append((sub, (names.delivery_subject(sub), body, headers)))
        return messages

    async def _deliver(self, routed: Sequence[Routed], what: str) -> Counter[str]:
        """Publish deliveries; how many of each subscription were made now (not
        dropped as made already)."""
        acks = await self._publish_acks([message for _, message in routed])
        made: Counter[str] = Counter()
        for (sub, _), ack in zip(routed, acks, strict=True):
            check_ack(ack, what)
            if not ack.get("duplicate"):
                made[sub] += 1
        return made

    async def _mark(self, seqs: Sequence[int]) -> None:
        """Record that these events' deliveries are made. No ack awaited (a
        publish is a buffered write): a mark lost with its node costs the router
        a look at the events and a repeat the deliveries stream drops."""
        if seqs:
            await self._conn().publish(self.names.routed_subject, mark_body(seqs))

    async def _recorded(self, seqs: Sequence[int]) -> list[Msg | None]:
        """The logged events at these seqs (None: pruned meanwhile)."""
        stream = self.names.events
        found: list[Msg | None] = []
        for at in range(0, len(seqs), 100):
            part = seqs[at : at + 100]
            found.extend(await asyncio.gather(*(self._get(stream, {"seq": s}) for s in part)))
        return found

    def _redo(self, msg: Msg) -> list[Routed]:
        """The deliveries a logged event was appended with, as they were made."""
        event = Event.from_json(msg.data)
        routes = recorded_routes(msg.headers or {})
        return self._deliveries_of(seq_of(msg), msg.data, event, received(msg), routes)

    # The router.

    def _router_bucket(self) -> KeyValue:
        if self._router_kv is None:
            raise RuntimeError("event log is not open")
        return self._router_kv

    async def _start_router(self) -> None:
        js, names = self._jetstream(), self.names
        self._router_kv = kv = await patiently(
            lambda: js.create_key_value(
                bucket=names.router, history=1, replicas=self.replicas, direct=self.replicas == 1
            ),
            f"bucket {names.router}",
        )
        await self._begin_watermark()
        entry = await kv.get(WATERMARK)
        self._routed_upto = int(json.loads(entry.value or b"{}")["events"])
        self._router_stopping = asyncio.Event()
        self._router_task = asyncio.get_running_loop().create_task(
            self._route_forever(), name="veba-js-router"
        )

    async def _begin_watermark(self) -> None:
        """Unless there is one: a watermark that takes every event logged so far
        as routed (none in a new log; in one from before the router, whose
        appends made no marks, what they logged)."""
        js, names = self._jetstream(), self.names
        events = (await js.stream_info(names.events)).state.last_seq
        marks = (await js.stream_info(names.routed)).state.last_seq
        with contextlib.suppress(KeyWrongLastSequenceError):
            value = json.dumps({"events": events, "marks": marks}).encode()
            await self._router_bucket().create(WATERMARK, value)

    async def _stop_router(self) -> None:
        task, self._router_task = self._router_task, None
        if task is not None:
            # The event as well as the cancel: nats-py waits on its requests with
            # `asyncio.wait_for`, which on Python 3.11 can swallow a cancel that
            # lands as the answer comes, and the loop would then go on for ever.
            self._router_stopping.set()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _route_forever(self) -> None:
        stopping = self._router_stopping
        while not stopping.is_set():
            try:
                await self.repair()
            except Exception:  # the server away or slow: the next round tries again
                log.warning("event log router: repair failed", exc_info=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.repair_after / 2):
                    await stopping.wait()

    async def repair(self) -> int:
        """Give every unmarked event older than `repair_after` past the watermark
        its recorded deliveries, then move the watermark; how many events it
        repaired. Every node runs it in the background; safe to run anywhere."""
        names, js, nc = self.names, self._jetstream(), self._conn()
        kv = self._router_bucket()
        try:
            entry = await kv.get(WATERMARK)
        except KeyNotFoundError:  # deleted by hand: begin again from here
            await self._begin_watermark()
            return 0
        watermark = json.loads(entry.value or b"{}")
        upto, marks_read = int(watermark["events"]), int(watermark["marks"])
        self._routed_upto = max(self._routed_upto, upto)
        last = (await js.stream_info(names.events)).state.last_seq
        if last <= upto:
            return 0
        marked: set[int] = set()
        marks: list[tuple[int, int]] = []  # (mark's seq, the highest event seq it marks)
        marks_last = (await js.stream_info(names.routed)).state.last_seq
        if marks_last > marks_read:
            found = scan(js, nc, names.routed, start=marks_read + 1, upto=marks_last, timeout=1.0)
            try:
                async with contextlib.aclosing(found) as reading:
                    async for mark in reading:
                        seqs = marked_seqs(mark.data)
                        marked.update(seqs)
                        marks.append((seq_of(mark), max(seqs, default=0)))
            except JetStreamError:
                # Unanswered: another node purged the marks while they were read
                # (see `scan`); it moved the watermark, so this round is done.
                if (await kv.get(WATERMARK)).revision != entry.revision:
                    return 0
                raise
        now = self._clock()
        repaired = 0
        made: Counter[str] = Counter()
        redo: list[Routed] = []
        new_upto = upto
        for seq in range(upto + 1, last + 1):
            if seq not in marked:
                logged = await self._get(names.events, {"seq": seq})
                if logged is not None:  # else pruned
                    if now - received(logged) < self.repair_after:
                        break  # maybe an append under way: its mark may come yet
                    redo.extend(self._redo(logged))
                    repaired += 1
                    if len(redo) >= CHUNK:
                        made += await self._deliver(redo, "repair")
                        redo = []
            new_upto = seq
        made += await self._deliver(redo, "repair")
        if repaired:
            log.warning(
                "event log router: %d events had no mark that their deliveries were made;"
                " %d deliveries were missing and are made now",
                repaired,
                made.total(),
            )
        new_marks = marks_read
        for mark_seq, highest in marks:  # marks wholly below the new watermark are spent
            if highest > new_upto:
                break
            new_marks = mark_seq
        if (new_upto, new_marks) == (upto, marks_read):
            return repaired
        moved = json.dumps({"events": new_upto, "marks": new_marks}).encode()
        try:
            await kv.update(WATERMARK, moved, last=entry.revision)
        except KeyWrongLastSequenceError:  # another node moved it first
            return repaired
        self._routed_upto = max(self._routed_upto, new_upto)
        if new_marks > marks_read:
            # The spent marks go but the last of them (read again, harmless):
            # nats-server 2.9 leaves a pull unanswered on a consumer made before
            # a purge that emptied its stream, as another node's read may be.
            await api(nc, f"$JS.API.STREAM.PURGE.{names.routed}", {"seq": new_marks})
        return repaired
