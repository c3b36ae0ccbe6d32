"""`EventLog` on NATS JetStream, shared by every node of one appliance.

Layout (NAME is the constructor's `name`; see docs/design.md, "The JetStream log"):

- `NAME_events` (stream, limits): one message per event on
  `NAME.events.<source>.<id>`, its body the event's JSON, its headers when it was
  received, its CloudEvent subject and type, and where it was routed. The seq an
  event gets is its stream seq.
- `NAME_deliveries` (stream, work queue): one message per open delivery on
  `NAME.deliveries.<subscription>`, carrying the event, so a lease is one pull.
  A delivery's id is its message's stream seq (a redriven one keeps its id);
  `Nats-Msg-Id` (event seq + subscription): a second write of one is dropped.
  One durable pull consumer per subscription, shared by all nodes: each
  delivery goes to one node at a time; an ack removes it.
- `NAME_dlq` (stream, limits): dead letters on `NAME.dlq.<subscription>`.
- `NAME_states` (stream, last message per subject): each delivery's status,
  attempts and failed attempts on `NAME.states.<id>`, written at every change
  after its first lease; what every node's inspection queries read.
- `NAME_gone` (stream, limits, a day): the ids of deleted states, for the
  tally each node keeps for `counts()` (_tally.py).
- `NAME_routed` (stream, limits): marks, one per append, of the events whose
  deliveries it made; `NAME-router` (KV): the router's watermark (_router.py).
- `NAME-checkpoints` (KV): provider checkpoints.

Deduplication. An event's subject is unique to its (source, id), and the events
stream keeps at most one message per subject, refusing a second
(`max_msgs_per_subject=1`, `discard_new_per_subject`): the stream itself is the
unique index, atomic with the write, for as long as the event is kept, which is
what the SQLite log promises (dedup within the retention window; `prune` frees
the subject with the event). `Nats-Msg-Id` (the same (source, id)) answers a
repeat within the duplicate window without the error round trip. Not chosen: a
duration-long `duplicate_window` (the server keeps every id of the window in
memory and forgets by time, not by retention) and a KV of seen ids (a second
write that is not atomic with the event's: a crash between the two loses the
event or lets its repeat in).

Not one transaction, unlike SQLite's: an append publishes its events, then
their deliveries, then a mark that they are made, then the checkpoint. What a
node dying in between leaves, the others finish (_router.py): unmarked events
get the deliveries their `Veba-Routes` header recorded, once each (every
delivery carries `Nats-Msg-Id` = event seq + subscription), and a sender's
retry, answered as a duplicate, makes them at once. A checkpoint left behind
costs a re-send that dedup drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError, KeyNotFoundError
from nats.js.kv import KeyValue

from veba.eventlog.jetstream._append import Appending, QueuedAppend
from veba.eventlog.jetstream._base import received
from veba.eventlog.jetstream._deliveries import ELECTED, DeliveryOps
from veba.eventlog.jetstream._errors import raises_log_errors
from veba.eventlog.jetstream._leases import LeaseKeeper
from veba.eventlog.jetstream._names import Names, token
from veba.eventlog.jetstream._queries import Queries
from veba.eventlog.jetstream._state import DeliveryState
from veba.eventlog.jetstream._tally import Tally
from veba.eventlog.jetstream._wire import delete_many, scan, seq_of
from veba.jetstream._buckets import patiently

__all__ = ["JetStreamLog"]

GONE_KEPT = 86400.0  # seconds a notice of deleted states is kept (NAME_gone)


@raises_log_errors
class JetStreamLog(DeliveryOps, Queries, Appending):
    """`EventLog` on NATS JetStream (see the module's docstring for the layout)."""

    # Retention (`prune`): how far apart the nodes' clocks may be (an event is
    # stamped with its node's); how long after its event a delivery's state may
    # be stored and still go in the pass that deletes the event; how often a
    # node's pass reads every state, for those stored later.
    nodes_apart = 60.0
    late_states = 300.0
    whole_prune_every = 86400.0

    def __init__(
        self,
        servers: Sequence[str] = ("nats://127.0.0.1:4222",),
        *,
        name: str = "veba",
        replicas: int = 1,
        ack_wait: float = 30.0,
        duplicate_window: float = 120.0,
        repair_after: float = 10.0,
        clock: Callable[[], float] = time.time,
        client: Client | None = None,
    ) -> None:
        self.servers = list(servers)
        # A client the appliance connects and closes, shared with its other
        # JetStream backends (`veba.backends`); without one the log has its own.
        self._client = client
        self.names = Names(name)
        self.replicas = replicas
        # How long a node that died holding leases keeps them (leases of any
        # length are the holding node's to keep: _leases.py).
        self.ack_wait = ack_wait
        self.duplicate_window = duplicate_window
        # How old an event without its mark must be before the router makes its
        # deliveries: an append still under way has that long to mark it.
        self.repair_after = repair_after
        self._clock = clock
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._kv: KeyValue | None = None
        self._router_kv: KeyValue | None = None
        self._router_task: asyncio.Task[None] | None = None
        self._routed_upto = 0
        self.crash_point: Callable[[str], None] | None = None
        self._consumers: set[str] = set()
        self._leases = LeaseKeeper(ack_wait)
        self._states: dict[int, DeliveryState] = {}  # of the deliveries this node holds
        self._elected: dict[str, float] = {}  # see DeliveryOps._on_election
        self._offered: dict[str, int] = {}  # see DeliveryOps._offered_again
        self._whole_prune_due = 0.0  # a node's first pass reads every state (`prune`)
        self._elections: Subscription | None = None
        self._tally: Tally | None = None
        self._tally_lock = asyncio.Lock()
        # Appends publish events, then deliveries, one group at a time per node
        # (_append.py), so each subscription's deliveries are in the order of
        # their events.
        self._appends: list[QueuedAppend] = []
        self._appender: asyncio.Task[None] | None = None
        self._answering: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        if self._client is not None:
            self._nc = self._client
        else:
            self._nc = await nats.connect(servers=self.servers, name=f"veba-{self.names.prefix}")
        self._js = self._nc.jetstream()
        try:
            await self._make_streams()
            await self._start_router()
            self._elections = await self._nc.subscribe(
                f"{ELECTED}.{self.names.deliveries}.*", cb=self._on_election
            )
        except BaseException:  # refused (replicas on one server, a stream in the way)
            if self._client is None:
                await self._nc.close()
            self._nc = self._js = None
            raise
        self._leases.start()

    async def _make_streams(self) -> None:
        """Make what is missing, and bring what is there to this config."""
        names = self.names
        await self._stream(
            names.events,
            # The unique index on (source, id): see the module's docstring.
            max_msgs_per_subject=1,
            discard=DiscardPolicy.NEW,
            discard_new_per_subject=True,
            duplicate_window=self.duplicate_window,
        )
        await self._stream(
            names.deliveries,
            retention=RetentionPolicy.WORK_QUEUE,
            # Longer than the events': a repeat of an event the events stream
            # answers as a duplicate finds its deliveries' ids still there, and
            # so does the router's repair of an event whose mark is only late.
            duplicate_window=self.duplicate_window + 3 * self.repair_after,
        )
        await self._stream(names.routed)
        await self._stream(names.dlq)
        await self._stream(names.states, max_msgs_per_subject=1)
        # A tally that has not read a notice before it expires reads everything again.
        await self._stream(names.gone, max_age=GONE_KEPT)
        self._kv = await patiently(
            lambda: self._jetstream().create_key_value(
                # Direct gets are answered by any replica: with several, read from the leader.
                bucket=names.checkpoints,
                history=1,
                replicas=self.replicas,
                direct=self.replicas == 1,
            ),
            f"bucket {names.checkpoints}",
        )

    async def _stream(self, name: str, **options: Any) -> None:
        config = StreamConfig(
            name=name,
            subjects=[self.names.all(name)],
            num_replicas=self.replicas,
            storage=StorageType.FILE,
            allow_direct=True,
            **options,
        )
        js = self._jetstream()

        async def make() -> None:
            try:
                await js.add_stream(config)
            except BadRequestError:  # there, with another config: this one is the current one
                await js.update_stream(config)

        await patiently(make, f"stream {name}")

    async def close(self) -> None:
        await self._stop_appending()
        await self._stop_router()
        await self._leases.stop()
        self._states.clear()
        if self._elections is not None:
            with contextlib.suppress(Exception):  # the connection may be gone
                await self._elections.unsubscribe()
            self._elections = None
        if self._nc is not None:
            if self._client is None and not self._nc.is_closed:
                await self._nc.drain()
            self._nc = None
            self._js = None

    async def get_checkpoint(self, name: str) -> str | None:
        try:
            entry = await self._checkpoint_kv().get(token(name))
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return str(json.loads(entry.value)["value"])

    async def prune(self, received_before: float) -> int:
        """Events received before the cutoff whose deliveries are all delivered go,
        with their delivery states; one small request each (100 in flight at
        once), so nothing waits long behind them. What must stay is read first
        (the open deliveries' and dead letters' events): the cutoff is taken to
        be in the past, where no append, replay or redrive adds a delivery
        meanwhile.

        A pass reads the events up to the cutoff (and `nodes_apart` past it),
        and the states stored from the oldest event it deletes to `late_states`
        after the newest: not the whole log every minute. A state stored later
        than that (a delivery retried for long) is left to the pass that reads
        every state, a node's first and then one every `whole_prune_every`."""
        names, nc, js = self.names, self._conn(), self._jetstream()
        keep: set[int] = set()
        async for msg in self._walk(names.deliveries, names.all(names.deliveries)):
            keep.add(int((msg.headers or {})["Veba-Seq"]))
        async with contextlib.aclosing(scan(js, nc, names.dlq, headers_only=True)) as dead:
            async for msg in dead:
                keep.add(int((msg.headers or {})["Veba-Seq"]))
        # Every event up to `judged` that is not in `kept` is gone (deleted now or
        # before), and so are its states.
        judged = (await js.stream_info(names.events)).state.last_seq
        kept: set[int] = set()
        oldest = newest = None
        going: list[int] = []
        async with contextlib.aclosing(self._events(headers_only=True)) as found:
            async for msg in found:
                seq, at = seq_of(msg), received(msg)
                if at >= received_before + self.nodes_apart:
                    judged = seq - 1  # the events after it are later still
                    break
                judged = max(judged, seq)
                if at >= received_before or seq in keep:
                    kept.add(seq)
                    continue
                oldest = at if oldest is None else min(oldest, at)
                newest = at if newest is None else max(newest, at)
                going.append(seq)
        # Another node's pass may delete one first: then not counted here.
        pruned = sum(await delete_many(nc, names.events, going))
        since = stored_before = None  # the whole pass: every state
        if time.monotonic() >= self._whole_prune_due:
            self._whole_prune_due = time.monotonic() + self.whole_prune_every
        elif oldest is None or newest is None:
            return pruned
        else:
            since, stored_before = oldest - self.nodes_apart, newest + self.late_states
        await self._delete_states(
            lambda state: state.seq <= judged and state.seq not in kept,
            since=since,
            stored_before=stored_before,
        )
        return pruned
