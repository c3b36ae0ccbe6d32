"""How much of a function runs at once: its call limit, its workers, the appliance's cap.

* `CallLimit`: the calls of one function in flight, whatever path they came by
  (events, async calls, sync calls), held to its ``maxInflight``. The dispatcher
  waits for a slot (its events wait in the log meanwhile); a sync call takes one
  at once or within its queue timeout, else is refused (429, as OpenFaaS's
  watchdog answers over ``max_inflight``).
* `Scaling`: a pool's workers between its minimum and maximum on measured demand
  (calls queued and in flight against what one worker runs at once), retiring a
  worker only once it has been idle for ``idle`` seconds (the hysteresis), and to
  zero when the minimum is 0.
* `WorkerBudget`: the appliance's cap on workers of every function together, so
  a burst cannot start more processes (~16 MB each) than the machine holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_IDLE", "DEFAULT_MAX_WORKERS", "CallLimit", "Scaling", "WorkerBudget"]

DEFAULT_IDLE = 30.0  # seconds a worker beyond the minimum idles before it is retired
DEFAULT_MAX_WORKERS = 64  # the appliance's workers of every function together


class CallLimit:
    """At most ``limit`` calls of one function in flight; waiters are served in order."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a call limit is at least 1")
        self.limit = limit
        self.in_use = 0
        self.refused = 0  # sync calls turned away, for stats
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._listeners: list[Callable[[], None]] = []  # told when a slot frees

    @property
    def free(self) -> int:
        return max(self.limit - self.in_use - len(self._waiters), 0)

    def on_free(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def try_take(self) -> bool:
        if self.in_use < self.limit and not self._waiters:
            self.in_use += 1
            return True
        return False

    async def take(self, timeout: float | None = None) -> bool:
        """A slot, waiting up to ``timeout`` seconds (None: as long as it takes)."""
        if self.try_take():
            return True
        if timeout is not None and timeout <= 0:
            return False
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
            return True
        except TimeoutError:
            # Handed over just as the wait ran out: keep it.
            return waiter.done() and not waiter.cancelled()
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give()  # handed over, but the caller is gone: pass it on
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            if not waiter.done():
                waiter.cancel()

    def give(self) -> None:
        """Free a slot: to the oldest waiter if any (it stays in use), else to anyone."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.in_use -= 1
        for listener in self._listeners:
            listener()

    def stats(self) -> dict[str, int]:
        return {
            "limit": self.limit,
            "in_use": self.in_use,
            "waiting": len(self._waiters),
            "refused": self.refused,
        }


class WorkerBudget:
    """How many more workers the appliance may start beyond each pool's minimum."""

    def __init__(self, cap: int = DEFAULT_MAX_WORKERS) -> None:
        self.cap = cap
        self.used = 0
        self.denied = 0  # scale-ups the cap held back, for stats

    def take(self, *, required: bool = False) -> bool:
        """One worker; a pool's minimum is ``required`` (counted, never refused)."""
        if required or self.used < self.cap:
            self.used += 1
            return True
        self.denied += 1
        return False

    def give(self) -> None:
        self.used = max(self.used - 1, 0)


@dataclass
class ScaleDecision:
    at: float  # time.time()
    old: int
    new: int
    why: str

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at, "from": self.old, "to": self.new, "why": self.why}


class Scaling:
    """A pool's scaling rule: how many workers its demand asks for, within bounds."""

    def __init__(
        self,
        *,
        minimum: int,
        maximum: int,
        per_worker: int = 1,
        idle: float = DEFAULT_IDLE,
        budget: WorkerBudget | None = None,
        report: Callable[[str], None] | None = None,
    ) -> None:
        if minimum < 0 or maximum < max(minimum, 1) or per_worker < 1 or idle < 0:
            raise ValueError("expected 0 <= minimum <= maximum, maximum >= 1, per_worker >= 1")
        self.minimum = minimum
        self.maximum = maximum
        self.per_worker = per_worker
        self.idle = idle
        self.budget = budget if budget is not None else WorkerBudget(cap=1 << 30)
        self._report = report
        self.ups = 0
        self.downs = 0
        self.last: ScaleDecision | None = None

    @property
    def fixed(self) -> bool:
        """No scaling at all: as many workers as the minimum, always."""
        return self.minimum == self.maximum

    def wanted(self, demand: int) -> int:
        """Workers for ``demand`` calls (queued and in flight), within the bounds."""
        return min(max(math.ceil(demand / self.per_worker), self.minimum), self.maximum)

    def tick(self) -> float:
        """How often to look for idle workers: often enough for the hysteresis."""
        return min(max(self.idle / 4, 0.05), 1.0)

    def decided(self, old: int, new: int, why: str) -> None:
        if new > old:
            self.ups += 1
        else:
            self.downs += 1
        self.last = ScaleDecision(time.time(), old, new, why)
        if self._report is not None:
            self._report(f"scaled from {old} to {new} worker(s): {why}")

    def stats(self) -> dict[str, Any]:
        return {
            "min_workers": self.minimum,
            "max_workers": self.maximum,
            "calls_per_worker": self.per_worker,
            "idle_seconds": self.idle,
            "scale_ups": self.ups,
            "scale_downs": self.downs,
            "last_scale": self.last.to_dict() if self.last else None,
        }
