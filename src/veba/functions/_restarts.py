"""Keeping every slot of a pool filled: one policy for both kinds of pool.

A worker (`veba.functions.supervisor`) or a web app instance
(`veba.functions.webapp`) that dies is replaced after a delay that doubles with
each crash in a row (0.1 s up to 5 s) and starts over once a call succeeds; a
replacement that cannot start is tried again, never left empty. The pool says
how to start one and how to put it in place; this module decides when.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["MAX_BACKOFF", "SlotKeeper"]

MAX_BACKOFF = 5.0
P = TypeVar("P")


class SlotKeeper(Generic[P]):
    def __init__(
        self,
        *,
        spawn: Callable[[int], Awaitable[P]],
        install: Callable[[int, P], None],
        discard: Callable[[P], Awaitable[None]],
        say: Callable[[str], None],
    ) -> None:
        self._spawn = spawn  # a ready process for the slot, or an exception saying why not
        self._install = install  # put it in the slot and take calls
        self._discard = discard  # end one started after the pool stopped
        self._say = say  # a line in the function's log
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self.stopping = False
        self.restarts = 0  # replacements scheduled, for stats
        self._streak = 0  # crashes in a row

    def succeeded(self) -> None:
        """A call went well: the next crash starts the backoff over."""
        self._streak = 0

    def crashed(self, slot: int, what: str) -> None:
        """The process in ``slot`` died (``what`` says how): replace it after a backoff."""
        self._streak += 1
        delay = min(0.1 * 2 ** min(self._streak - 1, 10), MAX_BACKOFF)
        self._say(f"{what}; restarting in {delay:g}s")
        self.replace(slot, delay)

    def replace(self, slot: int, delay: float) -> None:
        """Start a new process for ``slot`` after ``delay`` (once, however often asked)."""
        if self.stopping or slot in self._tasks:
            return
        self.restarts += 1
        self._tasks[slot] = asyncio.create_task(self._refill(slot, delay))

    def fill(self, slot: int) -> None:
        """Start a process for an empty ``slot`` now: a scale-up, not a restart."""
        if self.stopping or slot in self._tasks:
            return
        self._tasks[slot] = asyncio.create_task(self._refill(slot, 0.0))

    def filling(self, slot: int) -> bool:
        """Whether a process for ``slot`` is being started."""
        return slot in self._tasks

    async def stop(self) -> None:
        """No more replacements; those under way are cancelled."""
        self.stopping = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _refill(self, slot: int, delay: float) -> None:
        try:
            while not self.stopping:
                await asyncio.sleep(delay)
                try:
                    process = await self._spawn(slot)
                except Exception as exc:  # keep trying: the slot must not stay empty
                    delay = min(max(delay * 2, 0.5), MAX_BACKOFF)
                    last = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
                    self._say(f"restart failed, retrying in {delay:g}s: {last}")
                    continue
                if self.stopping:
                    await self._discard(process)
                    return
                self._install(slot, process)
                return
        finally:
            self._tasks.pop(slot, None)
