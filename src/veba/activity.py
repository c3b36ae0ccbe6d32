"""What the appliance tells whoever runs it, one line per meaningful happening.

Deploys and removals, providers connecting, dropping and retrying, deliveries
that end in the dead-letter queue and how large it has grown: `veba serve`
prints each as it happens. The happy path per event (an event logged, an
attempt retried) is level "event", printed only with `--verbose`.

Parts of the appliance `report`; listeners (the serve console, tests) get a
`Happening`. A listener that fails is ignored: telling about the work never
stops the work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Activity", "Happening", "Level", "provider_changes"]

log = logging.getLogger("veba.activity")

# "event": one line per event or attempt (--verbose); the others always.
Level = Literal["event", "info", "warning", "error"]


@dataclass(frozen=True, slots=True)
class Happening:
    level: Level
    text: str
    at: float


Listener = Callable[[Happening], None]


class Activity:
    def __init__(self) -> None:
        self._listeners: list[tuple[Listener, bool]] = []

    def subscribe(self, listener: Listener, *, verbose: bool = False) -> None:
        """Call `listener` for every happening; per-event ones only if `verbose`."""
        self._listeners.append((listener, verbose))

    @property
    def verbose(self) -> bool:
        """Whether anyone wants per-event lines (so they are only made if so)."""
        return any(verbose for _, verbose in self._listeners)

    def report(self, level: Level, text: str) -> None:
        happening = Happening(level, text, time.time())
        for listener, verbose in self._listeners:
            if level == "event" and not verbose:
                continue
            try:
                listener(happening)
            except Exception:  # a console gone away must not stop a delivery
                log.debug("activity listener failed", exc_info=True)


def provider_changes(
    previous: Mapping[str, Any] | None, current: Mapping[str, Any]
) -> list[tuple[Level, str]]:
    """The lines a change of one provider's `status()` is worth: connected,
    disconnected (and retrying), failing to connect with a new error."""
    name = str(current.get("name") or "provider")
    connected = bool(current.get("connected"))
    error = current.get("last_error")
    was_connected = bool(previous and previous.get("connected"))
    old_error = previous.get("last_error") if previous else None
    if connected and not was_connected:
        return [("info", f"{name}: connected{_details(current)}")]
    if was_connected and not connected:
        why = f": {error}" if error else ""
        return [("warning", f"{name}: disconnected{why}; retrying with backoff")]
    if error and error != old_error:
        if connected:
            return [("warning", f"{name}: {error}")]
        return [("warning", f"{name}: cannot connect: {error}; retrying with backoff")]
    return []


def _details(status: Mapping[str, Any]) -> str:
    if status.get("type") == "simulator" and status.get("rate") is not None:
        return f" (simulating {status['rate']:g} event(s)/s)"
    parts = []
    if status.get("api_version"):
        parts.append(f"API {status['api_version']}")
    if status.get("last_key") is not None:
        parts.append(f"from key {status['last_key']}")
    return f" ({', '.join(parts)})" if parts else ""
