"""Warm worker pools: each function's handler stays imported in a few processes.

A `FunctionPool` runs ``workers`` to ``max_workers`` processes of ``worker.py``
inside the function's venv (`veba.functions._scaling` decides how many from the
calls waiting and running), talks to each over a socketpair, and keeps up to
``pipeline`` requests in flight per worker. A worker runs ``overlap`` of them at
once (1 unless its handler is I/O-bound and says so) and the rest in order, so
its oldest ``overlap`` unanswered requests are the ones it is running: those are
the ones a timeout or a crash fails, while the requests queued behind them are
sent again to a live worker. A worker is retired only when it has no call.

The worker processes themselves (how they are started, framed, signalled, ended)
are `veba.functions._workerproc`; this module decides what they run and when.

Whatever a worker says back (errors, tracebacks, bodies, headers, load errors) is
scrubbed of the function's secret values (`veba.scrub`) as it becomes an
`Outcome` or a `FunctionLoadError`, before anyone stores, logs or returns it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import shutil
import signal
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from veba.functions._restarts import SlotKeeper
from veba.functions._scaling import DEFAULT_IDLE, Scaling, WorkerBudget
from veba.functions._workerproc import (
    WORKER_PATH,
    FunctionLoadError,
    Isolation,
    WorkerProcess,
    describe_exit,
    frame,
    read_frame,
    sdk_cache,
    split_call_tag,
    worker_env,
    write_secrets,
)
from veba.functions.build import ensure_sdk
from veba.functions.isolate import SECRETS_PATH
from veba.scrub import Scrubber
from veba.tracing import EventScope, PackedScope, current_scope, event_scope

__all__ = [
    "WORKER_PATH",
    "FunctionLoadError",
    "FunctionPool",
    "Invocation",
    "Isolation",
    "Outcome",
]


# (function, stream, line). A line about an event is handed over under that
# event's `EventScope` (`veba.tracing.current_scope()`), so a sink can file it.
LogSink = Callable[[str, str, str], None]
# Calls whose scope is kept for the lines their worker prints, a few behind.
_SCOPES_KEPT = 1024


@dataclass(frozen=True)
class Invocation:
    """One request to a function: a CloudEvent in binary or structured mode, usually."""

    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    method: str = "POST"
    path: str = "/"
    query: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """What became of one invocation; ``kind`` says who to blame."""

    status: int  # HTTP-like; 0 for timeout and crash
    body: bytes
    headers: Mapping[str, str]
    error: str | None
    traceback: str | None
    kind: str  # "ok" | "error" | "timeout" | "crash"
    started: float | None  # time.time() when the handler was called
    duration: float

    @property
    def ok(self) -> bool:
        return self.kind == "ok"

    def scrubbed(self, scrubber: Scrubber) -> Outcome:
        """This outcome with the function's secret values taken out of everything
        the function wrote: error, traceback, body and header values."""
        if not scrubber:
            return self
        body = scrubber.data(self.body)
        headers = {k: scrubber.text(v) for k, v in self.headers.items()}
        error = None if self.error is None else scrubber.text(self.error)
        traceback = None if self.traceback is None else scrubber.text(self.traceback)
        # What held no secret comes back as the same object: then so does this
        # outcome (every pool scrubs its store token, so this is most outcomes).
        if (
            body is self.body
            and error is self.error
            and traceback is self.traceback
            and all(headers[k] is v for k, v in self.headers.items())
        ):
            return self
        return replace(self, body=body, headers=headers, error=error, traceback=traceback)


def log_to_logging(function: str, stream: str, line: str) -> None:
    """The log sink of a pool given none: the appliance's own logging."""
    logging.getLogger(f"veba.functions.{function}").info("[%s] %s", stream, line)


@dataclass(eq=False)
class _Call:
    id: int
    frame: bytes
    timeout: float
    future: asyncio.Future[Outcome]
    since: float = 0.0  # loop time it started running on its worker; 0: not yet


@dataclass(eq=False)
class _Worker(WorkerProcess):
    """A worker process as the pool uses it: the calls it was sent, its timeout clock."""

    pending: deque[_Call] = field(default_factory=deque)  # sent, unanswered, in order
    idle_since: float | None = None  # loop time it last had no call; None: busy
    dead: bool = False
    # Frames sent in one turn of the event loop go out in one write: a send()
    # wakes the worker's process, and one wake-up per batch is much cheaper.
    outbox: list[bytes] = field(default_factory=list)
    # One timer a worker, not one a call: due when the first of its running
    # calls would time out, it looks again then (see `FunctionPool._arm`).
    watch: asyncio.TimerHandle | None = None


class FunctionPool:
    """Warm workers for one function, fed from one queue, least-loaded first."""

    def __init__(
        self,
        name: str,
        *,
        python: Path,
        handler_dir: Path,
        lang: str,
        workers: int = 1,
        environment: Mapping[str, str] | None = None,
        secrets: Mapping[str, bytes] | None = None,
        log_sink: LogSink = log_to_logging,
        pipeline: int = 8,
        start_timeout: float = 60.0,
        stop_grace: float = 3.0,
        sdk_dir: Path | None = None,
        isolation: Isolation | None = None,
        scrubber: Scrubber | None = None,
        max_workers: int | None = None,
        overlap: int = 1,
        idle: float = DEFAULT_IDLE,
        budget: WorkerBudget | None = None,
        on_scale: Callable[[str], None] | None = None,
    ) -> None:
        maximum = max(workers, 1) if max_workers is None else max_workers
        if workers < 0 or maximum < max(workers, 1) or pipeline < 1 or overlap < 1:
            raise ValueError("expected 0 <= workers <= max_workers, and pipeline, overlap >= 1")
        self.name = name
        self.python = Path(python).absolute()  # not resolve(): bin/python is a symlink
        self.handler_dir = Path(handler_dir).resolve()
        self.lang = lang
        # Calls one worker runs at once (threads or an event loop in the worker).
        self.overlap = overlap
        self.scaling = Scaling(
            minimum=workers,
            maximum=maximum,
            per_worker=overlap,
            idle=idle,
            budget=budget,
            report=self._scaled if on_scale is None else on_scale,
        )
        self.environment = dict(environment or {})
        self.secrets = dict(secrets or {})
        # What comes back from the workers is scrubbed of these values: by default
        # the secrets; the appliance adds the pool's store token.
        self.scrubber = scrubber if scrubber is not None else Scrubber(self.secrets.values())
        self.log_sink = log_sink
        self.pipeline = max(pipeline, overlap)
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self.secrets_dir: Path | None = None
        self.sdk_dir = sdk_dir  # holds veba/sdk; default: beside the venv (ensure_sdk)
        # Isolated workers get their secrets over their socket, into a private tmpfs;
        # without isolation they read a 0700 folder in /dev/shm.
        self.isolation = isolation
        self._slots: list[_Worker | None] = [None] * maximum
        self._active: set[int] = set()  # slots that hold, or are getting, a worker
        self._scaler: asyncio.Task[None] | None = None
        self._queue: deque[_Call] = deque()  # accepted, not yet sent to a worker
        self._ids = itertools.count(1)
        self._keeper: SlotKeeper[_Worker] = SlotKeeper(
            spawn=self._spawn, install=self._install, discard=self._terminate, say=self._system
        )
        self._counts = dict.fromkeys(("invocations", "errors", "timeouts", "crashes"), 0)
        self._tasks: set[asyncio.Task[None]] = set()
        self._processes: set[_Worker] = set()  # every worker not yet closed, live or dying
        # The event each recent call delivered (its id -> scope), for its output lines:
        # they may be read after the call's answer.
        self._scopes: dict[int, PackedScope] = {}
        # The event loop the pool runs on, from `start` (asking asyncio for it
        # costs a getpid() system call each time: a tenth of the appliance's
        # event-loop time in a fan-out, measured with py-spy).
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Start every worker and wait until each has imported the handler."""
        self._loop = asyncio.get_running_loop()
        if self.sdk_dir is None:
            self.sdk_dir = await asyncio.to_thread(ensure_sdk, sdk_cache(self.python))
        if self.isolation is None:
            self.secrets_dir = write_secrets(self.name, self.secrets)
        # At least one, even when it may scale to zero: a deploy proves the handler loads.
        first = max(self.scaling.minimum, 1)
        for slot in range(first):
            self.scaling.budget.take(required=True)
            self._active.add(slot)
        results = await asyncio.gather(
            *(self._spawn(slot) for slot in range(first)), return_exceptions=True
        )
        for slot, result in enumerate(results):
            if isinstance(result, _Worker):
                self._slots[slot] = result
                result.idle_since = asyncio.get_running_loop().time()
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await self.stop()
            raise failures[0]
        if not self.scaling.fixed:
            self._scaler = asyncio.create_task(self._scale_down_when_idle())

    async def stop(self) -> None:
        """Terminate workers (SIGKILL after ``stop_grace``); unanswered calls fail."""
        await self._keeper.stop()
        if self._scaler is not None:
            self._scaler.cancel()
            await asyncio.gather(self._scaler, return_exceptions=True)
        while self._queue:
            self._fail(self._queue.popleft(), "crash", "function pool stopped")
        self._slots = [None] * len(self._slots)
        for _ in self._active:
            self.scaling.budget.give()
        self._active.clear()
        await asyncio.gather(*(self._terminate(w) for w in list(self._processes)))
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.stop_grace + 2)
        if self.secrets_dir is not None:
            shutil.rmtree(self.secrets_dir, ignore_errors=True)
            self.secrets_dir = None

    async def _terminate(self, worker: _Worker) -> None:
        worker.dead = True
        self._cancel_timers(worker)
        worker.send_signal(signal.SIGTERM)
        await worker.wait_or_kill(self.stop_grace)
        await self._close(worker)
        while worker.pending:
            self._fail(worker.pending.popleft(), "crash", "function pool stopped")

    @property
    def stats(self) -> dict[str, Any]:
        live = [w for w in self._slots if w is not None and not w.dead]
        return {
            "function": self.name,
            "workers": len(self._active),  # running or starting; the scaling target
            "alive": len(live),
            "pids": [w.proc.pid for w in live],
            "restarts": self._keeper.restarts,
            "in_flight": sum(len(w.pending) for w in live),
            "running": sum(min(len(w.pending), self.overlap) for w in live),
            "queued": len(self._queue),
            "overlap": self.overlap,
            **self.scaling.stats(),
            **self._counts,
        }

    @property
    def size(self) -> int:
        """Workers running or starting."""
        return len(self._active)

    # --- invoking --------------------------------------------------------------------

    async def invoke(self, inv: Invocation, timeout: float) -> Outcome:
        """Run one invocation; handler faults come back as an `Outcome`, never raised.

        ``timeout`` bounds the handler's run on a worker, not the wait in the queue.
        """
        future = self.submit(inv, timeout, current_scope())
        try:
            return await future
        except asyncio.CancelledError:
            self.forget(future)
            raise

    def forget(self, future: asyncio.Future[Outcome]) -> None:
        """A submitted call nobody waits for any more: not sent yet, it is taken
        out of the queue; sent, its response will be dropped."""
        future.cancel()
        for call in self._queue:
            if call.future is future:
                self._queue.remove(call)
                return

    def submit(
        self, inv: Invocation, timeout: float, scope: EventScope | None
    ) -> asyncio.Future[Outcome]:
        """`invoke` without a coroutine: the call queued now, its outcome the
        future's (never an exception of the handler's); cancelling the future
        forgets the call. `scope` files what the worker prints meanwhile."""
        if self._stopping:
            raise RuntimeError(f"function pool {self.name!r} is stopped")
        call_id = next(self._ids)
        head = {
            "id": call_id,
            "method": inv.method,
            "path": inv.path,
            "query": dict(inv.query),
            "headers": dict(inv.headers),
            "timeout": timeout,  # the worker tells veba.sdk the call's deadline
        }
        if scope is not None:
            self._scopes[call_id] = scope.packed()
            # Ids count up: forget the one _SCOPES_KEPT calls back. (Not the dict's
            # first key: deleting from a dict's front leaves slots that every
            # later `next(iter(...))` walks past, a cost that grew with each call.)
            self._scopes.pop(call_id - _SCOPES_KEPT, None)
        future: asyncio.Future[Outcome] = self._event_loop.create_future()
        self._queue.append(_Call(call_id, frame(head, inv.body), timeout, future))
        self._counts["invocations"] += 1
        self._pump()
        if self._queue and len(self._active) < self.scaling.maximum:
            self._scale_up()
        return future

    def _pump(self) -> None:
        """Send queued calls to the least-loaded live workers that have room."""
        if not self._queue:
            return  # the common case after a response: nothing waits
        live = [w for w in self._slots if w is not None and not w.dead]
        if not live:
            return
        # Below its maximum a pool does not pipeline: what waits here is demand that
        # new workers take, not a queue behind one busy worker.
        room = self.pipeline if len(self._active) >= self.scaling.maximum else self.overlap
        while self._queue:
            worker = min(live, key=_load)
            if len(worker.pending) >= room:
                return
            call = self._queue.popleft()
            if call.future.done():  # cancelled while queued
                continue
            worker.pending.append(call)
            worker.idle_since = None
            if not worker.outbox:
                self._event_loop.call_soon(self._flush, worker)
            worker.outbox.append(call.frame)
            if len(worker.pending) <= self.overlap:
                self._arm(worker)

    def _flush(self, worker: _Worker) -> None:
        frames, worker.outbox = worker.outbox, []
        if frames and not worker.dead:
            worker.writer.write(b"".join(frames))

    def _running(self, worker: _Worker) -> list[_Call]:
        """The calls the worker runs now: its oldest ``overlap`` unanswered ones."""
        return list(itertools.islice(worker.pending, self.overlap))

    def _arm(self, worker: _Worker) -> None:
        """Start the timeout clock of each call the worker has started running,
        and have the worker's watch look when the first of them is due."""
        running = [] if worker.dead else self._running(worker)
        if not running:
            return
        loop = self._event_loop
        now = loop.time()
        for call in running:
            if not call.since:
                call.since = now
        due = min(call.since + call.timeout for call in running)
        watch = worker.watch
        if watch is None or due < watch.when():
            if watch is not None:
                watch.cancel()
            worker.watch = loop.call_at(due, self._look, worker)

    def _look(self, worker: _Worker) -> None:
        """The worker's watch: a running call past its timeout is expired, else
        the watch looks again when the next is due. Calls answered meanwhile
        cost no timer of their own."""
        worker.watch = None
        if worker.dead:
            return
        now = self._event_loop.time()
        for call in self._running(worker):
            if now >= call.since + call.timeout:
                self._expire(worker, call)
                return
        self._arm(worker)

    def _cancel_timers(self, worker: _Worker) -> None:
        if worker.watch is not None:
            worker.watch.cancel()
            worker.watch = None

    def _expire(self, worker: _Worker, call: _Call) -> None:
        running = [] if worker.dead else self._running(worker)
        if call not in running:
            return
        self._counts["timeouts"] += 1
        self._emit(
            "system",
            f"worker {worker.proc.pid} killed: call ran over its {call.timeout:g}s timeout",
            call.id,
        )
        worker.send_signal(signal.SIGKILL)
        self._retire(worker)
        self._background(self._reap(worker))
        now = self._event_loop.time()
        ran = now - call.since
        for other in running:
            worker.pending.remove(other)
            if other is not call:  # overlapping in the killed worker: retried as a crash
                self._fail(
                    other,
                    "crash",
                    f"function {self.name!r} worker killed: a call"
                    f" beside this one ran over its {call.timeout:g}s timeout",
                )
        self._resolve(
            call,
            Outcome(
                status=0,
                body=b"",
                headers={},
                error=f"function {self.name!r} timed out after {call.timeout:g}s",
                traceback=None,
                kind="timeout",
                started=time.time() - ran,
                duration=ran,
            ),
        )
        self._requeue(worker)
        self._keeper.replace(worker.slot, delay=0.0)

    # --- workers ---------------------------------------------------------------------

    async def _spawn(self, slot: int) -> _Worker:
        """A ready worker for ``slot``, or FunctionLoadError."""
        handler = self.handler_dir / "handler.py"
        isolation = self.isolation
        if isolation is None:
            env = worker_env(self.name, slot, self.environment, self.secrets_dir)
        else:
            env = worker_env(
                self.name, slot, self.environment, Path(SECRETS_PATH), isolation.hostname()
            )
        worker = await _Worker.launch(
            slot,
            python=self.python,
            handler_dir=self.handler_dir,
            lang=self.lang,
            sdk_dir=self.sdk_dir,
            env=env,
            emit=self._emit,
            isolation=isolation,
            secrets=self.secrets,
            overlap=self.overlap,
        )
        self._processes.add(worker)
        why = "exited"
        try:
            hello: tuple[dict[str, Any], bytes] | None
            hello = await asyncio.wait_for(read_frame(worker.reader), self.start_timeout)
        except TimeoutError:
            hello, why = None, f"was not ready within {self.start_timeout:g}s"
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            hello = None
        except BaseException:
            await self._discard(worker, kill=True)
            raise
        if hello is None or "ready" not in hello[0]:
            await self._discard(worker, kill=hello is None and why != "exited")
            if hello is not None:
                tb = hello[0].get("traceback") or hello[0].get("load_error")
                message = f"{handler}: cannot load function {self.name!r}:\n{tb}"
            else:
                code = describe_exit(worker.proc.returncode)
                tail = "\n".join(worker.stderr_tail)
                message = f"{handler}: worker of {self.name!r} {why} ({code}):\n{tail}"
            raise FunctionLoadError(self.scrubber.text(message.rstrip()))
        worker.tasks.append(asyncio.create_task(self._read_responses(worker)))
        self._system(f"worker {worker.proc.pid} ready")
        return worker

    async def _discard(self, worker: _Worker, kill: bool) -> None:
        """End a worker that never became ready, keeping its last words for the error."""
        worker.dead = True
        if kill:
            worker.send_signal(signal.SIGKILL)
        await worker.wait_or_kill(2.0)  # a load_error exits by itself
        await self._close(worker)

    async def _reap(self, worker: _Worker) -> None:
        await worker.proc.wait()
        await self._close(worker)

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close(self, worker: _Worker) -> None:
        self._processes.discard(worker)
        await worker.close()

    async def _read_responses(self, worker: _Worker) -> None:
        reader = worker.reader
        try:
            while True:
                head, body = await read_frame(reader)
                if worker.dead:
                    return
                running = itertools.islice(worker.pending, self.overlap)
                call = next((c for c in running if c.id == head.get("id")), None)
                if call is None:
                    raise ValueError(f"response out of order: {head.get('id')}")
                worker.pending.remove(call)
                self._keeper.succeeded()
                self._resolve(call, _outcome(head, body))
                if worker.pending:
                    self._arm(worker)
                else:
                    worker.idle_since = self._event_loop.time()
                self._pump()
        # EOF, or ECONNRESET when the worker died with requests unread: it is gone.
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            if not worker.dead:
                await self._crashed(worker, exc)

    async def _crashed(self, worker: _Worker, exc: BaseException) -> None:
        self._retire(worker)
        self._requeue(worker, keep_running=True)
        if isinstance(exc, ValueError):  # garbled or out-of-order frames: alive, untrusted
            worker.send_signal(signal.SIGKILL)
        await worker.wait_or_kill(2.0)  # it may have closed the channel yet live on: end it
        await self._close(worker)
        code = describe_exit(worker.proc.returncode)
        self._counts["crashes"] += 1
        tail = "\n".join(worker.stderr_tail)
        now = asyncio.get_running_loop().time()
        while worker.pending:  # the calls it was running
            call = worker.pending.popleft()
            ran = now - call.since if call.since else 0.0
            self._resolve(
                call,
                Outcome(
                    status=0,
                    body=b"",
                    headers={},
                    error=f"function {self.name!r} worker crashed ({code})",
                    traceback=tail or None,
                    kind="crash",
                    started=time.time() - ran,
                    duration=ran,
                ),
            )
        self._keeper.crashed(worker.slot, f"worker {worker.proc.pid} crashed ({code})")

    def _install(self, slot: int, worker: _Worker) -> None:
        if slot not in self._active:  # scaled down meanwhile (a pool stopping, say)
            self._background(self._terminate(worker))
            return
        self._slots[slot] = worker
        worker.idle_since = asyncio.get_running_loop().time()
        self._pump()

    # --- scaling ---------------------------------------------------------------------

    def _demand(self) -> int:
        """Calls waiting in the pool or sent to a worker."""
        live = (w for w in self._slots if w is not None and not w.dead)
        return len(self._queue) + sum(len(w.pending) for w in live)

    def _scale_up(self) -> None:
        """More workers, now, when the calls waiting and running ask for them."""
        if self._stopping:
            return
        old = len(self._active)
        wanted = self.scaling.wanted(self._demand())
        while len(self._active) < wanted:
            slot = next(
                i
                for i in range(len(self._slots))
                if i not in self._active and not self._keeper.filling(i)
            )
            if not self.scaling.budget.take():
                break  # the appliance's cap: the calls wait for the workers there are
            self._active.add(slot)
            self._keeper.fill(slot)
        if len(self._active) > old:
            waiting = self._demand()
            self.scaling.decided(old, len(self._active), f"{waiting} call(s) waiting or running")

    async def _scale_down_when_idle(self) -> None:
        """Retire workers idle for the hysteresis, down to the minimum (zero too)."""
        loop = asyncio.get_running_loop()
        while not self._stopping:
            await asyncio.sleep(self.scaling.tick())
            now = loop.time()
            idle = sorted(
                (
                    w
                    for w in self._slots
                    if w is not None
                    and not w.dead
                    and not w.pending
                    and w.idle_since is not None
                    and now - w.idle_since >= self.scaling.idle
                ),
                key=lambda w: -w.slot,
            )
            floor = self.scaling.wanted(self._demand())
            old = len(self._active)
            for worker in idle:
                if len(self._active) <= floor:
                    break
                self._retire(worker)  # before any await: no call is sent to it now
                self._active.discard(worker.slot)
                self.scaling.budget.give()
                self._background(self._terminate(worker))
            if len(self._active) < old:
                self.scaling.decided(old, len(self._active), f"idle for {self.scaling.idle:g}s")

    def _scaled(self, line: str) -> None:
        self._system(line)

    @property
    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:  # invoked before start (a test's pool, say)
            self._loop = asyncio.get_running_loop()
        return self._loop

    @property
    def _stopping(self) -> bool:
        return self._keeper.stopping

    def _retire(self, worker: _Worker) -> None:
        """Take a worker out of rotation at once (before any await)."""
        worker.dead = True
        self._cancel_timers(worker)
        if self._slots[worker.slot] is worker:
            self._slots[worker.slot] = None

    def _requeue(self, worker: _Worker, keep_running: bool = False) -> None:
        """Give the calls that never started back to the pool, at the front, in order."""
        kept = self._running(worker) if keep_running else []
        waiting = list(worker.pending)[len(kept) :]
        self._queue.extendleft(reversed(waiting))
        worker.pending = deque(kept)
        self._pump()

    # --- outcomes --------------------------------------------------------------------

    def _resolve(self, call: _Call, outcome: Outcome) -> None:
        """Every outcome passes here: the one place it is scrubbed."""
        if outcome.kind == "error":
            self._counts["errors"] += 1
        if not call.future.done():
            call.future.set_result(outcome.scrubbed(self.scrubber))

    def _fail(self, call: _Call, kind: str, error: str) -> None:
        self._resolve(call, Outcome(0, b"", {}, error, None, kind, None, 0.0))

    def _system(self, line: str) -> None:
        self._emit("system", line)

    def _emit(self, stream: str, line: str, call_id: int | None = None) -> None:
        tagged, text = split_call_tag(line)
        if tagged is not None:
            call_id = tagged
        # Always set: a pump task may have been started inside some delivery's scope.
        packed = None if call_id is None else self._scopes.get(call_id)
        with event_scope(None if packed is None else EventScope.unpacked(packed)):
            try:
                self.log_sink(self.name, stream, self.scrubber.text(text))
            except Exception:  # a broken sink must not stall the worker's pipe
                logging.getLogger(__name__).exception("log sink failed")


def _outcome(head: dict[str, Any], body: bytes) -> Outcome:
    status = int(head.get("status", 500))
    error = head.get("error")
    return Outcome(
        status=status,
        body=body,
        headers=head.get("headers") or {},
        error=error,
        traceback=head.get("traceback"),
        kind="ok" if status < 400 and error is None else "error",
        started=head.get("started"),
        duration=float(head.get("duration") or 0.0),
    )


def _load(worker: _Worker) -> int:
    return len(worker.pending)
