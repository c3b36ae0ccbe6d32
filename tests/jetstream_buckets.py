"""A connection to the test machine's NATS server (JetStream, 127.0.0.1:4222) and
a bucket prefix no other test uses; every bucket made under it is deleted after.

`delete_everything_named` deletes what a veba NAME (a prefix) made there: the
log's streams (`NAME_events`, ...), KV buckets (`KV_NAME_...`, `KV_NAME-...`)
and object stores (`OBJ_NAME_...`)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import nats
from nats.aio.client import Client

NATS_URL = "nats://127.0.0.1:4222"


@contextlib.asynccontextmanager
async def prefixed_buckets(servers: list[str] | None = None) -> AsyncIterator[tuple[Client, str]]:
    """On the machine's NATS server, or on `servers` (a test's own cluster)."""
    client = await nats.connect(servers or [NATS_URL], connect_timeout=10)
    prefix = f"t{uuid.uuid4().hex[:12]}"
    try:
        yield client, prefix
    finally:
        await _delete_named(client, prefix)
        await client.close()


async def delete_everything_named(prefix: str) -> None:
    client = await nats.connect(NATS_URL, connect_timeout=10)
    try:
        await _delete_named(client, prefix)
    finally:
        await client.close()


async def _delete_named(client: Client, prefix: str) -> None:
    js = client.jetstream()
    ours = (f"{prefix}_", f"KV_{prefix}_", f"KV_{prefix}-", f"OBJ_{prefix}_")
    for info in await js.streams_info():
        name = info.config.name or ""
        if name.startswith(ours):
            await js.delete_stream(name)  # its consumers go with it
