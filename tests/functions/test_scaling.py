"""Pools that grow with their calls, shrink when idle, and overlap I/O-bound calls."""

from __future__ import annotations

import asyncio
import time

from veba.functions import FunctionPool, Invocation
from veba.functions._scaling import CallLimit, WorkerBudget

from .conftest import Logs, PoolFactory, process_gone, wait_until

ASYNC_SLEEPER = """
    import asyncio, os

    async def handle(event, context):
        await asyncio.sleep(float(event.body or 0))
        return {"statusCode": 200, "body": str(os.getpid())}
"""

# Each overlapping call sees its own call in veba.sdk (here: its own attempt number).
OWN_CALL = """
    import asyncio, time
    from veba.sdk import attempt

    async def handle(event, context):
        mine = attempt()
        await asyncio.sleep(0.2)
        return {"statusCode": 200, "body": f"{mine} {attempt()}"}
"""

SLEEPER = """
    import os, time

    def handle(event, context):
        time.sleep(float(event.body or 0))
        return {"statusCode": 200, "body": str(os.getpid())}
"""


async def calls(pool: FunctionPool, n: int, body: bytes, timeout: float = 10) -> list[bytes]:
    outcomes = await asyncio.gather(
        *(pool.invoke(Invocation(body), timeout=timeout) for _ in range(n))
    )
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    return [o.body for o in outcomes]


async def test_an_async_handler_with_overlap_serves_8_calls_of_half_a_second_at_once(
    pool: PoolFactory,
) -> None:
    fn = await pool(ASYNC_SLEEPER, lang="python3-http", overlap=8)
    started = time.monotonic()
    bodies = await calls(fn, 8, b"0.5")
    took = time.monotonic() - started
    assert took < 1.5, f"8 overlapping calls of 0.5 s took {took:.2f} s"
    assert len(set(bodies)) == 1 and fn.stats["alive"] == 1  # one warm worker did them all


async def test_a_threaded_handler_with_overlap_serves_8_calls_at_once(pool: PoolFactory) -> None:
    fn = await pool(SLEEPER, lang="python3-http", overlap=8)
    started = time.monotonic()
    bodies = await calls(fn, 8, b"0.5")
    assert time.monotonic() - started < 1.5
    assert len(set(bodies)) == 1


async def test_overlapping_calls_each_see_their_own_call_in_the_sdk(pool: PoolFactory) -> None:
    fn = await pool(OWN_CALL, lang="python3-http", overlap=4)
    outcomes = await asyncio.gather(
        *(
            fn.invoke(Invocation(b"", headers={"X-Veba-Attempt": str(n)}), timeout=10)
            for n in range(1, 5)
        )
    )
    assert [o.body for o in outcomes] == [b"%d %d" % (n, n) for n in range(1, 5)]


async def test_without_overlap_a_worker_runs_one_call_at_a_time(pool: PoolFactory) -> None:
    fn = await pool(ASYNC_SLEEPER, lang="python3-http")
    started = time.monotonic()
    await calls(fn, 3, b"0.2")
    assert time.monotonic() - started >= 0.6


async def test_an_overlapping_call_that_times_out_ends_its_worker_and_the_others_are_retried(
    pool: PoolFactory, logs: Logs
) -> None:
    fn = await pool(SLEEPER, lang="python3-http", overlap=4)
    first = fn.stats["pids"][0]
    slow = asyncio.create_task(fn.invoke(Invocation(b"30"), timeout=0.5))
    beside = asyncio.create_task(fn.invoke(Invocation(b"30"), timeout=10))
    out, other = await asyncio.gather(slow, beside)
    assert out.kind == "timeout" and other.kind == "crash"  # retryable: a delivery tries again
    assert other.error is not None and "ran over its 0.5s timeout" in other.error
    await wait_until(lambda: fn.stats["alive"] == 1 and fn.stats["pids"][0] != first)
    assert (await fn.invoke(Invocation(b"0"), timeout=10)).ok


async def test_workers_scale_up_with_waiting_calls_and_back_down_when_idle(
    pool: PoolFactory, logs: Logs
) -> None:
    fn = await pool(SLEEPER, lang="python3-http", workers=1, max_workers=4, idle=0.3)
    assert fn.stats["workers"] == 1
    bodies = await calls(fn, 16, b"0.2")
    assert len(set(bodies)) > 1  # more than one worker took calls
    assert fn.stats["scale_ups"] >= 1 and fn.stats["max_workers"] == 4
    assert any("scaled from 1 to" in line for line in logs.of("system"))
    pids = set(map(int, bodies))
    await wait_until(lambda: fn.stats["workers"] == 1 and fn.stats["alive"] == 1)
    assert fn.stats["last_scale"]["to"] == 1 and "idle" in fn.stats["last_scale"]["why"]
    for pid in pids - set(fn.stats["pids"]):
        await wait_until(lambda pid=pid: process_gone(pid))


async def test_scale_to_zero_leaves_no_process_and_the_next_call_starts_one(
    pool: PoolFactory,
) -> None:
    fn = await pool(SLEEPER, lang="python3-http", workers=0, max_workers=2, idle=0.2)
    first = fn.stats["pids"][0]  # one at deploy: the handler loads
    await wait_until(lambda: fn.stats["alive"] == 0 and fn.stats["workers"] == 0)
    await wait_until(lambda: process_gone(first))
    (body,) = await calls(fn, 1, b"0")
    assert int(body) != first and fn.stats["alive"] == 1


async def test_the_appliance_cap_holds_scaling_back(pool: PoolFactory) -> None:
    budget = WorkerBudget(cap=2)
    fn = await pool(SLEEPER, lang="python3-http", workers=1, max_workers=8, budget=budget)
    bodies = await calls(fn, 12, b"0.1")
    assert len(set(bodies)) <= 2 and budget.used == 2 and budget.denied >= 1
    assert fn.stats["workers"] == 2


async def test_a_call_limit_hands_slots_over_in_order_and_refuses_at_once_without_a_wait() -> None:
    limit = CallLimit(1)
    assert await limit.take(0)
    assert not await limit.take(0)  # over the limit, no queue: refused at once
    waiter = asyncio.create_task(limit.take(5))
    await asyncio.sleep(0)
    assert not await limit.take(0.01)  # a waiter is first in line
    limit.give()
    assert await waiter and limit.in_use == 1
    limit.give()
    assert limit.in_use == 0


# Two halves of a line with a pause between, while other calls print theirs.
HALVES = """
    import sys, time

    def handle(event, context):
        me = event.body.decode()
        sys.stdout.write(f"{me} first half,")
        time.sleep(0.2)
        print(f" {me} second half")
        return {"statusCode": 200, "body": me}
"""


async def test_overlapping_calls_print_whole_lines_each_filed_under_its_own_event(
    pool: PoolFactory,
) -> None:
    from veba.tracing import EventScope, current_scope, event_scope

    seen: list[tuple[str, str | None]] = []

    def sink(function: str, stream: str, line: str) -> None:
        scope = current_scope()
        seen.append((line, scope and scope.event_id))

    fn = await pool(HALVES, lang="python3-http", overlap=4)
    fn.log_sink = sink

    async def call(n: int) -> None:
        with event_scope(EventScope(f"e{n}", function=fn.name, delivery=n, attempt=1)):
            assert (await fn.invoke(Invocation(b"c%d" % n), timeout=10)).ok

    await asyncio.gather(*(call(n) for n in range(4)))
    await wait_until(lambda: sum("half" in line for line, _ in seen) == 4)
    assert sorted(line for line, _ in seen if "half" in line) == [
        f"c{n} first half, c{n} second half" for n in range(4)
    ]
    assert all(event == f"e{line[1]}" for line, event in seen if "half" in line)
