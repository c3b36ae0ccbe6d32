"""How often the appliance's event log has seen each subject."""

from __future__ import annotations

import asyncio

from veba.eventlog.base import EventLog

__all__ = ["SeenCounter"]


class SeenCounter:
    """How many events of each subject an event log holds, counted incrementally:
    the first call counts the whole log, later ones only what was appended since
    (`EventLog.subject_counts`), so asking often costs little however long the log."""

    def __init__(self) -> None:
        self._seq = 0
        self._counts: dict[str, tuple[int, str]] = {}
        self._lock = asyncio.Lock()

    async def counts(self, log: EventLog) -> dict[str, tuple[int, str]]:
        """subject -> (events, CloudEvent type of the latest counted)."""
        async with self._lock:
            found = await log.subject_counts(self._seq)
            for subject, cloudevent_type, count in found.counts:
                before, _ = self._counts.get(subject, (0, cloudevent_type))
                self._counts[subject] = (before + count, cloudevent_type)
            self._seq = max(self._seq, found.upto)
            return dict(self._counts)
