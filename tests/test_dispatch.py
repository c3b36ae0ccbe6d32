"""The dispatcher against a real SQLite log.

The target in these tests is a small in-test class implementing the `Target`
protocol (`FakeTarget` below); delivery to real functions through the function
runtime is covered by the e2e tests. Every test runs twice: once with a target
the dispatcher must deliver to in a task per delivery (`deliver`), once with one
that also begins deliveries itself (`StartingTarget.start`, the quick path the
warm-worker pools take), which the first attempts then go through.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import itertools
import json
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.jetstream_buckets import prefixed_buckets
from veba.delivery import DeliveryPolicy
from veba.dispatch import DeadLetterSink, Dispatcher, ordering_key
from veba.eventlog import DeliveryInfo, SQLiteLog
from veba.events import Event, parse_http, vsphere_event
from veba.functions._scaling import CallLimit
from veba.targets.base import Result
from veba.tracing import EventScope

SUB = "fn"
OK = Result("ok", 200)
VM_KEY = "data.Vm.Vm.Value"

Behaviour = Callable[[Event, int], "Result | Awaitable[Result]"]


def make_event(key: int, vm: int = 0, source: str = "vc1") -> Event:
    data = {
        "Key": key,
        "CreatedTime": "2026-01-01T00:00:00Z",
        "Vm": {"Name": f"vm{vm}", "Vm": {"Type": "VirtualMachine", "Value": f"vm-{vm}"}},
    }
    return vsphere_event(data, event_class="VmPoweredOnEvent", source=source, instance_uuid=source)


def route(event: Event) -> list[str]:
    return [SUB]


def policy(**raw: Any) -> DeliveryPolicy:
    return DeliveryPolicy.parse(raw, where="test.delivery")


class FakeTarget:
    """An in-test `Target`: records every call and how many ran at once, and
    answers with whatever `behaviour(event, attempt)` returns (or raises)."""

    def __init__(self, behaviour: Behaviour | None = None, name: str = "fn-target") -> None:
        self.name = name
        self.behaviour: Behaviour = behaviour or (lambda event, attempt: OK)
        self.calls: list[tuple[Event, int]] = []
        self.active = 0
        self.peak = 0

    async def deliver(self, event: Event, *, attempt: int, deadline: float) -> Result:
        self.calls.append((event, attempt))
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            out = self.behaviour(event, attempt)
            if inspect.isawaitable(out):
                out = await out
            return out
        finally:
            self.active -= 1

    def attempts_of(self, key: int) -> list[int]:
        return [attempt for event, attempt in self.calls if event.data["Key"] == key]


class StartingFakeTarget(FakeTarget):
    """`FakeTarget` that the dispatcher can begin deliveries on (`StartingTarget`)."""

    def __init__(self, behaviour: Behaviour | None = None, name: str = "fn-target") -> None:
        super().__init__(behaviour, name)
        self.started = 0

    def start(
        self, event: Event, *, attempt: int, deadline: float, scope: EventScope
    ) -> asyncio.Future[Any] | None:
        # The attempt's scope comes with it (the pool files the worker's output by it).
        assert (scope.event_id, scope.function, scope.attempt) == (event.id, SUB, attempt)
        self.started += 1
        return asyncio.ensure_future(self.deliver(event, attempt=attempt, deadline=deadline))

    def result_of(self, done: asyncio.Future[Any]) -> Result:
        if done.cancelled():
            return Result("crash", 0, "cancelled")
        exc = done.exception()
        if exc is not None:  # as FunctionTarget says it
            return Result("crash", 0, f"{type(exc).__name__}: {exc}")
        result: Result = done.result()
        return result


@pytest.fixture(autouse=True, params=["task", "started"])
def delivery_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which way the dispatcher delivers in this run of the test (see the module)."""
    if request.param == "started":
        monkeypatch.setitem(globals(), "FakeTarget", StartingFakeTarget)
    return str(request.param)


class Clock:
    """Wall clock that a test can move forward (to let leases expire)."""

    def __init__(self) -> None:
        self.skew = 0.0

    def __call__(self) -> float:
        return time.time() + self.skew


async def until(
    condition: Callable[[], Any], *, timeout: float = 20.0, what: str = "condition"
) -> Any:
    """Poll `condition` (sync or async) until it is truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def log(tmp_path: Path, clock: Clock) -> AsyncIterator[SQLiteLog]:
    log = SQLiteLog(tmp_path / "events.db", clock=clock)
    await log.open()
    yield log
    await log.close()


@pytest.fixture
async def start(log: SQLiteLog) -> AsyncIterator[Callable[..., Dispatcher]]:
    """Start dispatchers on the test's log; all are stopped before the log closes."""
    started: list[Dispatcher] = []

    def _start(target: FakeTarget, pol: DeliveryPolicy, **kwargs: Any) -> Dispatcher:
        dispatcher = Dispatcher(SUB, log=log, target=target, policy=pol, **kwargs)
        dispatcher.start()
        started.append(dispatcher)
        return dispatcher

    yield _start
    for dispatcher in started:
        await dispatcher.stop(grace=0)


async def status_counts(log: SQLiteLog) -> dict[str, int]:
    return (await log.counts()).get(SUB, {})


async def all_delivered(log: SQLiteLog, n: int) -> bool:
    return await status_counts(log) == {"delivered": n}


async def only(log: SQLiteLog) -> DeliveryInfo:
    (info,) = await log.deliveries(subscription=SUB, with_history=True)
    return info


async def finished(log: SQLiteLog) -> DeliveryInfo | None:
    info = await only(log)
    return info if info.status in ("delivered", "dead") else None


# -- delivering -------------------------------------------------------------------


async def test_every_event_is_delivered_once_and_acked(
    log: SQLiteLog, start: Any, delivery_path: str
) -> None:
    events = [make_event(k, vm=k % 7) for k in range(200)]
    await log.append(events, route=route)
    target = FakeTarget()
    dispatcher = start(target, policy(maxInflight=8))

    await until(lambda: all_delivered(log, 200), what="200 deliveries")

    assert sorted(e.id for e, _ in target.calls) == sorted(e.id for e in events)
    assert {attempt for _, attempt in target.calls} == {1}
    assert dispatcher.counts.delivered == 200
    assert (dispatcher.counts.retried, dispatcher.counts.dead) == (0, 0)
    assert dispatcher.in_hand == 0
    if delivery_path == "started":  # every one begun by the target, no task each
        assert target.started == 200


async def test_acks_the_log_refuses_for_a_while_are_recorded_without_redelivery(
    log: SQLiteLog, start: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a JetStream log while its stream elects a leader: writes refused for a
    # moment. Dropping the acks would make every one of those deliveries again.
    refusals = 3
    ack_many = log.ack_many

    async def refusing(acks: Any) -> None:
        nonlocal refusals
        if refusals:
            refusals -= 1
            raise OSError("publish: status 503 (no stream for the subject?)")
        await ack_many(acks)

    monkeypatch.setattr(log, "ack_many", refusing)
    events = [make_event(k) for k in range(20)]
    await log.append(events, route=route)
    target = FakeTarget()
    dispatcher = start(target, policy(maxInflight=4))

    await until(lambda: all_delivered(log, 20), what="20 deliveries recorded")
    assert refusals == 0
    assert sorted(e.id for e, _ in target.calls) == sorted(e.id for e in events)
    assert dispatcher.last_error is not None and "could not record" in dispatcher.last_error


async def test_a_lease_that_fails_unexpectedly_is_tried_again_not_the_end_of_leasing(
    log: SQLiteLog, start: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    failures = 2
    lease = log.lease

    async def failing(*args: Any, **kwargs: Any) -> Any:
        nonlocal failures
        if failures:
            failures -= 1
            raise ValueError("an answer nobody foresaw")
        return await lease(*args, **kwargs)

    monkeypatch.setattr(log, "lease", failing)
    await log.append([make_event(k) for k in range(5)], route=route)
    target = FakeTarget()
    dispatcher = start(target, policy(maxInflight=4))
    await until(lambda: all_delivered(log, 5), what="5 deliveries after two failed leases")
    assert failures == 0
    assert dispatcher.last_error == "lease failed: an answer nobody foresaw"


async def test_stop_returns_even_when_its_cancel_meets_a_wake_up(log: SQLiteLog) -> None:
    # On Python 3.11, wait_for swallows a cancel that arrives as its wait ends:
    # the idle dispatcher woken and stopped in one breath kept leasing, and
    # stop() awaited it for ever (seen as a property test stalling under load).
    for _ in range(20):
        dispatcher = Dispatcher(SUB, log=log, target=FakeTarget(), policy=policy())
        dispatcher.start()
        await until(lambda d=dispatcher: d._drained, what="the first lease")
        dispatcher.wake()
        await asyncio.wait_for(dispatcher.stop(grace=0), 10)


async def append_handing_over(log: SQLiteLog, dispatcher: Dispatcher, events: list[Event]) -> int:
    """Append as the appliance publishes: what the dispatcher has room for is
    leased in the append's own write and handed over. Returns how many were."""
    granted = dispatcher.reserve(len(events))
    lease = {SUB: (granted, dispatcher.lease_ttl)} if granted else None
    result = await log.append(events, route=route, lease=lease)
    dispatcher.hand_over(result.leased, granted)
    if result.deliveries.get(SUB, 0) > len(result.leased):
        dispatcher.wake()
    return len(result.leased)


async def test_new_events_are_handed_to_a_dispatcher_with_room_at_append(
    log: SQLiteLog, start: Any
) -> None:
    target = FakeTarget()
    dispatcher = start(target, policy(maxInflight=8))
    await until(lambda: dispatcher.reserve(0) == 0 and dispatcher._drained, what="first lease")
    handed = 0
    for k in range(20):
        handed += await append_handing_over(log, dispatcher, [make_event(k)])
        await until(lambda k=k: all_delivered(log, k + 1), what=f"{k + 1} deliveries")
    assert handed == 20  # none needed a lease of the dispatcher's own
    assert [e.data["Key"] for e, _ in target.calls] == list(range(20))
    assert {attempt for _, attempt in target.calls} == {1}


async def test_events_handed_over_at_append_never_overtake_a_backlog(
    log: SQLiteLog, start: Any
) -> None:
    gate = asyncio.Event()

    async def held(event: Event, attempt: int) -> Result:
        await gate.wait()
        return OK

    target = FakeTarget(held)
    dispatcher = start(target, policy(maxInflight=1))
    await until(lambda: dispatcher._drained, what="first lease")
    # One in flight, four waiting in the log: nothing more may jump ahead of them.
    assert await append_handing_over(log, dispatcher, [make_event(k) for k in range(5)]) == 1
    assert await append_handing_over(log, dispatcher, [make_event(k) for k in range(5, 10)]) == 0
    gate.set()
    await until(lambda: all_delivered(log, 10), what="10 deliveries")
    assert [e.data["Key"] for e, _ in target.calls] == list(range(10))


@pytest.mark.parametrize("ordering", [None, VM_KEY], ids=["unordered", "ordered"])
async def test_max_inflight_bounds_concurrent_attempts(
    log: SQLiteLog, start: Any, ordering: str | None
) -> None:
    rng = random.Random(1)

    async def slow(event: Event, attempt: int) -> Result:
        await asyncio.sleep(rng.uniform(0.001, 0.005))
        return OK

    await log.append([make_event(k, vm=k % 20) for k in range(150)], route=route)
    target = FakeTarget(slow)
    start(target, policy(maxInflight=4, **({"orderingKey": ordering} if ordering else {})))

    await until(lambda: all_delivered(log, 150), what="150 deliveries")
    assert target.peak == 4


async def test_events_over_a_limit_held_by_sync_calls_wait_in_the_log_not_in_memory(
    log: SQLiteLog, start: Any
) -> None:
    limit = CallLimit(2)
    assert limit.try_take() and limit.try_take()  # two sync calls running
    await log.append([make_event(k) for k in range(5)], route=route)
    target = FakeTarget()
    dispatcher = start(target, policy(maxInflight=2), limit=limit)
    await asyncio.sleep(0.3)
    assert dispatcher.in_hand == 0 and target.calls == []
    assert await status_counts(log) == {"pending": 5}
    limit.give()  # one sync call ends: the dispatcher is told, and leases one
    await until(lambda: all_delivered(log, 5), timeout=10, what="5 deliveries in one slot")
    assert target.peak == 1 and limit.in_use == 1


async def test_new_events_are_picked_up_after_wake(log: SQLiteLog, start: Any) -> None:
    target = FakeTarget()
    dispatcher = start(target, policy())
    await log.append([make_event(1)], route=route)
    dispatcher.wake()
    await until(lambda: all_delivered(log, 1), timeout=5, what="the woken delivery")


# -- retries and the dead-letter queue -------------------------------------------


@pytest.mark.parametrize(
    ("backoff", "expected"),
    [("exponential", [0.1, 0.2, 0.4]), ("linear", [0.1, 0.2, 0.3])],
)
async def test_failed_attempts_are_retried_with_backoff_then_dead_lettered(
    log: SQLiteLog, start: Any, backoff: str, expected: list[float]
) -> None:
    await log.append([make_event(1)], route=route)
    target = FakeTarget(lambda event, attempt: Result("error", 500, f"boom #{attempt}"))
    outcomes: list[str] = []
    dispatcher = start(
        target,
        policy(retry=3, backoffPolicy=backoff, backoffDelay="PT0.1S", jitter=0),
        observer=lambda name, outcome, result, delivery: outcomes.append(outcome),
    )

    info = await until(lambda: finished(log), what="the delivery to be dead")

    assert info.status == "dead"
    assert info.attempts == 4
    assert (info.last_status, info.last_error) == (500, "boom #4")
    assert [(a.attempt, a.outcome, a.status) for a in info.history] == [
        (n, "error", 500) for n in (1, 2, 3, 4)
    ]
    assert [attempt for _, attempt in target.calls] == [1, 2, 3, 4]
    assert outcomes == ["retried", "retried", "retried", "dead"]
    assert (dispatcher.counts.retried, dispatcher.counts.dead) == (3, 1)
    assert dispatcher.last_error == "boom #4"

    starts = [a.started for a in info.history]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # Each wait is at least the policy's delay, and the waits grow.
    for gap, delay in zip(gaps, expected, strict=True):
        assert gap >= delay - 0.005, (gaps, expected)
    assert gaps[0] < gaps[1] < gaps[2], gaps


async def test_a_burst_of_failures_is_retried_on_time(log: SQLiteLog, start: Any) -> None:
    # Twenty deliveries fail together and come due at different moments within
    # 0.05-0.15 s. Each must be retried when due, not left for the dispatcher's
    # 1 s idle poll because an earlier due time was being waited for.
    await log.append([make_event(k) for k in range(20)], route=route)
    target = FakeTarget(_fail_once(Result("error", 503, "busy")))
    start(target, policy(backoffDelay="PT0.1S", jitter=0.5))

    await until(lambda: all_delivered(log, 20), what="20 retried deliveries")

    waits = []
    for info in await log.deliveries(subscription=SUB, with_history=True):
        failed, ok = info.history
        waits.append(ok.started - failed.finished)
    assert min(waits) >= 0.05 - 0.005, sorted(waits)
    assert max(waits) < 0.8, sorted(waits)  # a missed due time waits ~1 s


def _fail_once(result: Result | Exception) -> Behaviour:
    def behaviour(event: Event, attempt: int) -> Result:
        if attempt > 1:
            return OK
        if isinstance(result, Exception):
            raise result
        return result

    return behaviour


@pytest.mark.parametrize(
    "failure",
    [
        Result("error", 404, "not found"),
        Result("error", 408, "request timeout"),
        Result("error", 409, "conflict"),
        Result("error", 429, "too many requests"),
        Result("error", 500, "internal error"),
        Result("error", 502, "bad gateway"),
        Result("error", 503, "unavailable"),
        Result("timeout", 0, "no answer within 30s"),
        Result("crash", 0, "worker died"),
        Result("transport", 0, "connection refused"),
        RuntimeError("target raised"),
    ],
    ids=lambda f: f"{f.kind}-{f.status}" if isinstance(f, Result) else "raises",
)
async def test_retryable_failures_are_retried(
    log: SQLiteLog, start: Any, failure: Result | Exception
) -> None:
    await log.append([make_event(1)], route=route)
    target = FakeTarget(_fail_once(failure))
    start(target, policy(retry=2, backoffDelay="PT0.01S"))

    info = await until(lambda: finished(log), what="the delivery to finish")

    assert info.status == "delivered"
    assert info.attempts == 2
    assert [attempt for _, attempt in target.calls] == [1, 2]
    first, second = info.history
    if isinstance(failure, Exception):
        assert (first.outcome, first.status) == ("crash", 0)
        assert first.error == "RuntimeError: target raised"
    else:
        assert (first.outcome, first.status, first.error) == (
            failure.kind,
            failure.status,
            failure.error,
        )
    assert (second.attempt, second.outcome) == (2, "ok")


@pytest.mark.parametrize("status", [400, 401, 403, 413, 422])
async def test_client_errors_go_straight_to_the_dead_letter_queue(
    log: SQLiteLog, start: Any, status: int
) -> None:
    await log.append([make_event(1)], route=route)
    target = FakeTarget(lambda event, attempt: Result("error", status, "ValueError: bad VM"))
    dispatcher = start(target, policy(retry=5, backoffDelay="PT0.01S"))

    info = await until(lambda: finished(log), what="the delivery to finish")

    assert info.status == "dead"
    assert info.attempts == 1
    assert (info.last_status, info.last_error) == (status, "ValueError: bad VM")
    assert len(target.calls) == 1
    assert (dispatcher.counts.retried, dispatcher.counts.dead) == (0, 1)


async def test_redriven_dead_delivery_is_delivered_once_the_target_is_fixed(
    log: SQLiteLog, start: Any
) -> None:
    fixed = False

    def behaviour(event: Event, attempt: int) -> Result:
        return OK if fixed else Result("error", 503, "still broken")

    await log.append([make_event(1)], route=route)
    target = FakeTarget(behaviour)
    dispatcher = start(target, policy(retry=1, backoffDelay="PT0.01S"))
    dead = await until(lambda: finished(log), what="the delivery to be dead")
    assert (dead.status, dead.attempts) == ("dead", 2)

    fixed = True
    assert await log.redrive(subscription=SUB) == 1
    dispatcher.wake()
    await until(lambda: all_delivered(log, 1), timeout=5, what="the redriven delivery")

    info = await only(log)
    assert info.attempts == 1  # a redrive starts a fresh count
    assert [attempt for _, attempt in target.calls] == [1, 2, 1]
    assert [(a.outcome, a.status) for a in info.history] == [
        ("error", 503),
        ("error", 503),
        ("ok", 200),
    ]


# -- ordering ---------------------------------------------------------------------


def test_ordering_key_reads_a_dotted_path_or_an_attribute() -> None:
    event = make_event(5, vm=3)
    assert ordering_key(event, VM_KEY) == "vm-3"
    assert ordering_key(event, "data.Key") == "5"
    assert ordering_key(event, "subject") == "VmPoweredOnEvent"
    assert ordering_key(event, "data.Host.Host.Value") is None
    assert ordering_key(event, "data.Vm.Name.Value") is None  # a string is not walked into


async def test_events_of_one_key_arrive_in_order_while_keys_run_concurrently(
    log: SQLiteLog, start: Any
) -> None:
    rng = random.Random(7)
    seen: dict[str, list[int]] = {}

    async def jittery(event: Event, attempt: int) -> Result:
        seen.setdefault(event.data["Vm"]["Vm"]["Value"], []).append(event.data["Key"])
        await asyncio.sleep(rng.uniform(0, 0.005))
        return OK

    # 1,000 events over 10 VMs, interleaved as vCenter would report them.
    await log.append([make_event(k, vm=k % 10) for k in range(1000)], route=route)
    target = FakeTarget(jittery)
    start(target, policy(maxInflight=8, orderingKey=VM_KEY))

    await until(lambda: all_delivered(log, 1000), what="1,000 ordered deliveries")

    assert sorted(seen) == [f"vm-{vm}" for vm in range(10)]
    for vm in range(10):
        assert seen[f"vm-{vm}"] == list(range(vm, 1000, 10)), f"vm-{vm} out of order"
    assert target.peak > 1, "different keys should be delivered concurrently"
    assert target.peak <= 8


async def test_a_retrying_event_is_not_overtaken_by_later_events_of_its_key(
    log: SQLiteLog, start: Any
) -> None:
    order: list[tuple[int, int]] = []  # (key, attempt) in call order

    def behaviour(event: Event, attempt: int) -> Result:
        key = event.data["Key"]
        order.append((key, attempt))
        if key == 0 and attempt <= 2:
            return Result("error", 503, "busy")
        return OK

    # Keys 0, 3, 6, 9, 12 are vm-0; the rest belong to vm-1 and vm-2.
    await log.append([make_event(k, vm=k % 3) for k in range(15)], route=route)
    target = FakeTarget(behaviour)
    start(target, policy(maxInflight=4, orderingKey=VM_KEY, backoffDelay="PT0.05S", jitter=0))

    await until(lambda: all_delivered(log, 15), what="15 ordered deliveries")

    vm0 = [(key, attempt) for key, attempt in order if key % 3 == 0]
    assert vm0 == [(0, 1), (0, 2), (0, 3), (3, 1), (6, 1), (9, 1), (12, 1)]
    # The other VMs did not wait for vm-0's retries.
    others_before_recovery = [key for key, _ in order[: order.index((0, 3))] if key % 3 != 0]
    assert others_before_recovery, order
    (first,) = [i for i in await log.deliveries(subscription=SUB, with_history=True) if i.seq == 1]
    assert first.status == "delivered" and first.attempts == 3
    assert [(a.attempt, a.outcome) for a in first.history] == [
        (1, "error"),
        (2, "error"),
        (3, "ok"),
    ]


# -- dead-letter sink -------------------------------------------------------------


class _SinkHandler(BaseHTTPRequestHandler):
    received: list[tuple[str, dict[str, str], bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.server.received.append((self.path, headers, body))  # type: ignore[attr-defined]
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def sink() -> Iterator[ThreadingHTTPServer]:
    """A real HTTP dead-letter sink on 127.0.0.1 that records what it receives."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SinkHandler)
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


async def test_dead_event_is_forwarded_to_the_dead_letter_sink_in_binary_mode(
    log: SQLiteLog, start: Any, sink: ThreadingHTTPServer
) -> None:
    event = make_event(42, vm=4)
    await log.append([event], route=route)
    url = f"http://127.0.0.1:{sink.server_address[1]}/dead"
    target = FakeTarget(lambda e, attempt: Result("error", 422, "ValueError: no such VM"))
    async with httpx.AsyncClient() as client:
        start(
            target,
            policy(retry=3, backoffDelay="PT0.01S", deadLetterSink={"uri": url}),
            dead_letter_sink=DeadLetterSink(client),
        )
        await until(lambda: sink.received, what="the dead-letter sink to be called")  # type: ignore[attr-defined]

    ((path, headers, body),) = sink.received  # type: ignore[attr-defined]
    assert path == "/dead"
    assert headers["ce-id"] == event.id
    assert headers["ce-source"] == event.source
    assert headers["ce-type"] == "com.vmware.event.router/event"
    assert headers["ce-subject"] == "VmPoweredOnEvent"
    assert headers["content-type"] == "application/json"
    assert headers["ce-knativeerrordest"] == target.name
    assert headers["ce-knativeerrorcode"] == "422"
    assert base64.b64decode(headers["ce-knativeerrordata"]) == b"ValueError: no such VM"
    assert json.loads(body) == event.data

    # It is a valid binary-mode CloudEvent: the original plus the error extensions.
    (forwarded,) = parse_http(headers, body)
    extensions = {"knativeerrordest", "knativeerrorcode", "knativeerrordata"}
    assert {k: v for k, v in forwarded.attributes.items() if k not in extensions} == dict(
        event.attributes
    )
    assert forwarded.data == event.data
    assert (await only(log)).status == "dead"


# -- shutdown and crashes ---------------------------------------------------------


async def test_stop_gives_back_deliveries_in_hand_without_counting_the_attempt(
    log: SQLiteLog, start: Any
) -> None:
    never = asyncio.Event()

    async def hang(event: Event, attempt: int) -> Result:
        await never.wait()
        return OK

    await log.append([make_event(k) for k in range(5)], route=route)
    hanging = FakeTarget(hang)
    dispatcher = start(hanging, policy(maxInflight=2))
    await until(lambda: len(hanging.calls) == 2, what="two attempts under way")

    await dispatcher.stop(grace=0.05)

    assert dispatcher.in_hand == 0
    assert await status_counts(log) == {"pending": 5}
    assert {i.attempts for i in await log.deliveries(subscription=SUB)} == {0}

    working = FakeTarget()
    start(working, policy(maxInflight=2))
    await until(lambda: all_delivered(log, 5), what="delivery by a fresh dispatcher")
    assert {attempt for _, attempt in working.calls} == {1}


async def test_stop_lets_attempts_under_way_finish_within_the_grace(
    log: SQLiteLog, start: Any
) -> None:
    gate = asyncio.Event()

    async def gated(event: Event, attempt: int) -> Result:
        await gate.wait()
        return OK

    await log.append([make_event(k) for k in range(5)], route=route)
    target = FakeTarget(gated)
    dispatcher = start(target, policy(maxInflight=2))
    await until(lambda: len(target.calls) == 2, what="two attempts under way")

    stopping = asyncio.create_task(dispatcher.stop(grace=10))
    await until(
        lambda: dispatcher._main is not None and dispatcher._main.done(), what="leasing to stop"
    )
    gate.set()
    await asyncio.wait_for(stopping, 10)

    assert await status_counts(log) == {"delivered": 2, "pending": 3}
    assert len(target.calls) == 2


def _kill(dispatcher: Dispatcher) -> None:
    """What a crash does: every task just stops; nothing is released."""
    for task in (dispatcher._main, dispatcher._renewer, *dispatcher._tasks, *dispatcher._started):
        if task is not None:
            task.cancel()


async def test_a_lapsed_lease_is_redelivered_by_a_fresh_dispatcher(
    log: SQLiteLog, start: Any, clock: Clock
) -> None:
    never = asyncio.Event()

    async def hang(event: Event, attempt: int) -> Result:
        await never.wait()
        return OK

    event = make_event(1)
    await log.append([event], route=route)
    pol = policy(timeout="PT1S")
    crashed = FakeTarget(hang)
    first = start(crashed, pol)
    await until(lambda: crashed.calls, what="the first attempt")
    _kill(first)
    await until(lambda: first._main is not None and first._main.done(), what="the kill")

    assert (await only(log)).status == "leased"
    assert await log.lease(SUB, 10, 30) == []  # still held by the dead dispatcher's lease

    clock.skew += pol.timeout + 60  # well past the lease
    working = FakeTarget()
    start(working, pol)
    await until(lambda: all_delivered(log, 1), what="redelivery after the lease lapsed")

    assert [(e.id, attempt) for e, attempt in working.calls] == [(event.id, 2)]
    assert (await only(log)).attempts == 2


async def test_an_ordered_subscription_leases_on_one_node_at_a_time(
    log: SQLiteLog, start: Any
) -> None:
    # Two nodes' dispatchers of one ordered function on one log, each with its
    # own lease in the NATS at 127.0.0.1:4222 (a bucket of the test's own).
    from veba.leadership import KVLeadership

    async with prefixed_buckets() as (client, prefix):
        js = client.jetstream()
        bucket = f"{prefix}_leases"
        seen: dict[str, list[int]] = {}

        async def in_order(event: Event, attempt: int) -> Result:
            seen.setdefault(event.data["Vm"]["Vm"]["Value"], []).append(event.data["Key"])
            await asyncio.sleep(0.001)
            return OK

        pol = policy(maxInflight=8, orderingKey=VM_KEY)
        targets = [FakeTarget(in_order, name=f"node{i}") for i in range(2)]
        nodes = [
            start(
                target, pol, leadership=await KVLeadership.open(client, js, bucket, holder=f"n{i}")
            )
            for i, target in enumerate(targets)
        ]
        await log.append([make_event(k, vm=k % 4) for k in range(200)], route=route)
        for node in nodes:
            node.wake()
        await until(lambda: all_delivered(log, 200), what="200 ordered deliveries")
        leader = next(i for i, target in enumerate(targets) if target.calls)
        assert not targets[1 - leader].calls  # the other node leased nothing
        # The leader stops (its lease goes with it): the other takes what follows.
        await nodes[leader].stop(grace=0)
        await log.append([make_event(k, vm=k % 4) for k in range(200, 300)], route=route)
        nodes[1 - leader].wake()
        await until(lambda: all_delivered(log, 300), timeout=30, what="the rest, on the other")
        assert len(targets[1 - leader].calls) == 100
        for vm in range(4):
            assert seen[f"vm-{vm}"] == list(range(vm, 300, 4)), f"vm-{vm} out of order"
        await nodes[1 - leader].stop(grace=0)  # its lease released while NATS is there
