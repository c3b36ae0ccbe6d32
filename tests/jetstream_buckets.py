"""A connection to the test machine's NATS server (JetStream, 127.0.0.1:4222) and
a bucket prefix no other test uses; every bucket made under it is deleted after."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import nats
from nats.aio.client import Client

NATS_URL = "nats://127.0.0.1:4222"


@contextlib.asynccontextmanager
async def prefixed_buckets() -> AsyncIterator[tuple[Client, str]]:
    client = await nats.connect(NATS_URL, connect_timeout=10)
    prefix = f"t{uuid.uuid4().hex[:12]}"
    try:
        yield client, prefix
    finally:
        js = client.jetstream()
        for info in await js.streams_info():
            name = info.config.name or ""
            if name.startswith((f"KV_{prefix}_", f"OBJ_{prefix}_")):
                await js.delete_stream(name)
        await client.close()
