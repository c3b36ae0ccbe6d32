"""What the JetStream log reads for its inspection and retention on a large log:
``.venv/bin/python -m bench.jetstream_reads [EVENTS]``.

One node on the local NATS server (a NAME of its own, deleted afterwards):
EVENTS events (40,000), each with one delivery, all delivered, and one more
dead; then the DLQ listing (`veba dlq list`), the dead one's event's deliveries
(`veba events show`), a retention pass deleting the oldest 1,000 events and one
deleting nothing. The log is written in seconds, so its margins (60 s for the
nodes' clocks, 5 minutes for late states, 10 s for the servers' clocks) are
scaled down as a week's log would make them small: otherwise every figure
would read the whole log because all of it lies within a margin.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from bench.nodes import delete_named
from veba.eventlog.base import Attempt
from veba.eventlog.jetstream import JetStreamLog
from veba.events import vsphere_event

SERVER = "nats://127.0.0.1:4222"
GROUP = 500


def _event(key: int) -> Any:
    data = {"Key": key, "CreatedTime": "2026-01-01T00:00:00Z", "Vm": {"Name": f"vm{key}"}}
    return vsphere_event(data, event_class="VmPoweredOnEvent", source="vc1", instance_uuid="vc1")


def _attempt(status: int) -> Attempt:
    now = time.time()
    return Attempt(1, now, now, "ok" if status < 300 else "error", status, None)


async def _timed(call: Callable[[], Awaitable[Any]], runs: int = 3) -> tuple[float, Any]:
    took, got = [], None
    for _ in range(runs):
        started = time.perf_counter()
        got = await call()
        took.append((time.perf_counter() - started) * 1000)
    return statistics.median(took), got


async def main(events: int) -> None:
    name = f"bench{uuid.uuid4().hex[:12]}"
    log = JetStreamLog([SERVER], name=name)
    log.nodes_apart, log.late_states, log.clocks_apart = 0.0, 0.5, 0.0
    await log.open()
    try:
        cutoff = time.time()
        for at in range(0, events, GROUP):
            await log.append([_event(k) for k in range(at, at + GROUP)], route=lambda e: ("f",))
            leased = await log.lease("f", GROUP, 30)
            await log.ack_many([(d.id, _attempt(200)) for d in leased])
            if at + GROUP == 1000:
                cutoff = time.time()
        last = _event(10**9)
        await log.append([last], route=lambda e: ("f",))
        (dead,) = await log.lease("f", 10, 30)
        await log.dead(dead.id, _attempt(400))

        dlq, _ = await _timed(lambda: log.deliveries(status="dead"))
        story, _ = await _timed(lambda: log.deliveries(event_id=last.id))
        first, _ = await _timed(lambda: log.prune(time.time() - 3600), runs=1)
        deleting, pruned = await _timed(lambda: log.prune(cutoff), runs=1)
        nothing, _ = await _timed(lambda: log.prune(cutoff), runs=1)
        print(f"{events:,} delivered events and one dead letter, one node, {SERVER}:")
        print(f"  DLQ listing: {dlq:,.0f} ms (median of 3)")
        print(f"  the dead letter's event's deliveries: {story:,.0f} ms (median of 3)")
        print(f"  a node's first retention pass (reads every state): {first:,.0f} ms")
        print(f"  a retention pass deleting the oldest {pruned:,}: {deleting:,.0f} ms")
        print(f"  a retention pass deleting nothing: {nothing:,.0f} ms")
    finally:
        await log.close()
        await delete_named(name)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 40_000))
