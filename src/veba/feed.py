"""The live feed: every event the log has just made durable, to whoever watches
(the dashboard's stream, `GET /api/v1/events/stream`).

Ingest must never wait for a watcher. `Feed.publish` runs in the publisher's
own call, after the append committed: per watcher it checks the watcher's
filter and appends to a bounded queue; a watcher whose queue is full loses the
oldest entries and is told how many it missed (a "gap"), so a slow browser
costs a fixed amount of memory and nothing else. With nobody watching,
`publish` does nothing. Summaries (what a list row shows) are made on the
watcher's side, only for what it takes.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from veba.eventlog import AppendResult
from veba.events import Event

__all__ = ["EventFilter", "Feed", "Watcher", "event_names", "summary"]

# The managed objects a vSphere event's data names (`data.Vm.Name` ...), as the
# name filter and a list row see them.
_NAMED = {
    "vm": "Vm",
    "host": "Host",
    "cluster": "ComputeResource",
    "datacenter": "Datacenter",
    "datastore": "Ds",
    "network": "Net",
    "dvs": "Dvs",
}


def event_names(event: Event) -> dict[str, str]:
    """`{"vm": "web-01", "host": "esx-1", ...}`: the names a vSphere event's data
    holds, in either shape (both keep them under the same keys)."""
    data = event.data
    if not isinstance(data, dict):
        return {}
    names = {}
    for short, key in _NAMED.items():
        node = data.get(key)
        if isinstance(node, dict):
            name = node.get("Name")
            if isinstance(name, str) and name:
                names[short] = name
    return names


@dataclass(frozen=True, slots=True)
class EventFilter:
    """What a watcher asks for; each part a case-insensitive substring, all must
    hold: `type` of the type or the subject (v0.7 keeps the class there), `source`
    of the source, `name` of any VM, host, cluster, datacenter, datastore or
    network name in the data."""

    type: str = ""
    source: str = ""
    name: str = ""

    def __post_init__(self) -> None:
        for part in ("type", "source", "name"):
            object.__setattr__(self, part, getattr(self, part).strip().lower())

    def matches(self, event: Event) -> bool:
        if self.type:
            subject = event.attributes.get("subject", "")
            if self.type not in event.type.lower() and self.type not in subject.lower():
                return False
        if self.source and self.source not in event.source.lower():
            return False
        if self.name:
            names = event_names(event).values()
            if not any(self.name in n.lower() for n in names):
                return False
        return True

    @property
    def everything(self) -> bool:
        return not (self.type or self.source or self.name)


def summary(seq: int, received: float, event: Event) -> dict[str, Any]:
    """One event as a row of the live list: small, whatever its data's size."""
    attributes = event.attributes
    data = event.data
    message = data.get("FullFormattedMessage") if isinstance(data, dict) else None
    return {
        "seq": seq,
        "received": received,
        "id": event.id,
        "source": event.source,
        "type": event.type,
        "subject": attributes.get("subject"),
        "time": attributes.get("time"),
        "names": event_names(event),
        "message": message[:300] if isinstance(message, str) else None,
    }


class Watcher:
    """One watcher's queue: at most `size` entries; beyond that the oldest go
    and are counted in `missed` until the watcher next takes."""

    def __init__(self, feed: Feed, matcher: EventFilter, size: int) -> None:
        self._feed = feed
        self.filter = matcher
        self._queue: deque[tuple[int, float, Event]] = deque()
        self._size = size
        self.missed = 0
        self._ready = asyncio.Event()

    def _put(self, seq: int, received: float, event: Event) -> None:
        if len(self._queue) >= self._size:
            self._queue.popleft()
            self.missed += 1
        self._queue.append((seq, received, event))
        self._ready.set()

    async def wait(self, timeout: float) -> bool:
        """Until something is queued or the feed closes (True), or `timeout` (False)."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def take(self) -> tuple[list[tuple[int, float, Event]], int]:
        """Everything queued, and how many were lost before it."""
        items, self._queue = list(self._queue), deque()
        missed, self.missed = self.missed, 0
        if not self._feed.closed:
            self._ready.clear()
        return items, missed

    def close(self) -> None:
        self._feed._watchers.discard(self)

    def _end(self) -> None:
        self._ready.set()


class Feed:
    """The broadcast: `publish` from the appliance, `watch` from each stream."""

    def __init__(self, queue_size: int = 5000) -> None:
        self.queue_size = queue_size
        self._watchers: set[Watcher] = set()
        self.closed = False

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    def watch(self, matcher: EventFilter | None = None) -> Watcher:
        watcher = Watcher(self, matcher or EventFilter(), self.queue_size)
        if self.closed:
            watcher._end()
        else:
            self._watchers.add(watcher)
        return watcher

    def publish(self, events: Sequence[Event], result: AppendResult) -> None:
        """The events of one append that were new (`result.logged`), to every watcher
        whose filter takes them. Never blocks."""
        if not self._watchers or not result.logged:
            return
        received = result.received
        for watcher in list(self._watchers):
            matcher = watcher.filter
            every = matcher.everything
            for seq, index in result.logged:
                event = events[index]
                if every or matcher.matches(event):
                    watcher._put(seq, received, event)

    def close(self) -> None:
        """The appliance is stopping: every watcher's stream ends now."""
        self.closed = True
        for watcher in self._watchers:
            watcher._end()
        self._watchers.clear()
