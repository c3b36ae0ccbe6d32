"""Leases of any length on a consumer with one ack wait.

The consumer's ack wait is how long a node that died holding messages keeps
them; a lease's own length is the holding node's to keep. While a lease runs
the node tells the server it is still working on the message (`in_progress`)
every third of the ack wait; when the lease lapses it gives the message back
(`nak`), so any node may lease it again at once, as an attempt of its own.
A message whose lease lapsed is remembered for a while, so a late ack of it
still settles it (as SQLite's log would take it)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass

from nats.aio.msg import Msg

from veba.eventlog.jetstream._wire import WORKING, settle

__all__ = ["Held", "LeaseKeeper"]

_LAPSED_KEPT = 600.0  # how long a lapsed lease's message is kept for a late ack
_IDLE = 1.0


@dataclass(slots=True)
class Held:
    msg: Msg
    subscription: str
    until: float  # time.time() at which the lease lapses
    touched: float  # when the server last heard of it (fetch or in_progress)
    lapsed: bool = False


class LeaseKeeper:
    def __init__(self, ack_wait: float) -> None:
        self._ack_wait = ack_wait
        self.held: dict[int, Held] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        # When the keeper looks next (inf while it looks): a lease due before
        # then wakes it, any other waits. Not a wake per lease, each a pass
        # over every lease held (a node leases thousands a second).
        self._next_look = math.inf

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="veba-js-leases")

    async def stop(self) -> None:
        """Stop keeping leases; whatever is still held is given back, so other
        nodes take it at once rather than after the ack wait."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        for held in self.held.values():
            if not held.lapsed:
                with contextlib.suppress(Exception):
                    await held.msg.nak()
        self.held.clear()

    def hold(self, delivery_id: int, msg: Msg, subscription: str, until: float) -> None:
        now = time.time()
        self.held[delivery_id] = Held(msg, subscription, until, now)
        self._due(until, now)

    def _due(self, until: float, touched: float) -> None:
        if min(until, touched + self._ack_wait / 3) < self._next_look:
            self._wake.set()

    def take(self, delivery_id: int) -> Held | None:
        """The held message, no longer kept (settled, retried, released)."""
        return self.held.pop(delivery_id, None)

    async def extend(self, delivery_id: int, until: float) -> None:
        held = self.held.get(delivery_id)
        if held is None or held.lapsed:
            return
        held.until = until
        await settle(held.msg, WORKING)
        held.touched = time.time()
        self._due(held.until, held.touched)

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            self._next_look = math.inf  # a lease held meanwhile wakes the next wait at once
            now = time.time()
            upcoming = now + _IDLE
            for delivery_id, held in list(self.held.items()):
                if held.lapsed:
                    if now - held.until > _LAPSED_KEPT:
                        del self.held[delivery_id]
                    continue
                if now >= held.until:
                    held.lapsed = True
                    with contextlib.suppress(Exception):  # then the ack wait gives it back
                        await held.msg.nak()
                    continue
                touch = held.touched + self._ack_wait / 3
                if now >= touch:
                    with contextlib.suppress(Exception):
                        await held.msg.in_progress()
                    held.touched = now
                    touch = now + self._ack_wait / 3
                upcoming = min(upcoming, held.until, touch)
            self._next_look = upcoming
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, upcoming - time.time())):
                    await self._wake.wait()
