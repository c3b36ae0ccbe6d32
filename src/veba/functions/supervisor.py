"""Warm worker pools: each function's handler stays imported in a few processes.

A `FunctionPool` runs ``workers`` processes of ``worker.py`` inside the function's
venv, talks to each over a socketpair, and keeps up to ``pipeline`` requests in
flight per worker. Workers answer in order, so the oldest unanswered request of a
worker is the one it is running: that is the one a timeout or a crash fails,
while the requests queued behind it are sent again to a live worker.

The worker processes themselves (how they are started, framed, signalled, ended)
are `veba.functions._workerproc`; this module decides what they run and when.

Whatever a worker says back (errors, tracebacks, bodies, headers, load errors) is
scrubbed of the function's secret values (`veba.scrub`) as it becomes an
`Outcome` or a `FunctionLoadError`, before anyone stores, logs or returns it.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from veba.tracing import EventScope, current_scope, event_scope

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
        return replace(
            self,
            body=scrubber.data(self.body),
            headers={k: scrubber.text(v) for k, v in self.headers.items()},
            error=None if self.error is None else scrubber.text(self.error),
            traceback=None if self.traceback is None else scrubber.text(self.traceback),
        )


def log_to_logging(function: str, stream: str, line: str) -> None:
    """The log sink of a pool given none: the appliance's own logging."""
    logging.getLogger(f"veba.functions.{function}").info("[%s] %s", stream, line)


@dataclass(eq=False)
class _Call:
    id: int
    frame: bytes
    timeout: float
    future: asyncio.Future[Outcome]


@dataclass(eq=False)
class _Worker(WorkerProcess):
    """A worker process as the pool uses it: the calls it was sent, its timeout clock."""

    pending: deque[_Call] = field(default_factory=deque)  # sent, unanswered, in order
    head_since: float = 0.0  # monotonic time the oldest pending call became current
    timer: asyncio.TimerHandle | None = None
    dead: bool = False
    # Frames sent in one turn of the event loop go out in one write: a send()
    # wakes the worker's process, and one wake-up per batch is much cheaper.
    outbox: list[bytes] = field(default_factory=list)


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
    ) -> None:
        if workers < 1 or pipeline < 1:
            raise ValueError("workers and pipeline must be at least 1")
        self.name = name
        self.python = Path(python).absolute()  # not resolve(): bin/python is a symlink
        self.handler_dir = Path(handler_dir).resolve()
        self.lang = lang
        self.size = workers
        self.environment = dict(environment or {})
        self.secrets = dict(secrets or {})
        # What comes back from the workers is scrubbed of these values: by default
        # the secrets; the appliance adds the pool's store token.
        self.scrubber = scrubber if scrubber is not None else Scrubber(self.secrets.values())
        self.log_sink = log_sink
        self.pipeline = pipeline
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self.secrets_dir: Path | None = None
        self.sdk_dir = sdk_dir  # holds veba/sdk; default: beside the venv (ensure_sdk)
        # Isolated workers get their secrets over their socket, into a private tmpfs;
        # without isolation they read a 0700 folder in /dev/shm.
        self.isolation = isolation
        self._slots: list[_Worker | None] = [None] * workers
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
        self._scopes: dict[int, EventScope] = {}

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Start every worker and wait until each has imported the handler."""
        if self.sdk_dir is None:
            self.sdk_dir = await asyncio.to_thread(ensure_sdk, sdk_cache(self.python))
        if self.isolation is None:
            self.secrets_dir = write_secrets(self.name, self.secrets)
        results = await asyncio.gather(
            *(self._spawn(slot) for slot in range(self.size)), return_exceptions=True
        )
        for slot, result in enumerate(results):
            if isinstance(result, _Worker):
                self._slots[slot] = result
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await self.stop()
            raise failures[0]

    async def stop(self) -> None:
        """Terminate workers (SIGKILL after ``stop_grace``); unanswered calls fail."""
        await self._keeper.stop()
        while self._queue:
            self._fail(self._queue.popleft(), "crash", "function pool stopped")
        self._slots = [None] * self.size
        await asyncio.gather(*(self._terminate(w) for w in list(self._processes)))
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.stop_grace + 2)
        if self.secrets_dir is not None:
            shutil.rmtree(self.secrets_dir, ignore_errors=True)
            self.secrets_dir = None

    async def _terminate(self, worker: _Worker) -> None:
        worker.dead = True
        self._cancel_timer(worker)
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
            "workers": self.size,
            "alive": len(live),
            "pids": [w.proc.pid for w in live],
            "restarts": self._keeper.restarts,
            "in_flight": sum(len(w.pending) for w in live),
            "queued": len(self._queue),
            **self._counts,
        }

    # --- invoking --------------------------------------------------------------------

    async def invoke(self, inv: Invocation, timeout: float) -> Outcome:
        """Run one invocation; handler faults come back as an `Outcome`, never raised.

        ``timeout`` bounds the handler's run on a worker, not the wait in the queue.
        """
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
        scope = current_scope()
        if scope is not None:
            self._scopes[call_id] = scope
            if len(self._scopes) > _SCOPES_KEPT:
                del self._scopes[next(iter(self._scopes))]
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        call = _Call(call_id, frame(head, inv.body), timeout, future)
        self._queue.append(call)
        self._counts["invocations"] += 1
        self._pump()
        try:
            return await future
        except asyncio.CancelledError:
            # Not sent yet: forget it. Sent: its response will be dropped.
            with contextlib.suppress(ValueError):
                self._queue.remove(call)
            raise

    def _pump(self) -> None:
        """Send queued calls to the least-loaded live workers that have room."""
        if not self._queue:
            return  # the common case after a response: nothing waits
        live = [w for w in self._slots if w is not None and not w.dead]
        if not live:
            return
        while self._queue:
            worker = min(live, key=_load)
            if len(worker.pending) >= self.pipeline:
                return
            call = self._queue.popleft()
            if call.future.done():  # cancelled while queued
                continue
            worker.pending.append(call)
            if not worker.outbox:
                asyncio.get_running_loop().call_soon(self._flush, worker)
            worker.outbox.append(call.frame)
            if len(worker.pending) == 1:
                self._arm(worker)

    def _flush(self, worker: _Worker) -> None:
        frames, worker.outbox = worker.outbox, []
        if frames and not worker.dead:
            worker.writer.write(b"".join(frames))

    def _arm(self, worker: _Worker) -> None:
        """Start the timeout clock of the call the worker is now running."""
        self._cancel_timer(worker)
        loop = asyncio.get_running_loop()
        worker.head_since = loop.time()
        call = worker.pending[0]
        worker.timer = loop.call_at(worker.head_since + call.timeout, self._expire, worker, call)

    def _cancel_timer(self, worker: _Worker) -> None:
        if worker.timer is not None:
            worker.timer.cancel()
            worker.timer = None

    def _expire(self, worker: _Worker, call: _Call) -> None:
        if worker.dead or not worker.pending or worker.pending[0] is not call:
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
        ran = asyncio.get_running_loop().time() - worker.head_since
        worker.pending.popleft()
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
                if not worker.pending or head.get("id") != worker.pending[0].id:
                    raise ValueError(f"response out of order: {head.get('id')}")
                call = worker.pending.popleft()
                self._keeper.succeeded()
                self._resolve(call, _outcome(head, body))
                if worker.pending:
                    self._arm(worker)
                else:
                    self._cancel_timer(worker)
                self._pump()
        # EOF, or ECONNRESET when the worker died with requests unread: it is gone.
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            if not worker.dead:
                await self._crashed(worker, exc)

    async def _crashed(self, worker: _Worker, exc: BaseException) -> None:
        self._retire(worker)
        self._requeue(worker, keep_head=True)
        if isinstance(exc, ValueError):  # garbled or out-of-order frames: alive, untrusted
            worker.send_signal(signal.SIGKILL)
        await worker.wait_or_kill(2.0)  # it may have closed the channel yet live on: end it
        await self._close(worker)
        code = describe_exit(worker.proc.returncode)
        self._counts["crashes"] += 1
        tail = "\n".join(worker.stderr_tail)
        if worker.pending:
            call = worker.pending.popleft()
            ran = asyncio.get_running_loop().time() - worker.head_since
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
        self._slots[slot] = worker
        self._pump()

    @property
    def _stopping(self) -> bool:
        return self._keeper.stopping

    def _retire(self, worker: _Worker) -> None:
        """Take a worker out of rotation at once (before any await)."""
        worker.dead = True
        self._cancel_timer(worker)
        if self._slots[worker.slot] is worker:
            self._slots[worker.slot] = None

    def _requeue(self, worker: _Worker, keep_head: bool = False) -> None:
        """Give the calls that never started back to the pool, at the front, in order."""
        head = worker.pending.popleft() if keep_head and worker.pending else None
        self._queue.extendleft(reversed(worker.pending))
        worker.pending.clear()
        if head is not None:
            worker.pending.append(head)
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
        with event_scope(None if call_id is None else self._scopes.get(call_id)):
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
