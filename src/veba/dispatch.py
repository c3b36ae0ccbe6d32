"""Delivery of one subscription's events: leases, timeouts, retries, DLQ, ordering.

A `Dispatcher` leases deliveries from the log in batches, up to the function's
`maxInflight`, hands each to its target and settles the attempt back into the
log. Unordered retries go back to the log with a due time and free their slot;
with an `orderingKey`, deliveries of one key run one at a time in log order and
a failing one retries in place (keeping its lease) so nothing overtakes it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import heapq
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import httpx

from veba.delivery import DeliveryPolicy
from veba.eventlog.base import Attempt, Delivery, EventLog, LogFull
from veba.events import Event
from veba.functions._scaling import CallLimit
from veba.leadership import Leadership, lead
from veba.shapes import Shape, to_shape
from veba.targets.base import Result, StartingTarget, Target
from veba.tracing import EventScope, event_scope, set_scope, trace_for, with_trace

__all__ = ["DeadLetterSink", "Dispatcher", "ordering_key"]

log = logging.getLogger("veba.dispatch")

# (function, outcome: "delivered" | "retried" | "dead", result of the attempt, its delivery)
Observer = Callable[[str, str, Result, Delivery], None]

_LEASE_MARGIN = 30.0
_IDLE_POLL = 1.0
# Acks the log refused are tried again (0.25 s, 0.5 s, … up to 4 s apart) while
# the leases stand: a log that is briefly unable to write (a JetStream stream
# electing its leader) costs a wait, not a redelivery of every ack in flight.
_ACK_RETRY_FIRST = 0.25
_ACK_RETRY_MAX = 4.0


def ordering_key(event: Event, path: str) -> str | None:
    """Value at a dotted path (`data.Vm.Vm.Value`, or an attribute like `subject`)."""
    head, _, rest = path.partition(".")
    if head != "data":
        return event.attributes.get(path)
    node: Any = event.data
    for part in rest.split(".") if rest else []:
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return None if node is None else str(node)


@dataclass
class _Counts:
    delivered: int = 0
    retried: int = 0
    dead: int = 0
    in_flight: int = 0


@dataclass
class _KeyChain:
    queue: deque[Delivery] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None


class DeadLetterSink:
    """Forwards dead-lettered events to a `deadLetterSink` URL, as Knative does:
    binary mode with the `knativeerrordest`, `knativeerrorcode` and
    `knativeerrordata` extensions."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def forward(self, url: str, event: Event, dest: str, result: Result) -> None:
        attrs = dict(event.attributes)
        attrs["knativeerrordest"] = dest
        attrs["knativeerrorcode"] = str(result.status)
        detail = (result.error or "").encode()[:1024] or result.body[:1024]
        if detail:
            attrs["knativeerrordata"] = base64.b64encode(detail).decode()
        headers, body = Event(attrs, event.data).to_binary()
        for attempt in range(3):
            try:
                response = await self._client.post(url, headers=headers, content=body)
                if response.status_code < 300:
                    return
                log.warning("dead-letter sink %s answered %s", url, response.status_code)
            except httpx.HTTPError as exc:
                log.warning("dead-letter sink %s unreachable: %s", url, exc)
            await asyncio.sleep(0.5 * 2**attempt)


class Dispatcher:
    """Delivers one subscription's events to one target under one policy."""

    def __init__(
        self,
        name: str,
        *,
        log: EventLog,
        target: Target,
        policy: DeliveryPolicy,
        dead_letter_sink: DeadLetterSink | None = None,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.time,
        shape: Shape | None = None,
        limit: CallLimit | None = None,
        leadership: Leadership | None = None,
    ) -> None:
        self.name = name
        self.policy = policy
        # The shape the target gets events in (and a dead-letter sink sees them in);
        # None: as logged.
        self.shape = shape
        self._log = log
        self._target = target
        # Deliveries begun without a task of their own where the target allows
        # (`_start_quick`), each settled by its future's callback.
        self._starting = target if isinstance(target, StartingTarget) else None
        self._started: set[asyncio.Future[Any]] = set()
        self._dls = dead_letter_sink
        self._observer = observer
        self._clock = clock
        self._rng = random.Random()
        self._ttl = policy.timeout + _LEASE_MARGIN
        self._ordered = policy.ordering_key is not None
        # With other nodes on the same log, an ordered subscription leases on one
        # node at a time (the holder of its lease): a key's deliveries in order
        # across nodes as on one. None: this node alone.
        self._leadership = leadership if self._ordered else None
        # Ordered subscriptions lease ahead so other keys can run while one waits.
        self._capacity = policy.max_inflight * (4 if self._ordered else 1)
        # Calls in flight, shared with the function's other callers (sync calls):
        # deliveries lease only what it has room for, so the rest wait in the log.
        self._limit = limit if limit is not None else CallLimit(policy.max_inflight)
        self._limit.on_free(self._room_freed)
        self._in_hand: dict[int, Delivery] = {}
        self._chains: dict[str, _KeyChain] = {}
        self._tasks: set[asyncio.Future[None]] = set()
        self._wakeup = asyncio.Event()
        # Due times of unordered retries given back to the log (a min-heap).
        self._dues: list[float] = []
        self._main: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self.counts = _Counts()
        self.last_error: str | None = None
        # Paused by the operator: nothing new is leased (what is under way
        # finishes); deliveries wait in the log.
        self.paused = False
        # Acks are written in batches: whatever finished while the last write
        # was under way goes in the next one.
        self._acks: list[tuple[int, Attempt]] = []
        self._ack_task: asyncio.Task[None] | None = None
        # New events handed over at append (`reserve`, `hand_over`): room promised
        # to appends under way, and whether the log may hold ready deliveries
        # older than a new one (then none is taken at append: none overtakes them).
        self._reserved = 0
        self._drained = False
        self._stopped = False
        # The event loop, from `start`: asking asyncio for it (`create_task`)
        # costs a getpid() system call, once a delivery otherwise.
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        run = self._run() if self._leadership is None else self._run_leading(self._leadership)
        self._main = asyncio.create_task(run, name=f"dispatch:{self.name}")
        self._renewer = asyncio.create_task(self._renew(), name=f"renew:{self.name}")

    def wake(self) -> None:
        """The log has new deliveries for this subscription: lease them."""
        self._drained = False
        self._wakeup.set()

    def _room_freed(self) -> None:
        self._wakeup.set()  # lease again; the log has nothing new (not `wake`)

    @property
    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:  # handed deliveries before start (a test's dispatcher)
            self._loop = asyncio.get_running_loop()
        return self._loop

    @property
    def lease_ttl(self) -> float:
        return self._ttl

    def reserve(self, wanted: int) -> int:
        """Room for up to `wanted` new deliveries that an append leases for this
        dispatcher in its own transaction (`EventLog.append(lease=...)`); each
        reservation ends in `hand_over`. None while paused, for an ordered
        subscription, or while older deliveries may be ready in the log."""
        if self.paused or self._ordered or self._stopped or not self._drained:
            return 0
        if self._dues and self._dues[0] <= self._clock():
            return 0  # retries are due: they go first, by lease
        room = min(self._room(), wanted)
        if room < wanted:
            self._drained = False  # the rest wait in the log
        if room <= 0:
            return 0
        self._reserved += room
        return room

    def hand_over(self, deliveries: Sequence[Delivery], reserved: int) -> None:
        """The deliveries an append leased on `reserve(...)`'s promise (maybe
        fewer: duplicates, or the append failed)."""
        self._reserved -= reserved
        if self._stopped:
            if deliveries:  # offered again at once, this attempt not counted
                self._spawn(self._log.release([d.id for d in deliveries]))
            return
        for delivery in deliveries:
            self._accept(delivery)
        if len(deliveries) < reserved:
            self._wakeup.set()  # room given back

    def _room(self) -> int:
        room = self._capacity - len(self._in_hand) - self._reserved
        if not self._ordered:
            waiting = len(self._in_hand) - self.counts.in_flight  # ours, not yet running
            room = min(room, self._limit.limit - self._limit.in_use - waiting - self._reserved)
        return room

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self._wakeup.set()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop leasing, let attempts under way finish for `grace` seconds, then
        give back whatever is still in hand without counting the attempt."""
        # The flag as well as the cancel: on Python 3.11 `asyncio.wait_for` (the
        # idle wait in `_sleep`) can swallow a cancel that lands as its wait ends,
        # and the leasing loop would then go on, `stop` awaiting it for ever.
        self._stopped = True
        self._wakeup.set()
        for task in (self._main, self._renewer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        loop = asyncio.get_running_loop()
        until = loop.time() + grace
        # Deliveries under way: tasks, and futures of started ones (whose
        # failures, settling, start tasks of their own meanwhile).
        while under_way := self._tasks | self._started:
            left = until - loop.time()
            if left > 0:
                await asyncio.wait(under_way, timeout=left)
                continue
            for item in under_way:
                item.cancel()  # a started delivery's future: the call is forgotten
            await asyncio.gather(*under_way, return_exceptions=True)
        if self._ack_task is not None:
            await asyncio.gather(self._ack_task, return_exceptions=True)
        if self._in_hand:
            with contextlib.suppress(Exception):
                await self._log.release(list(self._in_hand))
            self._in_hand.clear()

    @property
    def in_hand(self) -> int:
        return len(self._in_hand)

    # -- leasing --------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while not self._stopped:
            self._wakeup.clear()
            if self.paused:
                await self._wakeup.wait()  # resume() wakes it
                continue
            room = self._room()
            if room > 0:
                try:
                    batch = await self._log.lease(
                        self.name, room, self._ttl, include_delayed=self._ordered
                    )
                    failures = 0
                except Exception as exc:
                    # Expected (the log away, full, closing) or not (a bug, a server
                    # answer nobody foresaw): either way this loop must go on, or
                    # the function would get nothing more on this node, silently.
                    failures += 1
                    self.last_error = f"lease failed: {exc}"
                    expected = isinstance(exc, (LogFull, OSError, RuntimeError))
                    log.error("%s: %s", self.name, self.last_error, exc_info=not expected)
                    await asyncio.sleep(min(0.1 * 2**failures, 5.0))
                    continue
                for delivery in batch:
                    self._accept(delivery)
                self._drained = len(batch) < room
                if batch and len(batch) == room:
                    continue
            await self._sleep()

    async def _run_leading(self, leadership: Leadership) -> None:
        """Lease only while this node holds the subscription's lease. What is in
        hand when it is lost finishes here (still leased, no other node takes
        it); the next holder leases what follows."""
        await lead(leadership, f"ordered:{self.name}", self._run)

    async def _sleep(self) -> None:
        timeout = _IDLE_POLL
        if self._dues:
            now = self._clock()
            if self._dues[0] <= now:
                # Due now: lease again at once, forgetting only the dues that have come.
                while self._dues and self._dues[0] <= now:
                    heapq.heappop(self._dues)
                timeout = 0.0
            else:
                timeout = min(timeout, self._dues[0] - now)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self._ttl / 3)
            if self._in_hand:
                try:
                    await self._log.extend(list(self._in_hand), self._ttl)
                except (LogFull, OSError):
                    pass  # the next round tries again; meanwhile the leases run on
                except Exception:  # nor may a surprise end the renewals for good
                    log.exception("%s: renewing %d lease(s) failed", self.name, self.in_hand)

    def _accept(self, delivery: Delivery) -> None:
        self._in_hand[delivery.id] = delivery
        path = self.policy.ordering_key
        key = None if path is None else ordering_key(delivery.event, path)
        if key is None:
            if not self._start_quick(delivery):
                self._spawn(self._deliver(delivery))
            return
        chain = self._chains.get(key)
        if chain is None:
            chain = self._chains[key] = _KeyChain()
        chain.queue.append(delivery)
        if chain.task is None:
            chain.task = self._spawn(self._run_chain(key, chain))

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = self._event_loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _done(self, delivery: Delivery) -> None:
        self._in_hand.pop(delivery.id, None)
        self._wakeup.set()

    # -- delivering -----------------------------------------------------------

    def _start_quick(self, delivery: Delivery) -> bool:
        """A delivery's first attempt begun with no task: the target's future,
        settled by `_settled` when done. False (nothing begun) when the target
        cannot, the delivery is not due yet or the function's calls are all in
        use (then `_deliver` waits its turn)."""
        target = self._starting
        now = self._clock()
        if target is None or delivery.available_at > now or not self._limit.try_take():
            return False
        scope = self._attempt_scope(delivery, delivery.attempt, now)
        try:
            future = target.start(
                self._traced(delivery, scope),
                attempt=delivery.attempt,
                deadline=now + self.policy.timeout,
                scope=scope,
            )
        except Exception:  # the pool stopping, say: `_deliver` makes it an outcome
            future = None
        if future is None:
            self._limit.give()
            return False
        self.counts.in_flight += 1
        self._started.add(future)
        future.add_done_callback(functools.partial(self._settled, delivery, scope, now))
        return True

    def _settled(
        self, delivery: Delivery, scope: EventScope, started: float, future: asyncio.Future[Any]
    ) -> None:
        self._started.discard(future)
        self.counts.in_flight -= 1
        self._limit.give()
        if future.cancelled():
            return  # stopping: the delivery stays in hand, to be given back
        assert self._starting is not None
        result = self._starting.result_of(future)
        attempt = self._attempt_of(delivery.attempt, started, result)
        with event_scope(scope):
            self._debug(delivery.attempt, result)
            if result.ok:
                self._delivered(delivery, result, attempt)
            else:  # the log is written to: a task (under this scope) for that
                self._spawn(self._failed_recorded(delivery, result, attempt))

    def _debug(self, attempt_no: int, result: Result) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s: attempt %d %s %s%s", self.name, attempt_no, result.kind, result.status,
                f" ({(result.error or '').strip().splitlines()[-1][:200]})" if result.error else "",
            )  # fmt: skip

    def _delivered(self, delivery: Delivery, result: Result, attempt: Attempt) -> None:
        self._done(delivery)
        self.counts.delivered += 1
        self._observe("delivered", result, delivery)
        self._queue_ack(delivery.id, attempt)

    async def _failed(
        self, delivery: Delivery, result: Result, attempt: Attempt, *, in_place: bool = False
    ) -> float | None:
        """A failed attempt settled: dead (None), or to be tried again at the
        returned time, given back to the log or, `in_place`, still leased.
        LogFull or OSError if the outcome could not be recorded."""
        attempt_no = attempt.attempt
        self.last_error = result.error
        told = replace(delivery, attempt=attempt_no)
        if self.policy.gives_up(attempt_no, result.kind, result.status):
            self._done(delivery)
            self.counts.dead += 1
            await self._log.dead(delivery.id, attempt)
            # Told once it is in the DLQ, so what observers count there includes it.
            self._observe("dead", result, told)
            self._forward_dead(delivery, result)
            return None
        self.counts.retried += 1
        self._observe("retried", result, told)
        due = self._clock() + self.policy.backoff(attempt_no, self._rng)
        if in_place:
            await self._log.retry(delivery.id, attempt, due, lease_ttl=self._ttl)
            return due
        self._done(delivery)
        await self._log.retry(delivery.id, attempt, due)
        heapq.heappush(self._dues, due)
        if self._dues[0] == due:
            self._wakeup.set()
        return due

    async def _failed_recorded(self, delivery: Delivery, result: Result, attempt: Attempt) -> None:
        try:
            await self._failed(delivery, result, attempt)
        except (LogFull, OSError) as exc:
            self._unrecorded(delivery, exc)

    def _unrecorded(self, delivery: Delivery, exc: Exception) -> None:
        # The lease will lapse and the delivery come round again: at least once.
        self.last_error = f"could not record outcome: {exc}"
        log.error("%s: %s", self.name, self.last_error)
        self._done(delivery)

    async def _run_chain(self, key: str, chain: _KeyChain) -> None:
        try:
            while chain.queue:
                if not await self._deliver(chain.queue[0], in_place=True):
                    # The outcome could not be recorded: let this key's leases
                    # lapse together, so the log offers them again in order.
                    for delivery in chain.queue:
                        self._in_hand.pop(delivery.id, None)
                    chain.queue.clear()
                    break
                chain.queue.popleft()
        finally:
            chain.task = None
            if not chain.queue:
                self._chains.pop(key, None)

    async def _deliver(self, delivery: Delivery, *, in_place: bool = False) -> bool:
        """Attempt until settled; False if the outcome could not be recorded. Under
        the delivery's `EventScope`, so whatever is said meanwhile names the event."""
        scope = EventScope(delivery.event.id, function=self.name, delivery=delivery.id)
        with event_scope(scope):
            return await self._attempts(delivery, in_place=in_place)

    async def _attempts(self, delivery: Delivery, *, in_place: bool) -> bool:
        attempt_no = delivery.attempt
        due = delivery.available_at
        while True:
            wait = due - self._clock()
            if wait > 0:
                await asyncio.sleep(wait)
            result, attempt = await self._attempt(delivery, attempt_no)
            self._debug(attempt_no, result)
            if result.ok:
                self._delivered(delivery, result, attempt)
                return True
            try:
                again = await self._failed(delivery, result, attempt, in_place=in_place)
            except (LogFull, OSError) as exc:
                self._unrecorded(delivery, exc)
                return False
            if again is None or not in_place:
                return True
            due, attempt_no = again, attempt_no + 1

    def _queue_ack(self, delivery_id: int, attempt: Attempt) -> None:
        self._acks.append((delivery_id, attempt))
        if self._ack_task is None or self._ack_task.done():
            self._ack_task = asyncio.create_task(self._flush_acks())

    async def _flush_acks(self) -> None:
        delay, failing_since = _ACK_RETRY_FIRST, None
        while self._acks:
            batch, self._acks = self._acks, []
            try:
                await self._log.ack_many(batch)
                delay, failing_since = _ACK_RETRY_FIRST, None
                continue
            except (LogFull, OSError) as exc:
                self.last_error = f"could not record {len(batch)} ack(s): {exc}"
                now = time.monotonic()
                failing_since = now if failing_since is None else failing_since
                # Past the leases (or stopping) they are given up: each lease
                # lapses and its delivery comes round again, at least once.
                if self._stopped or now - failing_since + delay > self._ttl:
                    log.error("%s: %s; given up", self.name, self.last_error)
                    continue
                log.warning("%s: %s; trying again in %g s", self.name, self.last_error, delay)
            self._acks = batch + self._acks
            await asyncio.sleep(delay)
            delay = min(delay * 2, _ACK_RETRY_MAX)

    async def _attempt(self, delivery: Delivery, attempt_no: int) -> tuple[Result, Attempt]:
        await self._limit.take()
        self.counts.in_flight += 1
        started = self._clock()
        # The attempt's scope stays bound (in this delivery's task, inside
        # `_deliver`'s) until the next attempt: the observer told of its
        # outcome reads its span there.
        scope = self._attempt_scope(delivery, attempt_no, started)
        set_scope(scope)
        try:
            result = await self._target.deliver(
                self._traced(delivery, scope),
                attempt=attempt_no,
                deadline=started + self.policy.timeout,
            )
        except Exception as exc:  # a target must not raise; if one does, it is a crash
            result = Result("crash", 0, f"{type(exc).__name__}: {exc}")
        finally:
            self.counts.in_flight -= 1
            self._limit.give()
        return result, self._attempt_of(attempt_no, started, result)

    def _attempt_scope(self, delivery: Delivery, attempt_no: int, started: float) -> EventScope:
        """One attempt's scope, with a new span of the event's trace."""
        return EventScope(
            delivery.event.id,
            function=self.name,
            delivery=delivery.id,
            attempt=attempt_no,
            trace=trace_for(delivery.event),
            started=started,
        )

    def _traced(self, delivery: Delivery, scope: EventScope) -> Event:
        """The event as the target gets it: in the function's shape, with the
        attempt's traceparent."""
        assert scope.trace is not None
        return with_trace(self._shaped(delivery.event), scope.trace)

    def _attempt_of(self, attempt_no: int, started: float, result: Result) -> Attempt:
        return Attempt(
            attempt_no,
            result.started or started,
            self._clock(),
            result.kind,
            result.status,
            result.error,
        )

    def _shaped(self, event: Event) -> Event:
        return event if self.shape is None else to_shape(event, self.shape)

    def _observe(self, outcome: str, result: Result, delivery: Delivery) -> None:
        if self._observer is not None:
            self._observer(self.name, outcome, result, delivery)

    def _forward_dead(self, delivery: Delivery, result: Result) -> None:
        if self._dls is not None and self.policy.dead_letter_sink:
            self._spawn(
                self._dls.forward(
                    self.policy.dead_letter_sink,
                    self._shaped(delivery.event),
                    self._target.name,
                    result,
                )
            )
