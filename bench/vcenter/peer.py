"""The peer design: VEBA's vCenter event loop, written with pyVmomi.

VEBA's router (vmware-event-router, provider/vcenter) reads its event history
collector on a 1 s ticker with ReadNextEvents(100); when a read comes back
empty it sleeps a backoff of 1 s, 2 s, 4 s, then 5 s (jpillora/backoff, factor
2, no jitter), and resets the backoff when events come. A Go ticker keeps one
tick buffered, so after a sleep the next read happens at once. That is the
schedule reproduced here, and it is what sets the loop's latency.

One substitution: govmomi's simulator never returns events newer than its
cursor's first page from ReadNextEvents, so the live loop reads the
collector's `latestPage` (up to 100 newest events) and keeps those with a Key
above the last one seen, which is what ReadNextEvents(100) hands a VEBA on a
real vCenter. Catch-up reads a backlog with ReadNextEvents(100) per tick on a
collector made for it, as VEBA does after a restart from its checkpoint.
Handler starts are recorded in this process the moment the loop has an event
(no function invocation), which favours the peer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim

__all__ = ["VebaStyleLoop"]

POLL = 1.0
PAGE = 100
BACKOFF = (1.0, 2.0, 4.0, 5.0)


class VebaStyleLoop:
    def __init__(self, host: str, port: int, user: str, password: str) -> None:
        self.si = SmartConnect(
            host=host, port=port, user=user, pwd=password, protocol="http",
            disableSslCertValidation=True,
        )  # fmt: skip
        self.content = self.si.RetrieveContent()
        self._stop = threading.Event()

    def _collector(self, page: int) -> Any:
        spec = vim.event.EventFilterSpec(
            entity=vim.event.EventFilterSpec.ByEntity(
                entity=self.content.rootFolder, recursion="all"
            ),
            maxCount=page,
        )
        return self.content.eventManager.CreateCollectorForEvents(spec)

    def _schedule(self, read: Callable[[], bool]) -> None:
        """Run `read` on VEBA's schedule until stopped; `read` says whether it got events."""
        misses = 0
        next_tick = time.monotonic() + POLL
        while not self._stop.is_set():
            delay = next_tick - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            next_tick += POLL
            if read():
                misses = 0
                continue
            sleep = BACKOFF[min(misses, len(BACKOFF) - 1)]
            misses += 1
            if self._stop.wait(sleep):
                return
            # The ticker kept one tick: the next read is due at once.
            now = time.monotonic()
            if next_tick < now:
                next_tick = now
                while next_tick + POLL <= now:
                    next_tick += POLL

    def follow(self, on_event: Callable[[Any, float], None]) -> None:
        """Live events, on VEBA's schedule, until `stop()`."""
        collector = self._collector(PAGE)
        last = max((e.key for e in collector.latestPage or ()), default=0)

        def read() -> bool:
            nonlocal last
            new = sorted(
                (e for e in collector.latestPage or () if e.key > last), key=lambda e: e.key
            )
            now = time.time()
            for event in new:
                on_event(event, now)
            if new:
                last = new[-1].key
            return bool(new)

        try:
            self._schedule(read)
        finally:
            collector.DestroyCollector()

    def catch_up(self, after_key: int, expected: int) -> float:
        """Read a backlog of `expected` events newer than `after_key` as VEBA does
        after a restart; returns the seconds it took."""
        self._stop.clear()
        collector = self._collector(1000)
        seen: set[int] = set()
        started = time.monotonic()

        def read() -> bool:
            batch = collector.ReadNextEvents(PAGE)
            seen.update(e.key for e in batch if e.key > after_key)
            if len(seen) >= expected:
                self._stop.set()
            return bool(batch)

        try:
            self._schedule(read)
        finally:
            collector.DestroyCollector()
            self._stop.clear()
        return time.monotonic() - started

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        Disconnect(self.si)
