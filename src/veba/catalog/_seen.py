"""How often the appliance's event log has seen each subject."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

__all__ = ["SeenCounter"]


class SeenCounter:
    """How many events of each subject an event log holds, counted incrementally.

    The first call counts the whole `events` table on the log's reader thread
    (one GROUP BY); later calls count only the rows appended since (a range of
    `seq`, the primary key), so asking often costs little however long the log.
    """

    def __init__(self) -> None:
        self._seq = 0
        self._counts: dict[str, tuple[int, str]] = {}
        self._lock = asyncio.Lock()

    async def counts(self, log: Any) -> dict[str, tuple[int, str]]:
        """subject -> (events, CloudEvent type of the latest counted)."""
        async with self._lock:
            low = self._seq

            def op(conn: sqlite3.Connection) -> tuple[int, list[tuple[str, str, int]]]:
                (high,) = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
                rows = conn.execute(
                    "SELECT subject, type, count(*) FROM events WHERE seq > ? AND seq <= ?"
                    " GROUP BY subject, type",
                    (low, high),
                ).fetchall()
                return int(high), rows

            high, rows = await log._read(op)
            for subject, cloudevent_type, count in rows:
                before, _ = self._counts.get(subject, (0, cloudevent_type))
                self._counts[subject] = (before + int(count), str(cloudevent_type))
            self._seq = max(self._seq, high)
            return dict(self._counts)
