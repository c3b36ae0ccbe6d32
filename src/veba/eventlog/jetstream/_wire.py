"""The few JetStream requests the log makes that nats-py does not make the way
it needs: publishing many messages with their acks awaited together (one
round trip, in order), pulling what a consumer has *now* (no waiting when it
has nothing), direct gets, and reading a stream through a throwaway consumer."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError, ServiceUnavailableError

from veba.eventlog.base import LogFull, LogUnavailable

__all__ = [
    "JetStreamError",
    "Outgoing",
    "api",
    "direct_get",
    "publish_many",
    "pull",
    "scan",
    "settle",
    "settle_many",
]

TIMEOUT = 10.0
Outgoing = tuple[str, bytes, Mapping[str, str]]  # subject, body, headers

# JetStream errors that mean "no room": the account's or the stream's limits.
_FULL = (10023, 10027, 10047, 10028)  # insufficient resources, max bytes, storage, max msgs


class JetStreamError(OSError):
    """The NATS server refused a request of the log, or did not answer it."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class NoAnswer(JetStreamError, LogUnavailable):
    """Nothing answered in time, or no server could (503: no responders, a
    stream without a leader while its cluster elects): try again."""


def _raise_for(error: Mapping[str, Any], what: str) -> None:
    code = int(error.get("err_code", 0))
    text = f"{what}: {error.get('description', 'error')} (JetStream {code})"
    if code in _FULL:
        raise LogFull(text)
    if int(error.get("code", 0)) == 503:  # JetStream or a stream without a leader now
        raise NoAnswer(text, code)
    raise JetStreamError(text, code)


def _status(msg: Msg) -> str | None:
    if msg.headers is None or msg.data:
        return None
    status = msg.headers.get("Status")
    return None if status is None else str(status)


async def api(nc: Client, subject: str, request: Mapping[str, Any]) -> dict[str, Any]:
    """One JetStream API request ($JS.API.…); its error as JetStreamError."""
    try:
        reply = await nc.request(subject, json.dumps(request).encode(), timeout=TIMEOUT)
    except TimeoutError as exc:
        raise NoAnswer(f"{subject}: no answer in {TIMEOUT} s") from exc
    answer: dict[str, Any] = json.loads(reply.data)
    if "error" in answer:
        _raise_for(answer["error"], subject)
    return answer


class _Replies:
    """One wildcard inbox subscription per connection for the replies the log
    awaits (publish acks, ack confirmations; not pulled messages, which come
    on their own subjects), each handed by
    its token to whoever waits for it: no subscription made and dropped per
    request, and no task per awaited reply (nats-py's `next_msg` makes one)."""

    def __init__(self, nc: Client) -> None:
        self._nc = weakref.ref(nc)  # the registry's key: a strong one would keep it for ever
        self.prefix = nc.new_inbox()
        self._lock = asyncio.Lock()
        self._subscribed = False
        self._waiting: dict[str, Callable[[Msg, str], None]] = {}
        self._tokens = itertools.count()

    async def expect(self, on_reply: Callable[[Msg, str], None]) -> str:
        """A reply subject prefix whose replies (`<prefix>.<token>`) go to
        `on_reply` with that token, until `forget`."""
        if not self._subscribed:
            async with self._lock:
                nc = self._nc()
                if not self._subscribed and nc is not None:
                    await nc.subscribe(
                        f"{self.prefix}.*.*", cb=self._on_reply, pending_msgs_limit=0,
                        pending_bytes_limit=0,
                    )  # fmt: skip
                    self._subscribed = True
        key = str(next(self._tokens))
        self._waiting[key] = on_reply
        return f"{self.prefix}.{key}"

    def forget(self, reply: str) -> None:
        self._waiting.pop(reply.rsplit(".", 1)[1], None)

    async def _on_reply(self, msg: Msg) -> None:
        key, _, index = msg.subject[len(self.prefix) + 1 :].partition(".")
        on_reply = self._waiting.get(key)
        if on_reply is not None:
            on_reply(msg, index)


_REPLIES: weakref.WeakKeyDictionary[Client, _Replies] = weakref.WeakKeyDictionary()


def _replies(nc: Client) -> _Replies:
    replies = _REPLIES.get(nc)
    if replies is None:
        replies = _REPLIES[nc] = _Replies(nc)
    return replies


async def _awaited(
    nc: Client,
    send: Callable[[str], Awaitable[None]],
    on_reply: Callable[[Msg, str], bool],
    timeout: float,
    what: str,
) -> None:
    """`send` with a reply prefix; then wait until `on_reply` (called with each
    reply and its token) says it has had all it waits for. NoAnswer after
    `timeout`; a reply's exception raised from `on_reply` ends the wait with it."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def take(msg: Msg, index: str) -> None:
        if done.done():
            return
        try:
            if on_reply(msg, index):
                done.set_result(None)
        except Exception as exc:  # the reply said no: the waiter raises it
            done.set_exception(exc)

    replies = _replies(nc)
    reply = await replies.expect(take)
    try:
        await send(reply)
        try:
            async with asyncio.timeout(timeout):
                await done
        except TimeoutError as exc:
            raise NoAnswer(f"{what}: no answer in {timeout} s") from exc
    finally:
        replies.forget(reply)
        if not done.done():
            done.cancel()


async def publish_many(nc: Client, messages: Sequence[Outgoing]) -> list[dict[str, Any]]:
    """Publish in order on this connection and await every ack together: each
    message's PubAck (or its {"error": …}), in the order given. One connection
    delivers in order, so the stream stores them in that order."""
    if not messages:
        return []
    acks: list[dict[str, Any] | None] = [None] * len(messages)
    left = len(messages)

    async def send(reply: str) -> None:
        for index, (subject, body, headers) in enumerate(messages):
            await nc.publish(subject, body, reply=f"{reply}.{index}", headers=dict(headers))

    def on_reply(msg: Msg, index: str) -> bool:
        nonlocal left
        status = _status(msg)
        if status is not None:  # 503: no stream takes the subject now (no leader)
            raise NoAnswer(f"publish: status {status} (no stream can take it now)")
        at = int(index)
        if acks[at] is None:
            left -= 1
        acks[at] = json.loads(msg.data)
        return left == 0

    await _awaited(nc, send, on_reply, TIMEOUT, f"publish of {len(messages)}")
    return [ack for ack in acks if ack is not None]


def check_ack(ack: Mapping[str, Any], what: str) -> int:
    """The stream seq of a successful PubAck; its error raised."""
    if "error" in ack:
        _raise_for(ack["error"], what)
    return int(ack["seq"])


async def pull(
    nc: Client, stream: str, consumer: str, batch: int, *, timeout: float = 5.0
) -> list[Msg]:
    """What `consumer` has to give now, up to `batch` messages; [] at once when
    nothing. A consumer that is not there does not answer: JetStreamError after
    `timeout`. Pulled messages come on their own subjects, to a subscription of
    this pull's own; a callback takes them (no task per message, as
    nats-py's `next_msg` makes)."""
    if batch <= 0:
        return []
    what = f"pull from {stream}/{consumer}"
    msgs: list[Msg] = []
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def take(msg: Msg) -> None:
        if done.done():
            return
        status = _status(msg)
        if status is None:
            msgs.append(msg)
            if len(msgs) >= batch:
                done.set_result(None)
        elif status in ("404", "408", "409"):  # no more now / request done
            done.set_result(None)
        elif status != "100":  # 100: a heartbeat
            error = NoAnswer if status == "503" else JetStreamError
            done.set_exception(error(f"{what}: status {status}"))

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=take)
    try:
        request = json.dumps({"batch": batch, "no_wait": True}).encode()
        await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}", request, reply=inbox)
        try:
            async with asyncio.timeout(timeout):
                await done
        except TimeoutError as exc:
            if msgs:  # what came before the silence is ours
                return msgs
            raise NoAnswer(f"{what}: no answer") from exc
        return msgs
    finally:
        await sub.unsubscribe()
        if not done.done():
            done.cancel()


async def direct_get(
    nc: Client, stream: str, request: Mapping[str, Any], *, leader: bool = False
) -> Msg | None:
    """A direct get ({"seq": n}, {"seq": n, "next_by_subj": s}, {"last_by_subj": s});
    None if there is no such message. Headers carry Nats-Sequence, -Subject and
    -Time-Stamp (when the server stored it).

    `leader`: from the stream's leader. A direct get is answered by any replica,
    which may not have applied a write just acknowledged; a stream kept on
    several servers is read from its leader, so what a node wrote it reads."""
    if leader:
        return await _leader_get(nc, stream, request)
    try:
        reply = await nc.request(
            f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), timeout=TIMEOUT
        )
    except TimeoutError as exc:
        raise NoAnswer(f"direct get from {stream}: no answer") from exc
    status = _status(reply)
    if status == "404":
        return None
    if status is not None:
        error = NoAnswer if status == "503" else JetStreamError
        raise error(f"direct get from {stream}: status {status}")
    return reply


async def _leader_get(nc: Client, stream: str, request: Mapping[str, Any]) -> Msg | None:
    seq, next_by, last_by = (
        request.get("seq"),
        request.get("next_by_subj"),
        request.get("last_by_subj"),
    )
    try:
        raw = await nc.jetstream().get_msg(
            stream, seq=seq, subject=next_by or last_by, next=next_by is not None
        )
    except NotFoundError:
        return None
    except ServiceUnavailableError as exc:
        raise NoAnswer(f"get from {stream}: {exc}") from exc
    except TimeoutError as exc:
        raise NoAnswer(f"get from {stream}: no answer") from exc
    headers = {**(raw.headers or {}), "Nats-Sequence": str(raw.seq), "Nats-Subject": raw.subject}
    if raw.time is not None:  # as a direct get's answer carries it
        headers["Nats-Time-Stamp"] = raw.time.isoformat()
    return Msg(nc, subject=raw.subject or "", data=raw.data or b"", headers=headers)


ACK, NAK, WORKING = b"+ACK", b"-NAK", b"+WPI"

AT_ONCE = 100  # requests of one kind a node has in flight together (deletes, state reads)


async def settle(msg: Msg, kind: bytes, *, delay: float | None = None) -> None:
    """Ack, nak (after `delay` seconds) or keep a consumer's message, and wait
    until the server has taken it: a nak'd message can be pulled again once
    this returns, an acked one is off the work queue."""
    await settle_many([msg], kind, delay=delay)


async def settle_many(msgs: Sequence[Msg], kind: bytes, *, delay: float | None = None) -> None:
    """`settle` each of `msgs`, the server's confirmations awaited together."""
    if not msgs:
        return
    nc = msgs[0]._client
    if nc is None or any(m.reply is None or m._client is not nc for m in msgs):
        raise JetStreamError("not a message from a consumer of this connection")
    payload = kind
    if delay:
        payload += b" " + json.dumps({"delay": int(delay * 1e9)}).encode()
    confirmed = [False] * len(msgs)
    left = len(msgs)

    async def send(reply: str) -> None:
        for index, msg in enumerate(msgs):
            assert msg.reply is not None
            await nc.publish(msg.reply, payload, reply=f"{reply}.{index}")

    def on_reply(msg: Msg, index: str) -> bool:
        nonlocal left
        if _status(msg) == "503":  # no one takes acks on that consumer now
            raise NoAnswer(f"{kind.decode()}: no responders (status 503)")
        at = int(index)
        if not confirmed[at]:
            confirmed[at] = True
            left -= 1
        return left == 0

    await _awaited(nc, send, on_reply, TIMEOUT, kind.decode())


_NO_MESSAGE = 10057  # JetStream's err_code for a message that is not (or no longer) there


async def delete(nc: Client, stream: str, seq: int) -> bool:
    """Delete message `seq`; False if it was gone already (another node's prune
    or forget deleted it first), which is what the caller wanted anyway. Its
    bytes are marked deleted, not overwritten, as the server's own limits
    (max_age, max_msgs) remove messages: overwriting made each delete 2-4
    times slower here."""
    request = {"seq": seq, "no_erase": True}
    try:
        await api(nc, f"$JS.API.STREAM.MSG.DELETE.{stream}", request)
    except JetStreamError as exc:
        if exc.code == _NO_MESSAGE:
            return False
        raise
    return True


async def delete_many(nc: Client, stream: str, seqs: Sequence[int]) -> list[bool]:
    """`delete` each of `seqs`, AT_ONCE requests in flight together (a
    retention pass deletes thousands: one round trip each, one after the other)."""
    done: list[bool] = []
    for at in range(0, len(seqs), AT_ONCE):
        part = seqs[at : at + AT_ONCE]
        done.extend(await asyncio.gather(*(delete(nc, stream, seq) for seq in part)))
    return done


def seq_of(msg: Msg) -> int:
    """The stream seq of a message from a direct get or a consumer."""
    if msg.headers and "Nats-Sequence" in msg.headers:
        return int(msg.headers["Nats-Sequence"])
    return int(msg.metadata.sequence.stream)


async def walk(
    nc: Client, stream: str, subjects: str, start: int = 1, *, leader: bool = False
) -> AsyncGenerator[Msg, None]:
    """Every message of `subjects` from seq `start`, one direct get each: for a
    work-queue stream, where a second consumer on the same subjects is refused."""
    while True:
        request = {"seq": start, "next_by_subj": subjects}
        msg = await direct_get(nc, stream, request, leader=leader)
        if msg is None:
            return
        yield msg
        start = seq_of(msg) + 1


async def _nothing_after(
    nc: Client, stream: str, subjects: str | None, read: int, upto: int | None
) -> bool:
    """Whether `stream` holds no message (of `subjects`) after seq `read` (up to `upto`)."""
    after = await direct_get(nc, stream, {"seq": read + 1, "next_by_subj": subjects or ">"})
    return after is None or (upto is not None and seq_of(after) > upto)


async def scan(
    js: JetStreamContext,
    nc: Client,
    stream: str,
    *,
    subjects: str | None = None,
    start: int = 1,
    since: float | None = None,
    upto: int | None = None,
    headers_only: bool = False,
    batch: int = 500,
    timeout: float = 5.0,
) -> AsyncGenerator[Msg, None]:
    """Read a stream from seq `start` on (or, with `since`, from the first
    message the server stored at or after that time.time()), in order, through
    a throwaway pull consumer (in memory, no acks), deleted when the reading
    ends; with `upto`, only up to that seq (read from the stream's info): no
    pull is made after it, which nats-server 2.9 may leave unanswered when the
    stream was purged while the consumer read (its pending count goes wrong)."""
    by_time = since is not None
    config = ConsumerConfig(
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.BY_START_TIME if by_time else DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=None if by_time else max(1, start),
        opt_start_time=None if since is None else datetime.fromtimestamp(since, UTC),
        filter_subject=subjects,
        headers_only=headers_only or None,
        inactive_threshold=60.0,
        mem_storage=True,
        num_replicas=1,
    )
    info = await js.add_consumer(stream, config)
    read = 0 if by_time else max(1, start) - 1  # the last seq read (or passed)
    try:
        while True:
            try:
                msgs = await pull(nc, stream, info.name, batch, timeout=timeout)
            except NoAnswer:
                # nats-server 2.9 may leave a pull unanswered when messages were
                # deleted while the consumer read (another node's prune, say): its
                # pending count goes wrong. Over, if nothing is left past `read`.
                if await _nothing_after(nc, stream, subjects, read, upto):
                    return
                raise
            for msg in msgs:
                if upto is not None and seq_of(msg) > upto:
                    return
                read = seq_of(msg)
                yield msg
            if not msgs or msgs[-1].metadata.num_pending == 0:
                return
            if upto is not None and seq_of(msgs[-1]) >= upto:
                return
    finally:
        with contextlib.suppress(Exception):  # else it goes after inactive_threshold
            await js.delete_consumer(stream, info.name)
