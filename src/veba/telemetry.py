"""What the dashboard shows, kept in memory by the appliance as things happen.

`Telemetry` is told of every event logged and every settled delivery attempt
(`Appliance.publish` and `Appliance._observe`) and keeps, since the appliance
started: events and attempts by outcome in 10-second buckets over the last
hour, and per function its recent attempt durations (for p50/p99), attempts per
second over the last minute, totals and its last error. Bounded whatever the
load: fixed rings and a window of durations per function.

`read_live` reads what the log and the providers know now (backlog, lag, dead
letters, sizes, checkpoints): the one read behind both `/metrics`'s gauges and
`/api/v1/overview`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from veba.eventlog.base import Delivery
from veba.observability import Live, Subscriber
from veba.targets.base import Result

if TYPE_CHECKING:
    from veba.appliance import Appliance

__all__ = ["OUTCOMES", "FunctionTelemetry", "LastError", "Ring", "Telemetry", "read_live"]

OUTCOMES = ("delivered", "retried", "dead")
STEP = 10  # seconds a bucket of the series covers
BUCKETS = 360  # an hour of them
WINDOW = 1000  # recent attempt durations kept per function, for percentiles
RATE_SECONDS = 60
_ERROR_CHARS = 4000  # of the last error's text; the log keeps the whole of it


class Ring:
    """Counts in buckets of `step` seconds, the newest `size` of them."""

    def __init__(self, step: float, size: int) -> None:
        self.step = step
        self.size = size
        self._counts = [0] * size
        self._ids = [-1] * size  # which bucket each slot holds now

    def add(self, when: float, n: int = 1) -> None:
        bucket = int(when // self.step)
        slot = bucket % self.size
        if self._ids[slot] != bucket:
            self._ids[slot], self._counts[slot] = bucket, 0
        self._counts[slot] += n

    def values(self, now: float) -> list[int]:
        """Oldest first; the last is the bucket `now` is in."""
        newest = int(now // self.step)
        out = []
        for bucket in range(newest - self.size + 1, newest + 1):
            slot = bucket % self.size
            out.append(self._counts[slot] if self._ids[slot] == bucket else 0)
        return out

    def end(self, now: float) -> float:
        """When the bucket `now` is in ends."""
        return (int(now // self.step) + 1) * self.step


@dataclass(frozen=True, slots=True)
class LastError:
    at: float
    error: str  # already scrubbed of the function's secrets (where the pool got it)
    event_id: str | None
    delivery_id: int | None


@dataclass
class FunctionTelemetry:
    durations: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    per_second: Ring = field(default_factory=lambda: Ring(1.0, RATE_SECONDS + 1))
    attempts: int = 0
    errors: int = 0  # attempts that failed: retried or dead
    delivered: int = 0
    dead: int = 0
    last_error: LastError | None = None

    def rate(self, now: float) -> float:
        """Attempts settled per second over the last minute (the current second
        left out: it has not ended)."""
        return sum(self.per_second.values(now)[:-1]) / RATE_SECONDS

    def percentile(self, q: float) -> float | None:
        """Of the recent durations, in seconds (nearest rank); None before any."""
        if not self.durations:
            return None
        ordered = sorted(self.durations)
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class Telemetry:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.events = Ring(STEP, BUCKETS)
        self.outcomes = {outcome: Ring(STEP, BUCKETS) for outcome in OUTCOMES}
        self.events_total = 0
        self._functions: dict[str, FunctionTelemetry] = {}

    def logged(self, count: int) -> None:
        """`count` new events are in the log."""
        if count:
            self.events.add(self.clock(), count)
            self.events_total += count

    def attempt(self, function: str, outcome: str, result: Result, delivery: Delivery) -> None:
        """A settled attempt: outcome is delivered, retried or dead."""
        now = self.clock()
        seconds = max(0.0, now - result.started) if result.started else 0.0
        if outcome in self.outcomes:
            self.outcomes[outcome].add(now)
        fn = self._functions.get(function)
        if fn is None:
            fn = self._functions[function] = FunctionTelemetry()
        fn.durations.append(seconds)
        fn.per_second.add(now)
        fn.attempts += 1
        if outcome == "delivered":
            fn.delivered += 1
            return
        fn.errors += 1
        fn.dead += outcome == "dead"
        text = (result.error or f"{result.kind} {result.status or ''}").strip()
        fn.last_error = LastError(now, text[-_ERROR_CHARS:], delivery.event.id, delivery.id)

    def function(self, name: str) -> FunctionTelemetry:
        return self._functions.get(name) or FunctionTelemetry()

    def series(self, now: float) -> dict[str, Any]:
        return {
            "step": STEP,
            "end": self.events.end(now),
            "events": self.events.values(now),
            "deliveries": {outcome: ring.values(now) for outcome, ring in self.outcomes.items()},
        }


async def read_live(appliance: Appliance) -> Live:
    """What the log and the providers say now; the log's reads run together."""
    log = appliance.log
    backlog, size, checkpoints = await asyncio.gather(log.backlog(), log.size(), log.checkpoints())
    subscribers = [
        Subscriber(
            d.definition.name, "function", d.dispatcher.counts.in_flight if d.dispatcher else 0
        )
        for d in appliance.functions.all()
    ]
    subscribers += [
        Subscriber(p.name, "processor", p.dispatcher.counts.in_flight if p.dispatcher else 0)
        for p in appliance.processors
    ]
    providers = []
    for provider in appliance.providers:
        try:
            providers.append({"name": provider.name, **provider.status()})
        except Exception:  # a status is for telling; one broken never hides the rest
            providers.append({"name": provider.name, "state": "unknown"})
    return Live(
        now=time.time(),
        subscribers=subscribers,
        backlog=backlog,
        size=size,
        checkpoints={c.name: c.updated for c in checkpoints},
        providers=providers,
    )
