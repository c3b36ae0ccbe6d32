"""Each subscription's deliveries by status, kept by each node as the states
stream grows, so `counts()` reads what was written since it last looked rather
than every state message of the log.

A delivery's status is the last state message of its id; a new one replaces it
in the stream. The tally keeps the status it last read for each id (2 bytes an
id, `StatusMap`), so a new state moves one count from the old status to the new
without reading the old message. Deletions (retention's and `forget`'s) are not
seen in the states stream; whoever deletes states publishes their ids as a
notice on the gone stream (`Notice`), and the tally reads those too. What a
tally cannot have heard of (notices it was too late to read, a node that
published none) is mended by reading everything again: when notices it has not
read are gone, and every `REBUILD_EVERY` seconds in any case.
"""

from __future__ import annotations

from array import array
from collections import Counter

import orjson

from veba.eventlog.base import Status

__all__ = ["REBUILD_EVERY", "StatusMap", "Tally", "notice", "notice_ids"]

REBUILD_EVERY = 600.0  # seconds: the longest a tally goes without a full read
_STATUSES: tuple[Status, ...] = ("pending", "leased", "delivered", "dead")
_STATUS_BITS = 3
_CHUNK_BITS = 16  # ids per chunk: 65,536, 128 KB each


class StatusMap:
    """Delivery id -> a small code (0: no state), two bytes an id, in chunks of
    65,536 ids, each freed once it holds none: a log's delivery ids are its
    deliveries stream's seqs, dense, and retention empties the oldest first."""

    def __init__(self) -> None:
        self._chunks: dict[int, array[int]] = {}
        self._live: dict[int, int] = {}
        self.size = 0

    def get(self, key: int) -> int:
        chunk = self._chunks.get(key >> _CHUNK_BITS)
        return 0 if chunk is None else chunk[key & ((1 << _CHUNK_BITS) - 1)]

    def set(self, key: int, code: int) -> None:
        number, at = key >> _CHUNK_BITS, key & ((1 << _CHUNK_BITS) - 1)
        chunk = self._chunks.get(number)
        if chunk is None:
            if not code:
                return
            chunk = self._chunks[number] = array("H", bytes(2 << _CHUNK_BITS))
            self._live[number] = 0
        old = chunk[at]
        chunk[at] = code
        change = bool(code) - bool(old)
        if change:
            self.size += change
            self._live[number] += change
            if not self._live[number]:
                del self._chunks[number], self._live[number]


class Tally:
    """Deliveries by subscription and status, from the state messages folded in."""

    def __init__(self) -> None:
        self.statuses = StatusMap()
        self._subscriptions: list[str] = []
        self._index: dict[str, int] = {}
        self._counts: dict[str, Counter[str]] = {}
        self.states_seq = 0  # the last state message folded in
        self.gone_seq = 0  # the last notice read
        self.built = 0.0  # time.monotonic() of the full read it began with

    def fold(self, delivery_id: int, subscription: str, status: Status) -> None:
        """The delivery's latest state says `status`."""
        index = self._index.get(subscription)
        if index is None:
            index = self._index[subscription] = len(self._subscriptions)
            self._subscriptions.append(subscription)
            self._counts[subscription] = Counter()
        self._drop(delivery_id)
        self.statuses.set(delivery_id, (index + 1) << _STATUS_BITS | _STATUSES.index(status) + 1)
        self._counts[subscription][status] += 1

    def forget(self, delivery_id: int) -> None:
        """Its state is deleted."""
        self._drop(delivery_id)
        self.statuses.set(delivery_id, 0)

    def _drop(self, delivery_id: int) -> None:
        code = self.statuses.get(delivery_id)
        if code:
            subscription = self._subscriptions[(code >> _STATUS_BITS) - 1]
            status = _STATUSES[(code & ((1 << _STATUS_BITS) - 1)) - 1]
            self._counts[subscription][status] -= 1

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            sub: {status: n for status, n in by_status.items() if n}
            for sub, by_status in self._counts.items()
            if any(by_status.values())
        }


def notice(delivery_ids: list[int]) -> bytes:
    """A notice that these deliveries' states are deleted."""
    return orjson.dumps({"deleted": delivery_ids})


def notice_ids(body: bytes) -> list[int]:
    return [int(i) for i in orjson.loads(body).get("deleted", [])]
