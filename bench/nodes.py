"""veba nodes on NATS JetStream against the floor of a plain nats-py consumer (issue 12).

    .venv/bin/python -m bench --only nodes

Each run measures, one after the other and each on a fresh NAME of its own: the
floor (bench.natsfloor: a nats-py pull consumer, fetch 100, ack each, no-op
handler in its process; the bench publishes to the stream and waits for each
publish's acknowledgement), one veba node on SQLite, then 1, 2 and 3 veba nodes
sharing one appliance on NATS. The same Driver measurements as the rest of the
bench: throughput (first send to last handler start) and latency at the offered
rate (send to handler start). Each NAME's streams and buckets are deleted after
its row, and only those.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from bench.common import REPO_ROOT, Event, env_with
from bench.driver import Driver, SendMode
from bench.procs import Managed
from bench.report import NodesResult
from bench.veba.driver import BATCH_MODE, LIGHT, VebaDriver

NATS_SERVER = "nats://127.0.0.1:4222"
NODE_COUNTS = (1, 2, 3)
READY_TIMEOUT = 30.0
FLOOR_CONSUMER = "floor"  # bench.natsfloor's durable consumer
# Latency sends outstanding at once, every row alike: one NATS-backed POST takes
# longer than 1/500 s, so one at a time could not offer the rate at all.
IN_FLIGHT = 8

T = TypeVar("T")

FLOOR_BATCH = SendMode(
    "batch", "floor, **batch** of 100 publishes in flight, nats-py", 100, 4,
    "100 `js.publish()` at once (gathered), each awaiting its acknowledgement, "
    "from each of 4 sender threads",
)  # fmt: skip
FLOOR_LIGHT = SendMode(
    "light", "floor, 1 publish at a time, nats-py", 1, 16,
    "one `js.publish()` at a time, awaiting its acknowledgement, from each of 16 sender "
    "threads",
)  # fmt: skip


def fresh_name() -> str:
    """A NAME no one else uses: the bench deletes what starts with it, and only that."""
    return f"bench{uuid.uuid4().hex[:12]}"


def _owned_by(stream: str, name: str) -> bool:
    for kind in ("KV_", "OBJ_", ""):
        if stream.startswith(kind) and stream[len(kind) :].startswith((f"{name}_", f"{name}-")):
            return True
    return False


async def delete_named(name: str) -> list[str]:
    """Delete the streams, key-value and object buckets of NAME; their names."""
    import nats

    nc = await nats.connect(servers=[NATS_SERVER])
    deleted = []
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            stream = info.config.name or ""
            if _owned_by(stream, name):
                await js.delete_stream(stream)
                deleted.append(stream)
    finally:
        await nc.close()
    return deleted


def node_rows() -> list[NodesResult]:
    out = [
        NodesResult("floor", label="floor: nats-py pull consumer", nodes=1),
        NodesResult("sqlite-1", label="veba, 1 node, SQLite", nodes=1),
    ]
    out += [
        NodesResult(f"nats-{n}", label=f"veba, {n} node{'s' * (n > 1)}, NATS", nodes=n)
        for n in NODE_COUNTS
    ]
    return out


class FloorDriver(Driver):
    """The floor: bench.natsfloor consumes; the bench publishes to its stream."""

    name = "floor"
    default_mode = FLOOR_BATCH

    def __init__(self, nats_name: str) -> None:
        super().__init__()
        self.stream = f"{nats_name}_floor"
        self.subject = f"{nats_name}.floor"
        self.consumer: Managed | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._js: Any = None
        self._nc: Any = None

    def send_modes(self) -> list[SendMode]:
        return [FLOOR_LIGHT, FLOOR_BATCH]

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    def _launch(self) -> None:
        import nats

        self.consumer = Managed(
            "floor consumer",
            [
                sys.executable, "-m", "bench.natsfloor",
                NATS_SERVER, self.stream, self.subject, str(self.out_dir),
            ],
            env=env_with(),
            log=self.work_dir / "consumer.log",
            cwd=REPO_ROOT,
        )  # fmt: skip
        deadline = time.monotonic() + READY_TIMEOUT
        while not (self.out_dir / "ready").exists():
            self.consumer.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"floor consumer not ready: {self.consumer.log_tail()}")
            time.sleep(0.05)
        self._thread.start()

        async def connect() -> None:
            self._nc = await nats.connect(servers=[NATS_SERVER])
            self._js = self._nc.jetstream()

        self._call(connect())

    def _shutdown(self) -> None:
        try:
            if self._thread.is_alive():
                if self._nc is not None:
                    with contextlib.suppress(Exception):
                        self._call(self._nc.close(), timeout=10)
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(10)
        finally:
            if self.consumer is not None:
                self.consumer.stop()

    def _alive(self) -> None:
        assert self.consumer is not None
        self.consumer.check_alive()

    async def _publish(self, events: Sequence[Event]) -> None:
        await asyncio.gather(
            *(
                self._js.publish(self.subject, json.dumps(e.obj, separators=(",", ":")).encode())
                for e in events
            )
        )

    def _sender(self, mode: SendMode) -> Callable[[Sequence[Event]], None]:
        if mode.per_request == 1:

            def one_at_a_time(events: Sequence[Event]) -> None:
                for event in events:
                    self._submit_one(event)

            return one_at_a_time
        return lambda events: self._call(self._publish(events))

    def _submit_one(self, event: Event) -> None:
        self._call(self._publish([event]))

    def _confirm_acked(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            info = self._call(self._js.consumer_info(self.stream, FLOOR_CONSUMER))
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"floor: {info.num_ack_pending} unacknowledged after {timeout} s"
                )
            time.sleep(0.05)


def make_driver(row: NodesResult, nats_name: str) -> Driver:
    if row.name == "floor":
        return FloorDriver(nats_name)
    if row.name.startswith("sqlite"):
        return VebaDriver()
    return VebaDriver(event_log=f"{NATS_SERVER}/{nats_name}", nodes=row.nodes)


def veba_modes() -> list[SendMode]:
    return [LIGHT, BATCH_MODE]


def measure_row(
    row: NodesResult, run: int, runs: int, rate: float, seconds: float, events: int,
    log: Callable[[str], None],
) -> None:  # fmt: skip
    """One run of one row on a fresh appliance (or stream) and NAME. Errors are recorded."""
    nats_name = fresh_name()
    driver: Driver | None = None
    failed = False
    began = time.monotonic()
    try:
        driver = make_driver(row, nats_name)
        modes = driver.send_modes() if isinstance(driver, FloorDriver) else veba_modes()
        row.modes = modes
        log(f"nodes {row.name} run {run}/{runs}: starting (NAME {nats_name})")
        load = os.getloadavg()[0]
        driver.start()
        lat = driver.latency(rate, seconds, in_flight=IN_FLIGHT)
        log(f"nodes {row.name} run {run}: p50 {lat.p50_ms:.2f} ms, p99 {lat.p99_ms:.2f} ms "
            f"(achieved {lat.achieved_rate:.1f}/s)")  # fmt: skip
        shift = (run - 1) % len(modes)
        throughputs = []
        for mode in modes[shift:] + modes[:shift]:
            tp = driver.throughput(events, mode)
            log(f"nodes {row.name} run {run}: {mode.key} {tp.events_per_s:,.0f} events/s")
            throughputs.append(tp)
        if isinstance(driver, VebaDriver):
            row.deliveries.append(driver.deliveries_by_node())
            log(f"nodes {row.name} run {run}: deliveries by node {row.deliveries[-1]}")
        row.load.append(load)
        row.latency.append(lat)
        row.throughput.extend(throughputs)
        row.notes.extend(driver.notes)
    except Exception as exc:
        failed = True
        row.error = f"{type(exc).__name__}: {exc}"
        log(f"nodes {row.name} run {run} FAILED:\n{traceback.format_exc()}")
    finally:
        if driver is not None:
            driver.stop(keep_files=failed)
            if failed:
                log(f"nodes {row.name}: logs kept in {driver.work_dir}")
        deleted = asyncio.run(delete_named(nats_name))
        if deleted:
            log(f"nodes {row.name} run {run}: deleted {len(deleted)} streams of {nats_name}")
        row.seconds.append(time.monotonic() - began)
