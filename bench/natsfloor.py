"""The floor of the nodes benchmark: a plain nats-py JetStream pull consumer.

    python -m bench.natsfloor SERVER STREAM SUBJECT OUT_DIR

Creates STREAM (file storage, SUBJECT) and a durable pull consumer on it, writes
OUT_DIR/ready, then fetches 100 at a time and acks each message after an
in-process no-op handler that records its start (bench.recorder, as veba's no-op
function does) under the event's id. Runs until SIGTERM. The bench process
publishes; this process only consumes, as a `veba serve` only delivers.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import nats
import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig, StorageType

from bench.recorder import StartRecorder

DURABLE = "floor"  # bench.nodes.FLOOR_CONSUMER
FETCH = 100


async def consume(server: str, stream: str, subject: str, out_dir: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    recorder = StartRecorder(str(out_dir), "floor")

    def handle(body: bytes) -> None:  # the no-op handler: the event as veba hands it over
        recorder.record(json.loads(body)["id"])

    nc = await nats.connect(servers=[server])
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[subject], storage=StorageType.FILE)
        config = ConsumerConfig(durable_name=DURABLE, ack_policy=AckPolicy.EXPLICIT)
        sub = await js.pull_subscribe(subject, durable=DURABLE, stream=stream, config=config)
        (out_dir / "ready").write_text("ready\n")
        while not stop.is_set():
            try:
                messages = await sub.fetch(FETCH, timeout=0.5)
            except nats.errors.TimeoutError:
                continue
            for msg in messages:
                handle(msg.data)
                await msg.ack()
    finally:
        recorder.flush()
        await nc.close()


if __name__ == "__main__":
    server, stream, subject, out = sys.argv[1:5]
    asyncio.run(consume(server, stream, subject, Path(out)))
