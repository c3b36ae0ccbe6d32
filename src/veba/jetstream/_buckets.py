"""The buckets veba keeps in JetStream: their names, made once, found after.

Every bucket is named `<prefix>_<what>` (`veba_store`, `veba_secrets`, ...), so
several appliances' clusters — or tests — can share one server apart by prefix.
A bucket is looked up first and made only if missing: making it with a config
that differs from the one on the server would fail, and an operator may have
changed its replicas or limits by hand.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import nats.errors
from nats.aio.client import Client
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, BucketNotFoundError, KeyNotFoundError, ServiceUnavailableError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

__all__ = [
    "Lazy",
    "at_revision",
    "bucket_name",
    "jetstream_of",
    "key_value",
    "kv_stream",
    "kv_subject",
    "lost_race",
    "object_store",
    "patiently",
    "written_keys",
]

T = TypeVar("T")
log = logging.getLogger("veba.jetstream")
# How long making a stream or bucket waits for a cluster that cannot answer yet.
MAKE_WITHIN = 60.0
# JetStream's bucket alphabet; the suffixes veba adds are in it too.
_PREFIX = re.compile(r"^[a-zA-Z0-9_-]{1,48}$")


def jetstream_of(nats: Client | JetStreamContext) -> JetStreamContext:
    """The JetStream context of a connected client, or the context itself."""
    return nats.jetstream() if isinstance(nats, Client) else nats


def bucket_name(prefix: str, what: str) -> str:
    if not _PREFIX.match(prefix):
        raise ValueError(
            f"bucket prefix {prefix!r}: expected 1 to 48 of the characters a-z A-Z 0-9 _ -"
        )
    return f"{prefix}_{what}"


def kv_stream(bucket: str) -> str:
    """The stream a KV bucket is kept in (JetStream's naming)."""
    return f"KV_{bucket}"


def kv_subject(bucket: str, key: str) -> str:
    """The subject a KV key (or a wildcard of keys) is written on."""
    return f"$KV.{bucket}.{key}"


def _not_yet(exc: BaseException) -> bool:
    """NATS could not answer now: a request timed out, nobody responded, or
    JetStream said it is unavailable (a cluster without its meta leader yet)."""
    if isinstance(exc, APIError):
        return isinstance(exc, ServiceUnavailableError)
    return isinstance(exc, (nats.errors.TimeoutError, nats.errors.NoRespondersError, TimeoutError))


async def patiently(make: Callable[[], Awaitable[T]], what: str, within: float = MAKE_WITHIN) -> T:
    """`make()` (a stream or bucket looked up or made), tried again for `within`
    seconds while NATS cannot answer: a cluster just started, or electing,
    takes a while before it can make a replicated stream, and a node started
    with it should wait for it rather than fail. Making the same stream twice
    is no error, so a request that timed out after it was carried out is
    harmless to repeat. A refusal raises at once."""
    deadline = time.monotonic() + within
    delay = 0.25
    while True:
        try:
            return await make()
        except Exception as exc:
            if not _not_yet(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning(
                "JetStream cannot make %s yet (%s): trying again", what, exc or type(exc).__name__
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 4.0)


async def key_value(js: JetStreamContext, bucket: str, *, replicas: int, **config: Any) -> KeyValue:
    """The KV bucket, made (one revision kept per key, and `config`: a TTL, a
    storage) if it is not there yet."""

    async def find_or_make() -> KeyValue:
        try:
            return await js.key_value(bucket)
        except BucketNotFoundError:
            return await js.create_key_value(bucket=bucket, history=1, replicas=replicas, **config)

    return await patiently(find_or_make, f"bucket {bucket}")


async def object_store(js: JetStreamContext, bucket: str, *, replicas: int) -> ObjectStore:
    """The object store, made if it is not there yet."""

    async def find_or_make() -> ObjectStore:
        try:
            return await js.object_store(bucket)
        except BucketNotFoundError:
            return await js.create_object_store(bucket, replicas=replicas)

    return await patiently(find_or_make, f"object store {bucket}")


async def written_keys(js: JetStreamContext, bucket: str, keys: str = ">") -> list[str]:
    """Every key with a message in the bucket (live, deleted or expired: a
    caller reads each), from the stream's subjects. Not from a watch: nats-py
    2.16's watch may say "caught up" before the first entry when its consumer
    delivers fast (seen under load), and an empty answer would read as "none"."""
    info = await js.stream_info(kv_stream(bucket), subjects_filter=kv_subject(bucket, keys))
    start = len(kv_subject(bucket, ""))
    return sorted(subject[start:] for subject in info.state.subjects or {})


async def at_revision(kv: KeyValue, key: str) -> tuple[int, KeyValue.Entry | None]:
    """A key's last revision in its bucket (a tombstone's too; 0 if it has none)
    and its entry (None if deleted or purged): what a compare-and-set names as
    the revision it expects, so that of racing writers exactly one wins."""
    try:
        got = await kv.get(key)
    except KeyNotFoundError as exc:  # a tombstone comes with its revision
        tombstone = exc.entry
        return (tombstone.revision or 0) if tombstone is not None else 0, None
    return got.revision or 0, got


def lost_race(exc: APIError) -> bool:
    """A conditional write (a delete: `update` raises KeyWrongLastSequenceError
    itself) refused because the key is no longer at the revision it named."""
    return exc.err_code in (10071, 10164)


class Lazy(Generic[T]):
    """A bucket looked up (or made) on first use, once however many callers race:
    so the constructors of the JetStream backends stay synchronous."""

    def __init__(self, make: Callable[[], Awaitable[T]]) -> None:
        self._make = make
        self._value: T | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> T:
        if self._value is None:
            async with self._lock:
                if self._value is None:
                    self._value = await self._make()
        return self._value
