"""Function log lines: kept in memory for `veba logs`, appended to a file per
function, streamed to followers, and scrubbed of the function's secret values.

Files are ``<logs dir>/<function>.log``, private (0600), rotated by size: past
``max_bytes`` the file becomes ``.log.1`` (and ``.1`` becomes ``.2``...), and only
``keep`` rotated files stay. `veba logs` reads the lines kept in memory (the
last 5000 per function), so a rotation does not cut what it shows.

A line written under an event's scope (`veba.tracing`: the pool hands over a
call's output so) names it in the file, ``<time> <stream> [event=<id>
delivery=<n> attempt=<n>] <text>`` (the id percent-encoded where it has spaces
or brackets), so `event_lines` finds an event's output again, after a restart too.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import os
import re
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, unquote

from veba.scrub import Scrubber
from veba.tracing import current_scope

__all__ = ["DEFAULT_KEEP", "DEFAULT_MAX_BYTES", "LogHub", "LogLine"]

_KEEP = 5000
DEFAULT_MAX_BYTES = 10 << 20
DEFAULT_KEEP = 3
_NOTHING = Scrubber()
# An event id as a file line names it: no space, bracket or `=` left as is.
_ID_SAFE = "!$&'()*+,-./:;<>?@^_`{|}~"
# How far before an event's arrival a log file's time may read and still hold
# its lines (`event_lines`): far more than the clock's tick, and a file more
# read costs little.
_MTIME_SLACK = 1.0
_TAGGED = re.compile(
    r"(\S+) (\S+) \[event=(\S+)(?: delivery=(\d+))?(?: attempt=(\d+))?\] (.*)", re.DOTALL
)


@dataclass(frozen=True, slots=True)
class LogLine:
    name: str
    stream: str
    timestamp: float
    text: str
    event_id: str | None = None  # the event whose delivery printed it, when known
    delivery: int | None = None
    attempt: int | None = None

    def to_dict(self) -> dict[str, Any]:
        # The shape of OpenFaaS's /system/logs lines, plus the stream (and the event).
        out = {
            "name": self.name,
            "instance": self.stream,
            "timestamp": _stamp(self.timestamp),
            "text": self.text,
        }
        if self.event_id is not None:
            out["event"] = self.event_id
        return out

    def file_line(self) -> str:
        if self.event_id is None:
            # A printed "[event=..." must not read back as a tag: a function
            # could put lines into the story of another event it was sent.
            text = "\\" + self.text if self.text.startswith("[event=") else self.text
            return f"{_stamp(self.timestamp)} {self.stream} {text}\n"
        tag = f"event={quote(self.event_id, safe=_ID_SAFE)}"
        if self.delivery is not None:
            tag += f" delivery={self.delivery}"
        if self.attempt is not None:
            tag += f" attempt={self.attempt}"
        return f"{_stamp(self.timestamp)} {self.stream} [{tag}] {self.text}\n"


def _stamp(timestamp: float) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp))
    return f"{stamp}.{int((timestamp % 1) * 1000):03d}Z"


def _parse_stamp(text: str) -> float:
    whole, _, millis = text.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + int(millis or 0) / 1000


class _File:
    """One function's log file, appended to and rotated by size."""

    def __init__(self, path: Path, max_bytes: int, keep: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.size = 0
        self._out = self._open()

    def _open(self) -> IO[str]:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        out = open(fd, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - held open
        self.size = out.tell()
        return out

    def write(self, text: str) -> None:
        size = len(text.encode())
        if self.size and self.size + size > self.max_bytes:
            self._rotate()
        self._out.write(text)
        self.size += size

    def _rotate(self) -> None:
        self._out.close()
        rotated = [self.path.with_name(f"{self.path.name}.{n}") for n in range(self.keep + 1)]
        rotated[0] = self.path
        with contextlib.suppress(FileNotFoundError):
            rotated[-1].unlink()
        for n in range(self.keep - 1, -1, -1):  # .2 -> .3, .1 -> .2, .log -> .1
            with contextlib.suppress(FileNotFoundError):
                rotated[n].rename(rotated[n + 1])
        self._out = self._open()

    def close(self) -> None:
        self._out.close()


class LogHub:
    def __init__(
        self, directory: Path, *, max_bytes: int = DEFAULT_MAX_BYTES, keep: int = DEFAULT_KEEP
    ) -> None:
        if max_bytes < 1 or keep < 0:
            raise ValueError("max_bytes must be positive and keep not negative")
        self._dir = directory
        self._max_bytes = max_bytes
        self._keep = keep
        self._lines: dict[str, deque[LogLine]] = {}
        self._files: dict[str, _File] = {}
        self._followers: dict[str, set[asyncio.Queue[LogLine | None]]] = {}
        self._ended = False
        self._scrubbers: dict[str, Scrubber] = {}

    def set_scrubber(self, name: str, scrubber: Scrubber) -> None:
        """What must never appear in this function's log: its secrets and store
        tokens (the pool scrubs its workers' lines already; this also covers the
        lines other parts of veba write about the function)."""
        self._scrubbers[name] = scrubber

    def scrub(self, name: str, text: str) -> str:
        """`text` without `name`'s secret values (for what others tell of it)."""
        return self._scrubbers.get(name, _NOTHING).text(text)

    def write(self, name: str, stream: str, text: str) -> None:
        """One line of `name`'s log; under an event's scope, filed under that event."""
        text = self._scrubbers.get(name, _NOTHING).text(text)
        scope = current_scope()
        if scope is not None and scope.event_id is not None:
            line = LogLine(
                name, stream, time.time(), text.rstrip("\n"),
                scope.event_id, scope.delivery, scope.attempt,
            )  # fmt: skip
        else:
            line = LogLine(name, stream, time.time(), text.rstrip("\n"))
        self._lines.setdefault(name, deque(maxlen=_KEEP)).append(line)
        file = self._files.get(name)
        if file is None:
            self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            file = self._files[name] = _File(self._dir / f"{name}.log", self._max_bytes, self._keep)
        file.write(line.file_line())
        for queue in self._followers.get(name, ()):
            queue.put_nowait(line)

    def event_lines(self, name: str, event_id: str, since: float = 0.0) -> list[LogLine]:
        """`name`'s lines filed under `event_id`, oldest first, read from its files
        (rotated ones too, skipping those last written before `since`): what
        survives a restart. Blocking; scrubbed again with today's secrets."""
        needle = f" [event={quote(event_id, safe=_ID_SAFE)}".encode()
        base = self._dir / f"{name}.log"
        paths = [base.with_name(f"{base.name}.{n}") for n in range(self._keep, 0, -1)]
        found: list[LogLine] = []
        for path in [*paths, base]:
            try:
                # A file's time is the kernel's coarse clock, a tick or more
                # behind: a line written a millisecond after the event arrived
                # may carry an earlier time than its arrival.
                if path.stat().st_mtime < since - _MTIME_SLACK:
                    continue
                data = path.read_bytes()
            except OSError:
                continue
            at = data.find(needle)
            while at >= 0:
                start = data.rfind(b"\n", 0, at) + 1
                end = data.find(b"\n", at)
                end = len(data) if end < 0 else end
                line = self._parse(name, data[start:end].decode("utf-8", "replace"))
                if line is not None and line.event_id == event_id:
                    found.append(line)
                at = data.find(needle, end)
        return found

    def _parse(self, name: str, raw: str) -> LogLine | None:
        match = _TAGGED.fullmatch(raw)
        if match is None:
            return None
        stamp, stream, event_id, delivery, attempt, text = match.groups()
        try:
            when = _parse_stamp(stamp)
        except ValueError:
            return None
        return LogLine(
            name,
            stream,
            when,
            self._scrubbers.get(name, _NOTHING).text(text),
            unquote(event_id),
            None if delivery is None else int(delivery),
            None if attempt is None else int(attempt),
        )

    def tail(self, name: str, n: int = 100) -> list[LogLine]:
        lines = self._lines.get(name, deque())
        return list(lines)[-n:] if n > 0 else list(lines)

    async def follow(self, name: str) -> AsyncIterator[LogLine]:
        """New lines of `name` as they come, until `end_follows`."""
        if self._ended:
            return
        queue: asyncio.Queue[LogLine | None] = asyncio.Queue()
        self._followers.setdefault(name, set()).add(queue)
        try:
            while (line := await queue.get()) is not None:
                yield line
        finally:
            self._followers[name].discard(queue)

    def end_follows(self) -> None:
        """End every `follow` (the appliance is stopping): its streamed response
        finishes at once instead of holding the server's shutdown."""
        self._ended = True
        for queues in self._followers.values():
            for queue in queues:
                queue.put_nowait(None)

    def forget(self, name: str) -> None:
        file = self._files.pop(name, None)
        if file is not None:
            file.close()

    def close(self) -> None:
        for name in list(self._files):
            self.forget(name)
