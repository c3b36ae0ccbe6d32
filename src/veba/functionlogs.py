"""Function log lines: kept in memory for `veba logs`, appended to a file per
function, streamed to followers, and scrubbed of the function's secret values."""

from __future__ import annotations

import asyncio
import json
import time
import tomllib
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

__all__ = ["LogHub", "LogLine"]

_KEEP = 5000
_REDACTED = "[REDACTED]"


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


def _strings(text: str) -> set[str]:
    for parse in (tomllib.loads, json.loads):
        try:
            document = parse(text)
        except ValueError:
            continue
        found: set[str] = set()
        stack: list[Any] = [document]
        while stack:
            node = stack.pop()
            if isinstance(node, str):
                found.add(node)
            elif isinstance(node, dict):
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
        return found
    return set()


class LogHub:
    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._lines: dict[str, deque[LogLine]] = {}
        self._files: dict[str, IO[str]] = {}
        self._followers: dict[str, set[asyncio.Queue[LogLine | None]]] = {}
        self._ended = False
        self._redact: dict[str, list[str]] = {}

    def set_secrets(self, name: str, values: Iterable[bytes]) -> None:
        """Values that must never appear in this function's log: each secret
        whole and, for TOML or JSON secrets (vcconfig), every string in it."""
        texts: set[str] = set()
        for value in values:
            text = value.decode(errors="replace")
            texts.add(text.strip())
            texts.update(_strings(text))
        self._redact[name] = sorted((t for t in texts if len(t) >= 3), key=len, reverse=True)

    def write(self, name: str, stream: str, text: str) -> None:
        for secret in self._redact.get(name, ()):
            if secret in text:
                text = text.replace(secret, _REDACTED)
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
