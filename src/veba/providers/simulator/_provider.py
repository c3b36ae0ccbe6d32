"""`SimulatorProvider`: the simulated vCenter, paced into the event log."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from veba.events import Event
from veba.providers.base import EventSink
from veba.providers.simulator._core import DEFAULT_SOURCE, DEFAULT_START, VCenterSimulator

__all__ = ["SimulatorProvider"]

log = logging.getLogger("veba.providers.simulator")

_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 5.0


def _wall_clock() -> datetime:
    return datetime.now(UTC)


class SimulatorProvider:
    """Publishes a `VCenterSimulator`'s events at `rate` events per second.

    Pacing follows absolute deadlines on the event loop's clock, so it does not
    drift; when behind (a slow commit) it publishes what is due in one batch of
    up to `burst` events, and a backlog of more than `burst` events is dropped
    rather than caught up. `rate` 0 pauses; `set_rate` changes it while running.

    The checkpoint is the next Key, committed with the events it follows; on
    start the provider resumes from it, so keys never repeat across restarts.
    Event times come from `clock` (the wall clock by default; None for the
    simulator's logical clock).
    """

    type = "simulator"
    start_timeout = 5.0  # how long `trigger` waits for `run` to have started

    def __init__(
        self,
        name: str = "simulator",
        *,
        rate: float = 2.0,
        seed: int = 0,
        burst: int = 100,
        datacenters: int = 1,
        clusters_per_dc: int = 2,
        hosts_per_cluster: int = 3,
        vms_per_host: int = 5,
        source: str = DEFAULT_SOURCE,
        instance_uuid: str | None = None,
        start_time: datetime = DEFAULT_START,
        clock: Callable[[], datetime] | None = _wall_clock,
    ) -> None:
        if burst < 1:
            raise ValueError("burst must be >= 1")
        self.name = name
        self.seed = seed
        self.burst = burst
        self._wake = asyncio.Event()  # set when the rate changes
        self._rate = 0.0
        self.set_rate(rate)
        self.simulator = VCenterSimulator(
            seed,
            datacenters=datacenters,
            clusters_per_dc=clusters_per_dc,
            hosts_per_cluster=hosts_per_cluster,
            vms_per_host=vms_per_host,
            source=source,
            instance_uuid=instance_uuid,
            start_time=start_time,
            clock=clock,
        )
        self._sink: EventSink | None = None
        self._ready = asyncio.Event()
        self._lock = asyncio.Lock()
        self._pending: list[Event] = []  # generated, not yet durable
        self._connected = False
        self._last_key: int | None = None
        self._events = 0
        self._last_error: str | None = None

    @property
    def rate(self) -> float:
        return self._rate

    def set_rate(self, rate: float) -> None:
        """Events per second; 0 pauses. Takes effect at once."""
        if not rate >= 0:
            raise ValueError("rate must be >= 0")
        self._rate = float(rate)
        self._wake.set()

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "connected": self._connected,
            "last_key": self._last_key,
            "events": self._events,
            "last_error": self._last_error,
            "rate": self._rate,
            "seed": self.seed,
            "source": self.simulator.source,
            "pending": len(self._pending),
        }

    async def run(self, sink: EventSink) -> None:
        if self._sink is not None:
            raise RuntimeError(f"provider {self.name!r} is already running")
        self._sink = sink
        try:
            await self._restore(sink)
            self._ready.set()
            await self._pace()
        finally:
            self._sink = None
            self._ready.clear()
            self._connected = False

    async def trigger(
        self, event_class: str | None = None, count: int = 1, **overrides: Any
    ) -> list[Event]:
        """Emit `count` operations now, each with an `event_class` event if given
        (overrides as for `VCenterSimulator.next_events`), and return once durable.

        Waits up to `start_timeout` seconds for `run` to have started. Raises
        `SimulationError` when the simulated vCenter cannot do it, and the sink's
        error when it is down (the events then stay queued, and the run loop
        publishes them first when the sink is back).
        """
        if not self._ready.is_set():
            try:
                async with asyncio.timeout(self.start_timeout):
                    await self._ready.wait()
            except TimeoutError:
                raise RuntimeError(f"provider {self.name!r} is not running") from None
        events: list[Event] = []
        async with self._lock:
            try:
                for done in range(count):
                    events += self.simulator.next_events(event_class, **overrides)
                    if done % 50 == 49:  # let requests and deliveries through meanwhile
                        await asyncio.sleep(0)
            finally:
                self._pending += events
            await self._flush()
        return events

    # -- internals -------------------------------------------------------------------

    async def _restore(self, sink: EventSink) -> None:
        backoff = _BACKOFF_FIRST
        while True:
            try:
                value = await sink.checkpoint(self.name)
                break
            except Exception as exc:
                self._failed("reading the checkpoint", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
        if value is None:
            return
        try:
            next_key = int(value)
        except ValueError:
            self._last_error = f"ignored checkpoint {value!r}: not a key"
            log.warning("%s: %s", self.name, self._last_error)
            return
        if self._pending and int(self._pending[0].data["Key"]) == next_key:
            return  # left from an earlier run of this object: publish those first
        self._pending.clear()
        if next_key != self.simulator.next_key:
            self.simulator.resume(next_key)

    async def _pace(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        backoff = _BACKOFF_FIRST
        while True:
            if self._rate <= 0:
                self._wake.clear()
                await self._wake.wait()
                deadline = loop.time()
                continue
            delay = deadline - loop.time()
            if delay > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                    deadline = loop.time()  # the rate changed: start over from now
                continue
            try:
                async with self._lock:
                    if not self._pending:
                        deadline = self._generate(deadline, loop.time())
                    await self._flush()
                backoff = _BACKOFF_FIRST
            except Exception as exc:
                self._failed("publishing", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)

    def _generate(self, deadline: float, now: float) -> float:
        """Queue the operations due by `now`, at most `burst` events; the next deadline."""
        rate = self._rate
        deadline = max(deadline, now - self.burst / rate)  # forgive a longer backlog
        queued = 0
        while deadline <= now and queued < self.burst:
            events = self.simulator.next_events()
            self._pending += events
            queued += len(events)
            deadline += len(events) / rate
        return deadline

    async def _flush(self) -> None:
        if not self._pending or self._sink is None:
            return
        batch = list(self._pending)
        last_key = int(batch[-1].data["Key"])
        await self._sink.publish(batch, checkpoint=(self.name, str(last_key + 1)))
        del self._pending[: len(batch)]
        self._events += len(batch)
        self._last_key = last_key
        self._connected = True
        self._last_error = None

    def _failed(self, doing: str, exc: Exception) -> None:
        self._connected = False
        self._last_error = f"{doing}: {type(exc).__name__}: {exc}"
        log.warning("%s: %s", self.name, self._last_error)
