"""`Store` on a JetStream KV bucket, `<prefix>_store`, shared by every node.

One bucket for all namespaces, each entry under the key `<namespace>.<key>`
(a namespace has no dot, and store keys are KV keys already): the bucket's
stream sequence is the entry's revision, so revisions grow across the whole
store and a key made again never reuses one, as `veba.store` requires; one
bucket per namespace would restart them when a namespace is dropped and made
again. The bucket keeps one revision per key (history 1).

NATS 2.9 has no per-key TTL: the entry's value is an envelope holding the
value with its `created`, `updated` and `expires_at`, and an entry past its
expiry is absent to every reader. Every write is a compare-and-set on the
key's last revision as read (its tombstone's, or 0 if it has none), so a stale
entry is replaced exactly once however many nodes race, and a write that lost
reads again and decides again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from nats.aio.client import Client
from nats.errors import MaxPayloadError
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from veba.jetstream._buckets import (
    Lazy,
    at_revision,
    bucket_name,
    jetstream_of,
    key_value,
    kv_stream,
    kv_subject,
    lost_race,
    written_keys,
)
from veba.store import (
    Entry,
    RevisionMismatch,
    ValueTooLarge,
    check_key,
    check_namespace,
    check_ttl,
    encode_value,
)

__all__ = ["JetStreamStore"]


class JetStreamStore:
    """The functions' `Store` in the KV bucket `<prefix>_store`."""

    def __init__(
        self,
        nats: Client | JetStreamContext,
        prefix: str = "veba",
        *,
        replicas: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._js = jetstream_of(nats)
        self.bucket = bucket_name(prefix, "store")
        self._clock = clock
        self._kv = Lazy(lambda: key_value(self._js, self.bucket, replicas=replicas))
        # One write of a key at a time from this node: nats-server 2.9 on a
        # cluster can let two compare-and-sets racing on one key both win
        # (docs/design.md, "Known limits"), so a node never races itself.
        self._writers = KeyLocks()

    async def get(self, namespace: str, key: str) -> Entry | None:
        check_namespace(namespace)
        check_key(key)
        kv = await self._kv.get()
        _, entry = await _current(kv, namespace, key, self._clock())
        return entry

    async def put(
        self,
        namespace: str,
        key: str,
        value: Any,
        *,
        ttl: float | None = None,
        expect_revision: int | None = None,
    ) -> Entry:
        check_namespace(namespace)
        check_key(key)
        ttl = check_ttl(ttl)
        data = encode_value(value)
        kv = await self._kv.get()
        async with self._writers.held(f"{namespace}.{key}"):
            return await self._put(kv, namespace, key, data, ttl, expect_revision)

    async def _put(
        self,
        kv: KeyValue,
        namespace: str,
        key: str,
        data: bytes,
        ttl: float | None,
        expect_revision: int | None,
    ) -> Entry:
        while True:
            now = self._clock()
            last, current = await _current(kv, namespace, key, now)
            if expect_revision is not None and expect_revision != (
                current.revision if current else 0
            ):
                raise RevisionMismatch(namespace, key, expect_revision, current)
            created = current.created if current else now
            expires_at = None if ttl is None else now + ttl
            envelope = orjson.dumps(
                {
                    "value": orjson.Fragment(data),
                    "created": created,
                    "updated": now,
                    "expires_at": expires_at,
                }
            )
            try:
                revision = await kv.update(f"{namespace}.{key}", envelope, last=last)
            except KeyWrongLastSequenceError:
                continue  # written meanwhile: read it again and decide again
            except MaxPayloadError:
                raise ValueTooLarge(
                    f"value is {len(data)} bytes of JSON; with its key and times it is over"
                    " the NATS server's max_payload"
                ) from None
            return Entry(namespace, key, orjson.loads(data), revision, created, now, expires_at)

    async def delete(self, namespace: str, key: str, *, expect_revision: int | None = None) -> bool:
        check_namespace(namespace)
        check_key(key)
        kv = await self._kv.get()
        async with self._writers.held(f"{namespace}.{key}"):
            return await self._delete(kv, namespace, key, expect_revision)

    async def _delete(
        self, kv: KeyValue, namespace: str, key: str, expect_revision: int | None
    ) -> bool:
        while True:
            last, current = await _current(kv, namespace, key, self._clock())
            if expect_revision is not None and expect_revision != (
                current.revision if current else 0
            ):
                raise RevisionMismatch(namespace, key, expect_revision, current)
            if current is None:
                return False
            try:
                await kv.delete(f"{namespace}.{key}", last=last)
            except APIError as exc:
                if lost_race(exc):
                    continue
                raise
            return True

    async def namespaces(self) -> list[str]:
        found = []
        for namespace in sorted({key.partition(".")[0] for key in await self._written()}):
            if await self._live_entries(namespace):
                found.append(namespace)
        return found

    async def _written(self, keys: str = ">") -> list[str]:
        await self._kv.get()  # the bucket, made on first use
        return await written_keys(self._js, self.bucket, keys)  # not a watch: see there

    async def _live_entries(self, namespace: str) -> list[Entry]:
        """Every live entry of a namespace: each key written, read on its own."""
        kv, now, found = await self._kv.get(), self._clock(), []
        for written in await self._written(f"{namespace}.>"):
            _, entry = await _current(kv, namespace, written[len(namespace) + 1 :], now)
            if entry is not None:
                found.append(entry)
        return found

    async def list(self, namespace: str, *, prefix: str = "", limit: int = 1000) -> list[Entry]:
        check_namespace(namespace)
        entries = await self._live_entries(namespace)
        chosen = sorted((e for e in entries if e.key.startswith(prefix)), key=lambda e: e.key)
        return chosen[: max(0, limit)]

    async def drop(self, namespace: str) -> int:
        check_namespace(namespace)
        count = len(await self._live_entries(namespace))
        # One purge of the namespace's subjects: entries, tombstones and all.
        await self._js.purge_stream(
            kv_stream(self.bucket), subject=kv_subject(self.bucket, f"{namespace}.>")
        )
        return count


def _entry(namespace: str, key: str, revision: int, raw: bytes | None) -> Entry | None:
    if not raw:
        return None
    doc = orjson.loads(raw)
    return Entry(
        namespace,
        key,
        doc["value"],
        revision,
        doc["created"],
        doc["updated"],
        doc["expires_at"],
    )


def _live(entry: Entry, now: float) -> bool:
    return entry.expires_at is None or entry.expires_at > now


async def _current(kv: KeyValue, namespace: str, key: str, now: float) -> tuple[int, Entry | None]:
    """The key's last revision (see `at_revision`) and its live entry (None if
    deleted, purged or expired)."""
    last, got = await at_revision(kv, f"{namespace}.{key}")
    entry = None if got is None else _entry(namespace, key, last, got.value)
    return last, entry if entry is not None and _live(entry, now) else None


class KeyLocks:
    """A lock per key, there only while someone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def held(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
