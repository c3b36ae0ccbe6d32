"""`KVLeadership`: a lease per name in a JetStream key-value bucket.

nats-server 2.9 has no per-key TTL, so the bucket's TTL (its stream's max age)
is the lease's: a key not renewed within it vanishes. Every node uses the TTL
the bucket was made with.

- acquire: create the key if absent (expected last subject sequence 0);
- renew: every TTL/4, update expecting the revision this holder last wrote;
- give up: on a revision mismatch, or once no renewal has gone through for
  0.8 TTL counted from the *send* of the last good one. The server wrote that
  one later, so the key outlives the holder's belief in it, and the next
  holder can only create the key after it is gone;
- release (a clean stop): purge the key up to our revision, then tell
  contenders on a plain subject, so one takes over at once, not after the TTL.

Why no delete marker, and no `KeyValue.create`: on a 2.9 *cluster* the server
checks an expected subject revision above 0 against what is applied before the
Raft proposal, so two writers expecting the same revision can both win
(measured: half the time). nats-py's `create` of a deleted key does exactly that
(update expecting the marker's revision), so after a delete two contenders
could both lead. Revision 0 (create) is checked when the write is applied, and
so is a purge's upper sequence: those are safe, and the only write here that
expects a revision above 0 is the holder's own renewal, which no one else makes.
A marker someone else left (`nats kv del`) is left to expire with the bucket's
TTL: its holder learns of it at its next renewal, and no one may lead before.

That holds while the holder's event loop runs: a process frozen longer than the
TTL (SIGSTOP, a paused VM) can still overlap its successor, as with any lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from veba.leadership._lease import Lease

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue

    from veba.natsurl import NatsLocation

__all__ = ["DEFAULT_TTL", "KVLeadership", "lease_bucket", "lease_key"]

log = logging.getLogger("veba.leadership")

# A dead leader's vCenter is read again within TTL + a poll (8 + 0.5 s) and a
# login; a live one renews every 2 s and rides out a 6.4 s stall of its NATS
# cluster.
DEFAULT_TTL = 8.0

_EXPECTED_REVISION = "Nats-Expected-Last-Subject-Sequence"
_WRONG_REVISION = (10071, 10164)  # the server's codes for a failed expectation
_KEY_CHARS = re.compile(r"[-/_A-Za-z0-9]")


def lease_bucket(location: NatsLocation) -> str:
    """The bucket of one veba cluster's leases: `NAME_leases`."""
    return location.prefixed("leases")


def lease_key(name: str) -> str:
    """A KV key for any name, readable where it can be: characters a key may
    not have (and '=', the escape) become `=XX` per UTF-8 byte; so do dots that
    would make an empty subject token. `vcenter:vc1.lab:443` → `vcenter=3Avc1.lab=3A443`."""
    if not name:
        raise ValueError("a lease needs a name")
    out: list[str] = []
    for i, char in enumerate(name):
        lone_dot = char == "." and 0 < i < len(name) - 1 and name[i + 1] != "." and out[-1] != "."
        if _KEY_CHARS.fullmatch(char) or lone_dot:
            out.append(char)
        else:
            out.extend(f"={byte:02X}" for byte in char.encode())
    return "".join(out)


def _raise_if_cancelled() -> None:
    """Raise a cancel that nats-py swallowed: on 3.11 its requests await
    `asyncio.wait_for`, which returns the answer and drops a cancel that comes
    in the same loop turn; the task still counts it as pending."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _transient() -> tuple[type[BaseException], ...]:
    """What a NATS call may fail with that is worth trying again (nats-py is
    imported only by a node that uses a KV lease)."""
    import nats.errors

    return (nats.errors.Error, TimeoutError, OSError)


class KVLeadership:
    """Leases in a JetStream KV bucket whose TTL is the lease's (see the module)."""

    def __init__(
        self,
        client: Client,
        js: JetStreamContext,
        kv: KeyValue,
        *,
        bucket: str,
        ttl: float,
        holder: str,
    ) -> None:
        self._client = client
        self._js = js
        self._kv = kv
        self.bucket = bucket
        self.ttl = ttl
        self.holder = holder  # who this node is, in the lease's value
        self.renew_every = ttl / 4
        self.valid_for = ttl * 0.8  # since the send of the last good write
        # A contender's look for an expired lease: often, as what it costs (a
        # refused create and a get, per contender) is small beside a vCenter
        # unread for longer (at 2 s, a takeover took up to 10 s before the login).
        self.poll_every = min(ttl / 4, 0.5)
        self.retry_every = min(0.5, ttl / 10)  # after a failed renewal

    @classmethod
    async def open(
        cls,
        client: Client,
        js: JetStreamContext,
        bucket: str,
        *,
        ttl: float = DEFAULT_TTL,
        replicas: int = 1,
        holder: str | None = None,
    ) -> KVLeadership:
        """The bucket, made if missing. If it exists, its TTL wins over `ttl`:
        every node must count a lease the same way."""
        from nats.js.api import StorageType

        from veba.jetstream._buckets import key_value

        kv = await key_value(
            js,
            bucket,
            replicas=replicas,
            ttl=ttl,
            # On file, not in memory: a NATS server that restarts within the
            # TTL must still have the lease, or a contender would take it
            # while its holder, still renewing in vain, believes it leads.
            storage=StorageType.FILE,
            description="veba: which node reads each vCenter",
        )
        found = (await kv.status()).ttl
        if not found:
            raise ValueError(f"bucket {bucket!r} has no TTL: it cannot hold leases")
        if abs(found - ttl) > 1e-3:
            log.warning(
                "lease bucket %s has a TTL of %g s (not %g s); using it", bucket, found, ttl
            )
        me = holder or f"{socket.gethostname()}:{os.getpid()}"
        return cls(client, js, kv, bucket=bucket, ttl=found, holder=me)

    def _subject(self, key: str) -> str:
        return f"$KV.{self.bucket}.{key}"

    def _released_subject(self, key: str) -> str:
        # Outside $KV.<bucket>.>: a plain message no stream keeps.
        return f"_VEBA.lease-released.{self.bucket}.{key}"

    @asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[Lease]:
        key = lease_key(name)
        # Unique to this acquisition: a write whose acknowledgement was lost is
        # recognised as ours by its value.
        value = json.dumps(
            {"name": name, "holder": self.holder, "token": uuid.uuid4().hex, "since": time.time()}
        ).encode()
        lease, sent = await self._acquire(name, key, value)
        renewing = asyncio.create_task(self._renew(lease, key, value, sent), name=f"lease:{name}")
        try:
            _raise_if_cancelled()  # stopped while acquiring: release, do not lead
            yield lease
        finally:
            held = lease.held
            lease.lost.set()
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            if held:
                await self._release(lease, key)

    async def _acquire(self, name: str, key: str, value: bytes) -> tuple[Lease, float]:
        """Create the key once it is absent: a release wakes us at once, an
        expiry is noticed within `poll_every`."""
        released = asyncio.Event()

        async def on_release(_: Msg) -> None:
            released.set()

        subscription = await self._client.subscribe(self._released_subject(key), cb=on_release)
        # The send of the first try whose outcome is unknown (no answer): if a
        # later try finds the key ours, it was written no earlier than that.
        unknown_since: float | None = None
        try:
            while True:
                _raise_if_cancelled()
                released.clear()
                sent = time.monotonic()
                try:
                    async with asyncio.timeout(self.valid_for):
                        created = await self._create(key, value)
                    if created is not None:
                        revision, earlier = created
                        log.info("leading %s (lease revision %d)", name, revision)
                        return Lease(name, revision), (unknown_since or sent) if earlier else sent
                except _transient() as exc:
                    unknown_since = unknown_since or sent
                    log.debug("lease %s: %r; trying again", name, exc)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_every):
                        await released.wait()
        finally:
            with contextlib.suppress(*_transient()):
                await subscription.unsubscribe()

    async def _create(self, key: str, value: bytes) -> tuple[int, bool] | None:
        """The revision of our new lease, and whether an earlier try wrote it
        (its answer lost); None while another holds the lease."""
        import nats.js.errors

        for _ in range(2):  # a second time if the lease expired in between
            try:
                ack = await self._js.publish(
                    self._subject(key), value, headers={_EXPECTED_REVISION: "0"}
                )
                return ack.seq, False
            except nats.js.errors.APIError as exc:
                if exc.err_code not in _WRONG_REVISION:
                    raise
            try:
                entry = await self._kv.get(key)
            except nats.js.errors.KeyNotFoundError as gone:
                if gone.entry is None:  # expired meanwhile: create again
                    continue
                # A delete marker (`nats kv del`): its holder learns of it at its
                # next renewal, so the lease is free only once the marker
                # expires too, a TTL on.
                return None
            if entry.value == value and entry.revision:  # our own create, its ack lost
                return entry.revision, True
            return None
        return None

    async def _purge(self, key: str, revision: int) -> None:
        """Remove the key's messages up to and including `revision`: the server
        decides when it applies the purge, so a later write survives it."""
        await self._js.purge_stream(
            f"KV_{self.bucket}", subject=self._subject(key), seq=revision + 1
        )

    async def _renew(self, lease: Lease, key: str, value: bytes, good_send: float) -> None:
        """Update the key every `renew_every`; give up on a mismatch, or when no
        update has gone through for `valid_for` since the send of the last good one."""
        import nats.js.errors

        pause = self.renew_every
        while not lease.lost.is_set():  # set by hold() too, should a cancel be lost
            await asyncio.sleep(pause)
            left = good_send + self.valid_for - time.monotonic()
            if left <= 0:
                return self._lose(lease, f"no renewal went through for {self.valid_for:g} s")
            sent = time.monotonic()
            try:
                async with asyncio.timeout(left):
                    lease.revision = await self._kv.update(key, value, last=lease.revision)
                good_send, pause = sent, self.renew_every
            except nats.js.errors.KeyWrongLastSequenceError:
                mine = await self._revision_if_mine(key, value)
                if mine is None:
                    return self._lose(lease, "another node holds it now")
                # An earlier renewal went through unanswered, when is not known
                # (after `good_send`, which stays): renew again at once.
                lease.revision, pause = mine, 0.0
            except _transient() as exc:
                log.debug("lease %s: renewal failed: %r", lease.name, exc)
                pause = min(self.retry_every, max(0.0, left - (time.monotonic() - sent)))

    def _lose(self, lease: Lease, why: str) -> None:
        log.warning("no longer leading %s: %s", lease.name, why)
        lease.lost.set()

    async def _revision_if_mine(self, key: str, value: bytes) -> int | None:
        """The key's revision if it holds our value (a renewal whose
        acknowledgement was lost), else None."""
        with contextlib.suppress(*_transient()):
            async with asyncio.timeout(self.retry_every * 4):
                entry = await self._kv.get(key)
            if entry.value == value:
                return entry.revision
        return None

    async def _release(self, lease: Lease, key: str) -> None:
        """Purge our revision (a lease written since by another stays) and tell
        the contenders. Best effort: if it fails, the TTL frees the lease."""
        try:
            await asyncio.shield(self._release_now(lease, key))  # a cancel does not cut it
            log.info("released %s", lease.name)
        except _transient() as exc:
            log.info("%s is released when its lease expires (%r)", lease.name, exc)

    async def _release_now(self, lease: Lease, key: str) -> None:
        async with asyncio.timeout(self.retry_every * 4):
            await self._purge(key, lease.revision)
            await self._client.publish(self._released_subject(key), b"")
            await self._client.flush(timeout=2)
