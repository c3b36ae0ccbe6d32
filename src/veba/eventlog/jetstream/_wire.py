"""The few JetStream requests the log makes that nats-py does not make the way
it needs: publishing many messages with their acks awaited together (one
round trip, in order), pulling what a consumer has *now* (no waiting when it
has nothing), direct gets, and reading a stream through a throwaway consumer."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, Mapping, Sequence
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


async def publish_many(nc: Client, messages: Sequence[Outgoing]) -> list[dict[str, Any]]:
    """Publish in order on this connection and await every ack together: each
    message's PubAck (or its {"error": …}), in the order given. One connection
    delivers in order, so the stream stores them in that order."""
    if not messages:
        return []
    inbox = nc.new_inbox()
    sub = await nc.subscribe(f"{inbox}.*")
    try:
        for index, (subject, body, headers) in enumerate(messages):
            await nc.publish(subject, body, reply=f"{inbox}.{index}", headers=dict(headers))
        acks: list[dict[str, Any] | None] = [None] * len(messages)
        left = len(messages)
        while left:
            try:
                reply = await sub.next_msg(timeout=TIMEOUT)
            except TimeoutError as exc:
                raise NoAnswer(f"publish: {left} of {len(messages)} not acked") from exc
            status = _status(reply)
            if status is not None:  # 503: no stream takes the subject now (no leader)
                raise NoAnswer(f"publish: status {status} (no stream can take it now)")
            index = int(reply.subject.rsplit(".", 1)[1])
            if acks[index] is None:
                left -= 1
            acks[index] = json.loads(reply.data)
        return [ack for ack in acks if ack is not None]
    finally:
        await sub.unsubscribe()


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
    `timeout`."""
    if batch <= 0:
        return []
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    msgs: list[Msg] = []
    try:
        request = json.dumps({"batch": batch, "no_wait": True}).encode()
        await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}", request, reply=inbox)
        while len(msgs) < batch:
            try:
                msg = await sub.next_msg(timeout=timeout)
            except TimeoutError as exc:
                if msgs:
                    break
                raise NoAnswer(f"pull from {stream}/{consumer}: no answer") from exc
            status = _status(msg)
            if status is None:
                msgs.append(msg)
            elif status in ("404", "408", "409"):  # no more now / request done
                break
            elif status != "100":  # 100: a heartbeat
                error = NoAnswer if status == "503" else JetStreamError
                raise error(f"pull from {stream}/{consumer}: status {status}")
        return msgs
    finally:
        await sub.unsubscribe()


async def direct_get(
    nc: Client, stream: str, request: Mapping[str, Any], *, leader: bool = False
) -> Msg | None:
    """A direct get ({"seq": n}, {"seq": n, "next_by_subj": s}, {"last_by_subj": s});
    None if there is no such message. Headers carry Nats-Sequence and -Subject.

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
    return Msg(nc, subject=raw.subject or "", data=raw.data or b"", headers=headers)


ACK, NAK, WORKING = b"+ACK", b"-NAK", b"+WPI"


async def settle(msg: Msg, kind: bytes, *, delay: float | None = None) -> None:
    """Ack, nak (after `delay` seconds) or keep a consumer's message, and wait
    until the server has taken it: a nak'd message can be pulled again once
    this returns, an acked one is off the work queue."""
    if msg.reply is None or msg._client is None:
        raise JetStreamError("not a message from a consumer")
    payload = kind
    if delay:
        payload += b" " + json.dumps({"delay": int(delay * 1e9)}).encode()
    try:
        await msg._client.request(msg.reply, payload, timeout=TIMEOUT)
    except TimeoutError as exc:
        raise NoAnswer(f"{kind.decode()}: no answer in {TIMEOUT} s") from exc


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


async def scan(
    js: JetStreamContext,
    nc: Client,
    stream: str,
    *,
    subjects: str | None = None,
    start: int = 1,
    upto: int | None = None,
    headers_only: bool = False,
    batch: int = 500,
    timeout: float = 5.0,
) -> AsyncGenerator[Msg, None]:
    """Read a stream from seq `start` on, in order, through a throwaway pull
    consumer (in memory, no acks), deleted when the reading ends; with `upto`,
    only up to that seq (read from the stream's info): no pull is made after
    it, which nats-server 2.9 may leave unanswered when the stream was purged
    while the consumer read (its pending count goes wrong)."""
    config = ConsumerConfig(
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=max(1, start),
        filter_subject=subjects,
        headers_only=headers_only or None,
        inactive_threshold=60.0,
        mem_storage=True,
        num_replicas=1,
    )
    info = await js.add_consumer(stream, config)
    try:
        while True:
            msgs = await pull(nc, stream, info.name, batch, timeout=timeout)
            for msg in msgs:
                if upto is not None and seq_of(msg) > upto:
                    return
                yield msg
            if not msgs or msgs[-1].metadata.num_pending == 0:
                return
            if upto is not None and seq_of(msgs[-1]) >= upto:
                return
    finally:
        with contextlib.suppress(Exception):  # else it goes after inactive_threshold
            await js.delete_consumer(stream, info.name)
