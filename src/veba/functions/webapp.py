"""Warm web apps: a Knative-style function's Procfile `web` process, spoken to over HTTP.

A `WebAppPool` keeps ``instances`` copies of the function's `web` command running,
each on its own loopback port (``$PORT``), and sends each invocation to the
least-busy live one over a keep-alive HTTP connection, as a Knative broker would
reach a pod. An instance is ready when its port answers; one that dies is
restarted with backoff, and the requests it held fail as crashes (the dispatcher
retries them). Between Knative's minScale and maxScale it starts instances when
the requests waiting and in flight ask for more (``concurrency`` per instance,
else ``target``) and ends one idle for ``idle`` seconds, to zero with minScale 0
(`veba.functions._scaling`). It has `FunctionPool`'s interface
(`veba.functions.runtime`), so the dispatcher, `veba invoke` and `veba logs`
treat both alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from veba.functions._restarts import SlotKeeper
from veba.functions._scaling import DEFAULT_IDLE, Scaling, WorkerBudget
from veba.functions._webproc import (
    LOOPBACK,
    WebProcess,
    free_port,
    launch_web_process,
    listening_beyond_loopback,
    web_env,
)
from veba.functions._workerproc import FunctionLoadError, Isolation, describe_exit
from veba.functions.supervisor import Invocation, LogSink, Outcome, log_to_logging
from veba.scrub import Scrubber
from veba.tracing import EventScope, current_scope, event_scope

__all__ = ["WebAppPool"]

# Not passed on: they describe one hop (RFC 9110 7.6.1), or the sender's own auth.
_HOP_HEADERS = frozenset(
    {
        "host", "content-length", "connection", "keep-alive", "transfer-encoding", "te",
        "upgrade", "proxy-connection", "proxy-authorization", "authorization",
    }
)  # fmt: skip
# httpx has already decoded the body, so the encoding no longer applies.
_RESPONSE_DROP = _HOP_HEADERS | {"content-encoding"}


@dataclass(eq=False)
class _Instance:
    slot: int
    process: WebProcess
    port: int
    in_flight: int = 0
    dead: bool = False  # ended, or ending on purpose
    unreachable: bool = False  # refused a connection: being ended, its watcher restarts it
    watcher: asyncio.Task[None] | None = None
    idle_since: float | None = None  # loop time it last had no request; None: busy

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"


class WebAppPool:
    """Warm instances of one function's web command, least-busy first."""

    def __init__(
        self,
        name: str,
        *,
        python: Path,
        app_dir: Path,
        command: str,
        instances: int = 1,
        environment: Mapping[str, str] | None = None,
        log_sink: LogSink = log_to_logging,
        concurrency: int = 0,
        start_timeout: float = 60.0,
        stop_grace: float = 3.0,
        isolation: Isolation | None = None,
        scrubber: Scrubber | None = None,
        max_instances: int | None = None,
        idle: float = DEFAULT_IDLE,
        target: int = 100,
        budget: WorkerBudget | None = None,
        on_scale: Callable[[str], None] | None = None,
    ) -> None:
        maximum = max(instances, 1) if max_instances is None else max_instances
        if instances < 0 or maximum < max(instances, 1) or concurrency < 0 or target < 1:
            raise ValueError("expected 0 <= instances <= max_instances, concurrency >= 0")
        self.name = name
        self.python = Path(python).absolute()  # not resolve(): bin/python is a symlink
        self.app_dir = Path(app_dir).resolve()
        self.command = command
        # Requests one instance is meant for: its hard limit, else Knative's soft target.
        self.scaling = Scaling(
            minimum=instances,
            maximum=maximum,
            per_worker=concurrency or target,
            idle=idle,
            budget=budget,
            report=on_scale or self._system,
        )
        self.environment = dict(environment or {})
        self.log_sink = log_sink
        self.concurrency = concurrency  # requests in flight per instance; 0: no limit
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self.isolation = isolation
        # Its secrets are variables: their values must leave in no answer or log line.
        self.scrubber = scrubber if scrubber is not None else Scrubber(())
        self._slots: list[_Instance | None] = [None] * maximum
        self._active: set[int] = set()  # slots that hold, or are getting, an instance
        self._scaler: asyncio.Task[None] | None = None
        self._ending: set[asyncio.Task[None]] = set()  # instances scaled down, ending
        self._live: set[_Instance] = set()  # every instance not yet ended, ready or not
        self._keeper: SlotKeeper[_Instance] = SlotKeeper(
            spawn=self._spawn, install=self._install, discard=self._end, say=self._system
        )
        self._changed = asyncio.Event()  # replaced after each set: a broadcast
        self._waiting = 0
        self._counts = dict.fromkeys(("invocations", "errors", "timeouts", "crashes"), 0)
        # The events of the calls in flight: a web app's output names no call, so a
        # line is filed under an event only while that event's call runs alone.
        self._open: list[EventScope | None] = []
        # Keep-alive connections to the instances; never a proxy from the environment.
        self._client = httpx.AsyncClient(
            timeout=None, trust_env=False, limits=httpx.Limits(max_connections=None)
        )

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Start every instance and wait until each listens on its port."""
        first = max(self.scaling.minimum, 1)  # one even at minScale 0: the app must start
        for slot in range(first):
            self.scaling.budget.take(required=True)
            self._active.add(slot)
        results = await asyncio.gather(
            *(self._spawn(slot) for slot in range(first)), return_exceptions=True
        )
        for slot, result in enumerate(results):
            if isinstance(result, _Instance):
                self._install(slot, result)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await self.stop()
            raise failures[0]
        if not self.scaling.fixed:
            self._scaler = asyncio.create_task(self._scale_down_when_idle())

    async def stop(self) -> None:
        """End every instance (SIGTERM, SIGKILL after ``stop_grace``); waiting calls fail."""
        self._keeper.stopping = True
        self._notify()
        await self._keeper.stop()
        if self._scaler is not None:
            self._scaler.cancel()
            await asyncio.gather(self._scaler, return_exceptions=True)
        await asyncio.gather(*self._ending, return_exceptions=True)
        self._slots = [None] * len(self._slots)
        for _ in self._active:
            self.scaling.budget.give()
        self._active.clear()
        await asyncio.gather(*(self._end(i) for i in list(self._live)))
        await self._client.aclose()

    @property
    def stats(self) -> dict[str, Any]:
        live = [i for i in self._slots if i is not None and not i.dead]
        return {
            "function": self.name,
            "workers": len(self._active),  # running or starting; the scaling target
            "alive": len(live),
            "pids": [i.process.pid for i in live],
            "ports": [i.port for i in live],
            "restarts": self._keeper.restarts,
            "in_flight": sum(i.in_flight for i in live),
            "queued": self._waiting,
            **self.scaling.stats(),
            **self._counts,
        }

    @property
    def size(self) -> int:
        """Instances running or starting."""
        return len(self._active)

    # --- invoking --------------------------------------------------------------------

    async def invoke(self, inv: Invocation, timeout: float) -> Outcome:
        """Run one call; what comes back is scrubbed of the function's secret values."""
        scope = current_scope()
        self._open.append(scope)
        try:
            return (await self._invoke(inv, timeout)).scrubbed(self.scrubber)
        finally:
            self._open.remove(scope)

    async def _invoke(self, inv: Invocation, timeout: float) -> Outcome:
        """One HTTP request to an instance; the app's faults come back as an `Outcome`.

        ``timeout`` bounds the request, not the wait for a live instance.
        """
        if self._stopping:
            raise RuntimeError(f"function {self.name!r} is stopped")
        self._counts["invocations"] += 1
        headers = {k: v for k, v in inv.headers.items() if k.lower() not in _HOP_HEADERS}
        while True:
            instance = await self._instance()
            if instance is None:
                return _failed("crash", f"function {self.name!r} stopped", None, 0.0)
            instance.in_flight += 1
            instance.idle_since = None
            started, clock = time.time(), time.monotonic()
            try:
                response = await self._client.request(
                    inv.method,
                    instance.url + (inv.path or "/"),
                    params=dict(inv.query),
                    headers=headers,
                    content=inv.body,
                    timeout=max(timeout, 0.001),
                )
                break
            except httpx.ConnectError:
                # Nothing was sent: the app is gone or deaf (its exit may not have been
                # noticed yet). End it for its watcher to restart; try another.
                self._condemn(instance)
            except httpx.TimeoutException:
                return self._timed_out(timeout, started, time.monotonic() - clock)
            except httpx.HTTPError as exc:
                # The connection broke mid-request: the instance died (its watcher restarts it).
                return self._broken(instance, exc, started, time.monotonic() - clock)
            finally:
                instance.in_flight -= 1
                if not instance.in_flight:
                    instance.idle_since = asyncio.get_running_loop().time()
                self._notify()
        return self._outcome(response, started, time.monotonic() - clock)

    def _condemn(self, instance: _Instance) -> None:
        if not instance.unreachable:
            instance.unreachable = True
            self._system(f"instance {instance.process.pid} refused a connection; ending it")
            instance.process.send_signal(signal.SIGTERM)

    def _timed_out(self, timeout: float, started: float, duration: float) -> Outcome:
        # The app runs on (a web server cannot be interrupted mid-request); the
        # dispatcher retries or dead-letters as for any timeout.
        self._counts["timeouts"] += 1
        error = f"function {self.name!r} timed out after {timeout:g}s"
        return _failed("timeout", error, started, duration)

    def _broken(
        self, instance: _Instance, exc: httpx.HTTPError, started: float, duration: float
    ) -> Outcome:
        tail = "\n".join(instance.process.tail) or None
        error = f"function {self.name!r} instance {instance.process.pid}: {type(exc).__name__}"
        if str(exc):
            error = f"{error}: {exc}"
        return _failed("crash", error, started, duration, tail)

    def _outcome(self, response: httpx.Response, started: float, duration: float) -> Outcome:
        status = response.status_code
        headers = {k: v for k, v in response.headers.items() if k.lower() not in _RESPONSE_DROP}
        if 200 <= status < 300:
            self._keeper.succeeded()
            return Outcome(status, response.content, headers, None, None, "ok", started, duration)
        self._counts["errors"] += 1
        text = response.content[:200].decode("utf-8", "replace")
        error = f"HTTP {status}" + (f": {text}" if text else "")
        return Outcome(status, response.content, headers, error, None, "error", started, duration)

    async def _instance(self) -> _Instance | None:
        """The least-busy live instance with room; waits while there is none."""
        self._waiting += 1
        try:
            if len(self._active) < self.scaling.maximum:
                self._scale_up()
            while not self._stopping:
                candidates = [
                    i
                    for i in self._slots
                    if i is not None
                    and not i.dead
                    and not i.unreachable
                    and (not self.concurrency or i.in_flight < self.concurrency)
                ]
                if candidates:
                    return min(candidates, key=lambda i: i.in_flight)
                await self._changed.wait()
            return None
        finally:
            self._waiting -= 1

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # --- instances -------------------------------------------------------------------

    async def _spawn(self, slot: int) -> _Instance:
        """A listening instance for ``slot``, or FunctionLoadError saying why not."""
        port = free_port()
        process = await launch_web_process(
            python=self.python,
            app_dir=self.app_dir,
            command=self.command,
            env=web_env(self.name, slot, port, self.environment, self.python),
            emit=self._emit,
            grace=self.stop_grace,
            isolation=self.isolation,
        )
        instance = _Instance(slot, process, port)
        self._live.add(instance)
        try:
            await self._until_listening(instance)
            wide = listening_beyond_loopback(port)
            if wide:
                raise FunctionLoadError(
                    f"{self.app_dir}/Procfile: the web command of {self.name!r} listens on"
                    f" {', '.join(wide)} port {port}; functions may listen on 127.0.0.1 only"
                    " (veba rewrites --host=0.0.0.0; does the app choose its own host?)"
                )
        except BaseException:
            await self._end(instance)
            raise
        self._system(f"instance {process.pid} listening on {LOOPBACK}:{port}")
        return instance

    async def _until_listening(self, instance: _Instance) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        delay = 0.02
        while True:
            if instance.process.proc.returncode is not None:
                await instance.process.close()
                code = describe_exit(instance.process.proc.returncode)
                tail = "\n".join(instance.process.tail)
                raise FunctionLoadError(
                    f"{self.app_dir}/Procfile: the web command of {self.name!r} exited"
                    f" ({code}) before listening on $PORT:\n{tail}".rstrip()
                )
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection(LOOPBACK, instance.port)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                return
            if loop.time() > deadline:
                raise FunctionLoadError(
                    f"{self.app_dir}/Procfile: the web command of {self.name!r} did not listen"
                    f" on {LOOPBACK}:$PORT within {self.start_timeout:g}s; it must serve on"
                    " the port in $PORT"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    @property
    def _stopping(self) -> bool:
        return self._keeper.stopping

    def _install(self, slot: int, instance: _Instance) -> None:
        if slot not in self._active:  # no longer wanted (the pool is stopping)
            self._background(self._end(instance))
            return
        self._slots[slot] = instance
        instance.idle_since = asyncio.get_running_loop().time()
        instance.watcher = asyncio.create_task(self._watch(instance))
        self._notify()

    # --- scaling ---------------------------------------------------------------------

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    def _demand(self) -> int:
        """Requests waiting for an instance or in flight."""
        live = (i for i in self._slots if i is not None and not i.dead)
        return self._waiting + sum(i.in_flight for i in live)

    def _scale_up(self) -> None:
        if self._stopping:
            return
        old = len(self._active)
        while len(self._active) < self.scaling.wanted(self._demand()):
            slot = next(
                i
                for i in range(len(self._slots))
                if i not in self._active and not self._keeper.filling(i)
            )
            if not self.scaling.budget.take():
                break  # the appliance's cap: requests wait for the instances there are
            self._active.add(slot)
            self._keeper.fill(slot)
        if len(self._active) > old:
            why = f"{self._demand()} request(s) waiting or in flight"
            self.scaling.decided(old, len(self._active), why)

    async def _scale_down_when_idle(self) -> None:
        """End instances idle for the hysteresis, down to minScale (zero too)."""
        loop = asyncio.get_running_loop()
        while not self._stopping:
            await asyncio.sleep(self.scaling.tick())
            now = loop.time()
            old = len(self._active)
            floor = self.scaling.wanted(self._demand())
            for instance in sorted(
                (i for i in self._slots if i is not None and not i.dead),
                key=lambda i: -i.slot,
            ):
                if len(self._active) <= floor:
                    break
                since = instance.idle_since
                if instance.in_flight or since is None or now - since < self.scaling.idle:
                    continue
                instance.dead = True  # before any await: no request goes to it now
                self._slots[instance.slot] = None
                self._active.discard(instance.slot)
                self.scaling.budget.give()
                self._background(self._end(instance))
            if len(self._active) < old:
                self.scaling.decided(old, len(self._active), f"idle for {self.scaling.idle:g}s")

    async def _watch(self, instance: _Instance) -> None:
        code = await instance.process.proc.wait()
        if instance.dead:  # ended on purpose
            return
        instance.dead = True
        if self._slots[instance.slot] is instance:
            self._slots[instance.slot] = None
        self._live.discard(instance)
        await instance.process.close()
        self._counts["crashes"] += 1
        self._keeper.crashed(
            instance.slot, f"instance {instance.process.pid} exited ({describe_exit(code)})"
        )

    async def _end(self, instance: _Instance) -> None:
        instance.dead = True
        self._live.discard(instance)
        await instance.process.stop(self.stop_grace)
        if instance.watcher is not None and instance.watcher is not asyncio.current_task():
            instance.watcher.cancel()

    def _system(self, line: str) -> None:
        self._emit("system", line)

    def _emit(self, stream: str, line: str) -> None:
        alone = self._open[0] if len(self._open) == 1 else None
        with event_scope(alone):
            try:
                self.log_sink(self.name, stream, self.scrubber.text(line))
            except Exception:  # a broken sink must not stall the app's pipes
                logging.getLogger(__name__).exception("log sink failed")


def _failed(
    kind: str, error: str, started: float | None, duration: float, tail: str | None = None
) -> Outcome:
    return Outcome(0, b"", {}, error, tail, kind, started, duration)
