"""Function log lines: kept in memory for `veba logs`, appended to a file per
function, streamed to followers, and scrubbed of the function's secret values."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from veba.scrub import Scrubber

__all__ = ["LogHub", "LogLine"]

_KEEP = 5000
_NOTHING = Scrubber()


@dataclass(frozen=True, slots=True)
class LogLine:
    name: str
    stream: str
    timestamp: float
    text: str

    def to_dict(self) -> dict[str, Any]:
        # The shape of OpenFaaS's /system/logs lines, plus the stream.
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.timestamp))
        millis = int((self.timestamp % 1) * 1000)
        return {
            "name": self.name,
            "instance": self.stream,
            "timestamp": f"{stamp}.{millis:03d}Z",
            "text": self.text,
        }


class LogHub:
    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._lines: dict[str, deque[LogLine]] = {}
        self._files: dict[str, IO[str]] = {}
        self._followers: dict[str, set[asyncio.Queue[LogLine]]] = {}
        self._scrubbers: dict[str, Scrubber] = {}

    def set_scrubber(self, name: str, scrubber: Scrubber) -> None:
        """What must never appear in this function's log: its secrets and store
        tokens (the pool scrubs its workers' lines already; this also covers the
        lines other parts of veba write about the function)."""
        self._scrubbers[name] = scrubber

    def write(self, name: str, stream: str, text: str) -> None:
        text = self._scrubbers.get(name, _NOTHING).text(text)
        line = LogLine(name, stream, time.time(), text.rstrip("\n"))
        self._lines.setdefault(name, deque(maxlen=_KEEP)).append(line)
        file = self._files.get(name)
        if file is None:
            self._dir.mkdir(parents=True, exist_ok=True)
            file = self._files[name] = open(  # noqa: SIM115 - held open for the function's life
                self._dir / f"{name}.log", "a", buffering=1, encoding="utf-8"
            )
        file.write(f"{line.to_dict()['timestamp']} {stream} {line.text}\n")
        for queue in self._followers.get(name, ()):
            queue.put_nowait(line)

    def tail(self, name: str, n: int = 100) -> list[LogLine]:
        lines = self._lines.get(name, deque())
        return list(lines)[-n:] if n > 0 else list(lines)

    async def follow(self, name: str) -> AsyncIterator[LogLine]:
        queue: asyncio.Queue[LogLine] = asyncio.Queue()
        self._followers.setdefault(name, set()).add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._followers[name].discard(queue)

    def forget(self, name: str) -> None:
        file = self._files.pop(name, None)
        if file is not None:
            file.close()

    def close(self) -> None:
        for name in list(self._files):
            self.forget(name)
