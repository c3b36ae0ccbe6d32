"""What runs a deployed function: the one interface the appliance uses for both kinds.

* `FunctionPool` (`veba.functions.supervisor`): warm ``worker.py`` processes that
  import a stack.yml function's handler and are spoken to over socketpairs.
* `WebAppPool` (`veba.functions.webapp`): warm instances of a Knative function's
  Procfile `web` command, spoken to over loopback HTTP.

The dispatcher's target, `veba invoke`, `veba logs` and `veba list` see only this.
"""

from __future__ import annotations

from typing import Any, Protocol

from veba.functions.supervisor import Invocation, LogSink, Outcome

__all__ = ["FunctionRuntime", "Invocation", "Outcome"]


class FunctionRuntime(Protocol):
    name: str
    log_sink: LogSink  # (function, stream, line): stdout, stderr and system lines

    async def start(self) -> None:
        """Start every instance; raise FunctionLoadError (with the reason) if one cannot."""
        ...

    async def stop(self) -> None:
        """End every instance; calls still waiting fail."""
        ...

    async def invoke(self, inv: Invocation, timeout: float) -> Outcome:
        """Run one call; the function's own faults come back as an `Outcome`, never raised."""
        ...

    @property
    def stats(self) -> dict[str, Any]:
        """At least: alive, pids, restarts, in_flight, invocations, errors, timeouts, crashes;
        and the scaling state (`veba.functions._scaling.Scaling.stats`): workers (running or
        starting: the scaling target), min_workers, max_workers, calls_per_worker,
        idle_seconds, scale_ups, scale_downs, last_scale ({at, from, to, why} or None)."""
        ...
