"""The wake-up: WaitForUpdatesEx on an event collector's `latestPage`.

A PropertyCollector answers a wait only at its own ticks: govmomi's
simulator checks for changes every 250 ms from the moment the request
arrived, so one waiter wakes up to 250 ms after an event (and, when the
next event follows the last wake closely, nearly always that late). Several
waiters, each on a PropertyCollector of its own and started a fraction of a
tick apart, cut that to tick / waiters. Each waiter hands what it gets to one
queue; the same event coming from two of them is deduplicated on its Key by
the stream. Against a vCenter that answers at once, the extra waiters cost
one more small response per change and nothing else.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from typing import Any

from veba.providers.vcenter._vmomi import vim, vmodl

__all__ = ["Wake"]

_ALIGN_TOLERANCE = 0.015  # seconds a waiter may be off its slot before it re-aligns
_INNER_WAIT = 30  # seconds per WaitForUpdatesEx of a waiter; the stream times its own waits


class _Interrupt:
    pass


_INTERRUPT = _Interrupt()


class Wake:
    def __init__(self, content: Any, collector: Any, *, waiters: int = 2, tick: float = 0.25):
        if waiters < 1:
            raise ValueError("waiters must be >= 1")
        self._content = content
        self._collector = collector
        self._tick = tick
        self._count = waiters
        self._queue: queue.Queue[Any] = queue.Queue()
        self._closing = threading.Event()
        self._pcs: list[Any] = []
        self._threads: list[threading.Thread] = []
        self._phase = time.monotonic()  # when waiter 0 last sent its request

    def start(self) -> list[Any]:
        """Create the waiters' filters; returns the page as it is now."""
        first: list[Any] = []
        versions: list[str] = []
        for index in range(self._count):
            pc = self._content.propertyCollector.CreatePropertyCollector()
            self._pcs.append(pc)
            spec = vmodl.query.PropertyCollector.FilterSpec(
                objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=self._collector)],
                propSet=[
                    vmodl.query.PropertyCollector.PropertySpec(
                        type=vim.event.EventHistoryCollector, pathSet=["latestPage"]
                    )
                ],
            )
            pc.CreateFilter(spec, partialUpdates=False)
            # The first wait returns the current state at once.
            version, events = _wait(pc, "", _INNER_WAIT)
            versions.append(version)
            if index == 0:
                first = events
        for index, (pc, version) in enumerate(zip(self._pcs, versions, strict=True)):
            thread = threading.Thread(
                target=self._follow, args=(index, pc, version), name="vcenter-wake", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        return first

    def get(self, timeout: float) -> tuple[list[Any], bool]:
        """Events from every change reported within `timeout` s: (events, timed out)."""
        try:
            items = [self._queue.get(timeout=timeout)]
        except queue.Empty:
            return [], True
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        events: list[Any] = []
        for item in items:
            if isinstance(item, BaseException):
                raise item
            if item is not _INTERRUPT:
                events.extend(item)
        return events, False

    def interrupt(self) -> None:
        """Make a `get` in another thread return now."""
        self._queue.put(_INTERRUPT)

    def close(self) -> None:
        """Stop the waiters and destroy their collectors; never raises."""
        self._closing.set()
        for pc in self._pcs:
            with contextlib.suppress(Exception):
                pc.CancelWaitForUpdates()
        for thread in self._threads:
            thread.join(timeout=2)
        for pc in self._pcs:
            with contextlib.suppress(Exception):
                pc.DestroyPropertyCollector()
        self._pcs.clear()

    def _follow(self, index: int, pc: Any, version: str) -> None:
        while not self._closing.is_set():
            if index:
                self._align(index)
            elif self._count > 1:
                self._phase = time.monotonic()
            try:
                version, events = _wait(pc, version, _INNER_WAIT)
            except Exception as exc:
                if not self._closing.is_set():
                    self._queue.put(exc)
                return
            if events:
                self._queue.put(events)

    def _align(self, index: int) -> None:
        """Start waiter `index` index/count of a tick after waiter 0's ticks."""
        tick = self._tick
        slot = self._phase + tick * index / self._count
        late = (time.monotonic() - slot) % tick
        if late < _ALIGN_TOLERANCE or late > tick - _ALIGN_TOLERANCE:
            return
        self._closing.wait(tick - late)


def _wait(pc: Any, version: str, max_wait: int) -> tuple[str, list[Any]]:
    options = vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=max_wait)
    update = pc.WaitForUpdatesEx(version, options)
    if update is None:
        return version, []
    events: list[Any] = []
    for filter_update in update.filterSet or ():
        for object_update in filter_update.objectSet or ():
            for change in object_update.changeSet or ():
                if change.name == "latestPage" and change.val:
                    events.extend(change.val)
    return str(update.version), events
