"""The JetStream log against the NATS server on 127.0.0.1:4222: the conformance
suite, then what only a shared log has (nodes, names, ack waits). Each test has
a NAME of its own whose streams, consumers and buckets are deleted afterwards."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.eventlog.conformance import EventLogConformance, failed, make_event, ok, to
from tests.jetstream_buckets import delete_everything_named
from tests.natscluster import (  # noqa: F401
    NatsCluster,
    module_cluster_fixture,
    nats_cluster_fixture,
)
from veba.eventlog import LogUnavailable
from veba.eventlog.base import Delivery
from veba.eventlog.jetstream import JetStreamLog, _deliveries
from veba.eventlog.jetstream._deliveries import ELECTED
from veba.eventlog.jetstream._router import mark_body, marked_seqs
from veba.eventlog.jetstream._state import DeliveryState
from veba.eventlog.jetstream._wire import JetStreamError, NoAnswer
from veba.events import Event, InvalidEvent

SERVERS = ["nats://127.0.0.1:4222"]
OpenLog = Callable[..., Awaitable[JetStreamLog]]


@pytest.fixture
async def name() -> AsyncIterator[str]:
    name = f"t{uuid.uuid4().hex[:12]}"
    yield name
    await delete_everything_named(name)


@pytest.fixture
async def open_log(name: str) -> AsyncIterator[OpenLog]:
    """Opens logs (nodes) under the test's NAME unless told another; closes them all."""
    opened: list[JetStreamLog] = []

    async def open_(**options: Any) -> JetStreamLog:
        log = JetStreamLog(SERVERS, **{"name": name, **options})
        opened.append(log)
        await log.open()
        return log

    yield open_
    for log in opened:
        await log.close()


@pytest.fixture
async def log(open_log: OpenLog) -> JetStreamLog:
    return await open_log()


class TestJetStreamLog(EventLogConformance):
    """The whole conformance suite. (`include_delayed` is SQLite's alone,
    tests/eventlog/test_sqlite.py: a retried delivery waits out its delay on the
    server, nak with delay, where no lease reaches it before it is due.)"""


class SettledJetStreamLog(JetStreamLog):
    """A JetStreamLog whose every lease first waits (up to 5 s) for the three
    replicas of the deliveries stream to hold all it has. A write is acked once
    two of three have it; a consumer whose leader sits on the third offers the
    new message only once that one has it too, a moment later. The appliance
    polls again and takes it then; the conformance suite leases once, right
    after the write, and asserts what it gets."""

    async def lease(
        self, subscription: str, limit: int, ttl: float, *, include_delayed: bool = False
    ) -> list[Delivery]:
        js = self._jetstream()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            cluster = (await js.stream_info(self.names.deliveries)).cluster
            replicas = (cluster.replicas or []) if cluster else []
            if all(peer.current and not peer.lag for peer in replicas):
                break
            await asyncio.sleep(0.01)
        return await super().lease(subscription, limit, ttl, include_delayed=include_delayed)


class TestJetStreamLogOnACluster(EventLogConformance):
    """The whole suite again on a 3-server cluster, every stream and bucket
    kept on all three (`replicas=3`); each lease waits for the replicas to
    agree first (`SettledJetStreamLog`)."""

    @pytest.fixture
    async def log(self, cluster: NatsCluster) -> AsyncIterator[JetStreamLog]:
        log = SettledJetStreamLog(cluster.urls, name=f"t{uuid.uuid4().hex[:12]}", replicas=3)
        await log.open()
        yield log
        await log.close()


async def lease_within(
    log: JetStreamLog, subscription: str, seconds: float, ttl: float = 30
) -> list[Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if got := await log.lease(subscription, 10, ttl):
            return got
        await asyncio.sleep(0.05)
    return []


async def test_an_append_that_leases_takes_the_oldest_open_deliveries(log: JetStreamLog) -> None:
    # What the protocol would say for a shared log: as `lease` would, in log order.
    first = await log.append([make_event(1), make_event(2)], route=to("f"), lease={"f": (1, 30)})
    assert [(d.event.data["Key"], d.attempt) for d in first.leased] == [(1, 1)]
    again = await log.append([make_event(3)], route=to("f"), lease={"f": (1, 30)})
    assert [d.event.data["Key"] for d in again.leased] == [2]  # the backlog first
    assert [d.event.data["Key"] for d in await log.lease("f", 10, 30)] == [3]


async def test_after_a_consumer_leader_election_a_first_delivery_already_made_is_not_made_again(
    log: JetStreamLog,
) -> None:
    # A consumer's new leader that lost its old one's record of a delivery offers
    # it again as a first delivery, though a node made it and recorded it made
    # (likely the failover test's duplicates under load). Here the loss is
    # simulated: the state says delivered, the consumer never gave it out, and
    # the election's advisory is published as the server publishes it.
    await log.append([make_event(1)], route=to("f", "g"))
    for info in await log.deliveries():
        msg = await log._get(log.names.deliveries, {"seq": info.id})
        assert msg is not None and msg.headers is not None
        made = DeliveryState.pending_from(info.id, info.subscription, msg.headers)
        made.status = "delivered"
        await log._save([made])
    consumer = log.names.consumer("f")
    await log._conn().publish(f"{ELECTED}.{log.names.deliveries}.{consumer}", b"{}")
    deadline = time.monotonic() + 10
    while consumer not in log._elected:
        assert time.monotonic() < deadline, "the election was not heard"
        await asyncio.sleep(0.01)

    assert await log.lease("f", 10, 30) == []  # made already: settled, not made again
    # Without an election a first delivery's state is not read (a read per
    # delivery would halve the rate): the other consumer offers it.
    assert [d.event.data["Key"] for d in await log.lease("g", 10, 30)] == [1]


async def test_a_consumer_that_lost_its_record_of_deliveries_does_not_have_them_made_again(
    log: JetStreamLog,
) -> None:
    # The failover test's duplicates, without waiting for an election's advisory:
    # a consumer made again from nothing (as a new leader that lost its old one's
    # record of some deliveries) offers them again as first deliveries, under
    # delivery seqs this node was offered before. One made and recorded (its ack
    # lost with the old consumer) is settled, not made; one still in flight here
    # is not handed out twice, and its ack settles it on the new consumer.
    await log.append([make_event(1), make_event(2)], route=to("f"))
    made, in_flight = await log.lease("f", 10, 30)
    consumer = log.names.consumer("f")
    await log._jetstream().delete_consumer(log.names.deliveries, consumer)
    with pytest.raises(LogUnavailable):  # recorded delivered; no consumer takes its ack
        await log.ack(made.id, ok(1))

    assert await log.lease("f", 10, 30) == []  # the log makes its consumer again
    assert log._elected == {}  # no advisory: the offers alone told
    await log.ack(in_flight.id, ok(1))
    assert await log.counts() == {"f": {"delivered": 2}}
    deadline = time.monotonic() + 10
    while (info := await log._jetstream().consumer_info(log.names.deliveries, consumer)) and (
        info.num_ack_pending or info.num_pending
    ):
        assert time.monotonic() < deadline, ("left on the new consumer", info)
        await asyncio.sleep(0.05)


def count_reads(log: JetStreamLog, *methods: str, fail_after: int | None = None) -> Counter[str]:
    """From now on, what each of the log's reading generators `methods` yields,
    counted by name; with `fail_after`, a read fails (no answer) once that many
    were yielded. Called again, it counts afresh on the log's own methods."""
    read = Counter[str]()
    for name in methods:
        every = getattr(type(log), name).__get__(log)

        def counting(*args: Any, _every: Any = every, _name: str = name, **kw: Any) -> Any:
            async def counted() -> AsyncIterator[Any]:
                async for item in _every(*args, **kw):
                    if read[_name] == fail_after:
                        raise NoAnswer(f"{_name}: no answer")
                    read[_name] += 1
                    yield item

            return counted()

        setattr(log, name, counting)
    return read


async def test_dead_letters_and_an_events_deliveries_are_listed_without_reading_every_state(
    log: JetStreamLog,
) -> None:
    # A busy log holds millions of delivery states to its few dead letters:
    # `veba dlq list` and an event's story read what they show, not them all.
    log.clocks_apart = 0.0  # one server, one clock: no margin needed
    read = count_reads(log, "_all_states")
    await log.append([make_event(k) for k in range(300)], route=to("f"))
    await log.ack_many([(d.id, ok(1)) for d in await log.lease("f", 300, 30)])
    late = make_event(1000)
    await log.append([late], route=to("f"))
    (dead,) = await log.lease("f", 10, 30)
    await log.dead(dead.id, failed(1, 400))

    assert [d.id for d in await log.deliveries(status="dead")] == [dead.id]
    assert read["_all_states"] == 0
    assert [(d.id, d.status) for d in await log.deliveries(event_id=late.id)] == [(dead.id, "dead")]
    assert read["_all_states"] <= 2  # its leased and its dead state
    assert len(await log.deliveries(limit=1000)) == 301  # everything: every state read
    assert read["_all_states"] > 300


async def test_retention_reads_the_events_and_states_it_deletes_not_the_whole_log(
    log: JetStreamLog,
) -> None:
    # Retention runs every minute: a pass over a week of a busy log each time
    # would never end. A pass reads the events up to its cutoff and the states
    # stored from its oldest deleted event to `late_states` after its newest.
    log.nodes_apart = 0.0  # one machine, one clock
    read = count_reads(log, "_events", "_all_states")

    await log.append([make_event(k) for k in range(100)], route=to("f"))
    await log.ack_many([(d.id, ok(1)) for d in await log.lease("f", 100, 30)])
    assert await log.prune(time.time() - 3600) == 0  # a node's first pass reads every state
    assert read["_all_states"] == 100
    # The old deliveries' states were stored by `acked`; the new ones' are stored
    # after `acked + 0.5`; the pass reads those stored up to `acked + 0.25`.
    acked = time.time()
    log.late_states = acked - max(r.received for r in await log.events()) + 0.25
    while time.time() < acked + 0.5:
        await asyncio.sleep(0.01)
    cutoff = time.time()
    await log.append([make_event(k) for k in range(100, 400)], route=to("f"))
    await log.ack_many([(d.id, ok(1)) for d in await log.lease("f", 300, 30)])

    read.clear()
    assert await log.prune(cutoff) == 100
    assert read == {"_events": 101, "_all_states": 100}  # the 100 old, and the first new event
    assert len(await log.deliveries(limit=1000)) == 300  # the old states are gone

    # A state stored after that (here written again by hand, as a delivery
    # retried for long would) outlives the pass; the day's whole pass takes it.
    late = DeliveryState(10**6, 1, "f", "late", "vc1", "VmPoweredOnEvent", status="delivered")
    await log._save([late])
    assert await log.prune(time.time() - 3600) == 0
    assert await log.delivery(late.id) is not None
    log._whole_prune_due = 0.0  # a day on
    assert await log.prune(time.time() - 3600) == 0
    assert await log.delivery(late.id) is None


async def test_counting_goes_on_from_where_a_failed_read_of_the_states_stopped(
    log: JetStreamLog,
) -> None:
    # A node's first counts() reads every state; on a large log and a busy
    # server a pull may go unanswered part way. The next call goes on from there
    # rather than from the start, so the calls get there however large the log.
    await log.append([make_event(k) for k in range(300)], route=to("f"))
    await log.ack_many([(d.id, ok(1)) for d in await log.lease("f", 300, 30)])
    read = count_reads(log, "_all_states", fail_after=100)
    with pytest.raises(LogUnavailable):
        await log.counts()
    assert read["_all_states"] == 100
    read = count_reads(log, "_all_states")
    assert await log.counts() == {"f": {"delivered": 300}}
    assert read["_all_states"] == 200  # the other 200 only


async def test_every_node_hears_of_a_consumer_leader_election_on_the_cluster(
    cluster: NatsCluster,
) -> None:
    name = f"t{uuid.uuid4().hex[:12]}"
    nodes = [JetStreamLog(cluster.urls, name=name, replicas=3) for _ in range(2)]
    for node in nodes:
        await node.open()
    try:
        a = nodes[0]
        await a.append([make_event(1)], route=to("f"))
        await a.lease("f", 1, 30)  # the consumer exists, on all three servers
        consumer = a.names.consumer("f")
        await a._conn().request(
            f"$JS.API.CONSUMER.LEADER.STEPDOWN.{a.names.deliveries}.{consumer}", b"", timeout=10
        )
        deadline = time.monotonic() + 30
        while not all(consumer in node._elected for node in nodes):
            assert time.monotonic() < deadline, "a node did not hear of the election"
            await asyncio.sleep(0.05)
    finally:
        for node in nodes:
            await node.close()


async def test_nodes_sharing_a_name_share_each_delivery_once_and_see_its_state(
    open_log: OpenLog,
) -> None:
    a, b = await open_log(), await open_log()
    await a.append([make_event(k) for k in range(10)], route=to("f"))
    on_a = await a.lease("f", 4, 30)
    on_b = await b.lease("f", 10, 30)
    assert len(on_a) == 4 and len(on_b) == 6
    assert {d.id for d in on_a}.isdisjoint({d.id for d in on_b})
    await b.ack(on_b[0].id, ok(1))
    await b.dead(on_b[1].id, failed(1, 400))
    info = await a.delivery(on_b[0].id)
    assert info is not None and info.status == "delivered"
    assert (await a.counts())["f"] == {"leased": 8, "delivered": 1, "dead": 1}
    assert await a.redrive(subscription="f") == 1  # a dead letter of b's, from a
    assert [d.id for d in await a.lease("f", 10, 30)] == [on_b[1].id]


async def test_appliances_with_other_names_do_not_see_each_others_log(
    open_log: OpenLog, name: str
) -> None:
    ours = await open_log()
    other_name = f"{name}x"
    try:
        theirs = await open_log(name=other_name)
        await ours.append([make_event(1)], route=to("f"), checkpoint=("vc1", "7"))
        assert await theirs.events() == []
        assert await theirs.lease("f", 10, 30) == []
        assert await theirs.get_checkpoint("vc1") is None
        assert (await theirs.append([make_event(1)], route=to("f"))).accepted == 1
    finally:
        await delete_everything_named(other_name)


async def test_dedup_outlasts_the_duplicate_window_and_ends_with_retention(
    open_log: OpenLog,
) -> None:
    log = await open_log(duplicate_window=0.2)
    started = time.monotonic()
    assert (await log.append([make_event(1)], route=to())).accepted == 1
    while time.monotonic() < started + 0.5:  # past the window: the stream's own index holds
        await asyncio.sleep(0.05)
    again = await log.append([make_event(1), make_event(2)], route=to())
    assert (again.accepted, again.duplicates) == (1, 1)
    assert await log.prune(time.time() + 1) == 2
    assert (await log.append([make_event(1)], route=to())).accepted == 1


async def test_a_node_that_dies_holding_a_lease_gives_it_back_after_the_ack_wait(
    open_log: OpenLog,
) -> None:
    a, b = await open_log(ack_wait=1.0), await open_log(ack_wait=1.0)
    await a.append([make_event(1)], route=to("f"))
    (held,) = await a.lease("f", 1, ttl=3600)
    await a._conn().close()  # no nak, no more in_progress: as if the node died
    await a.close()
    again = await lease_within(b, "f", 15)
    assert [(d.id, d.attempt) for d in again] == [(held.id, 2)]


async def test_a_lease_longer_than_the_ack_wait_is_kept_by_its_node(open_log: OpenLog) -> None:
    a, b = await open_log(ack_wait=0.5), await open_log(ack_wait=0.5)
    await a.append([make_event(1)], route=to("f"))
    (held,) = await a.lease("f", 1, ttl=60)
    assert await lease_within(b, "f", 2.0) == []  # four ack waits: still a's
    await a.ack(held.id, ok(1))
    info = await b.delivery(held.id)
    assert info is not None and (info.status, info.attempts) == ("delivered", 1)


async def test_an_ack_whose_state_is_not_written_leaves_the_lease_to_lapse(
    open_log: OpenLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As while the cluster elects a stream leader: the state's publish is refused.
    # Had the message been acked anyway, the delivery would stay "leased" for
    # ever, never made again; the dispatcher counts on it coming round.
    a, b = await open_log(ack_wait=1.0), await open_log(ack_wait=1.0)
    await a.append([make_event(1), make_event(2)], route=to("f"))
    first, second = await a.lease("f", 2, ttl=2.0)
    save = a._save

    async def refused(*_: Any) -> None:
        raise JetStreamError("publish: status 503 (no stream for the subject?)")

    monkeypatch.setattr(a, "_save", refused)
    for delivery in (first, second):
        with pytest.raises(JetStreamError):
            await a.ack(delivery.id, ok(1))
    monkeypatch.setattr(a, "_save", save)
    await a.ack(first.id, ok(1))  # made again, once the stream takes writes: settled
    (again,) = await lease_within(b, "f", 15)  # the other lapsed: at least once
    assert (again.id, again.attempt) == (second.id, 2)
    await b.ack(again.id, ok(2))
    assert await b.counts() == {"f": {"delivered": 2}}


async def test_an_event_over_the_server_s_max_payload_is_refused_alone(
    open_log: OpenLog,
) -> None:
    # Appends are written in groups: one too large for a NATS message must not
    # take the appends beside it down with it.
    log = await open_log()
    blob = "x" * log._conn().max_payload
    huge = Event.from_json(
        json.dumps({"specversion": "1.0", "id": "big", "source": "big", "type": "t", "data": blob})
    )
    results = await asyncio.gather(
        log.append([huge], route=to("f")),
        log.append([make_event(1)], route=to("f")),
        return_exceptions=True,
    )
    assert isinstance(results[0], InvalidEvent) and "max_payload" in str(results[0])
    assert not isinstance(results[1], BaseException) and results[1].accepted == 1
    assert [r.event.id for r in await log.events()] == [make_event(1).id]


async def test_a_lease_whose_state_is_lost_still_delivers_and_is_recorded_at_ack(
    open_log: OpenLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A first lease's state is published unconfirmed (the consumer counts its
    # attempt): lost, as while the states stream elects a leader, the delivery
    # shows pending until its ack records it delivered.
    a = await open_log()
    await a.append([make_event(1), make_event(2)], route=to("f"))

    async def lost(*_: Any) -> None:
        return None

    monkeypatch.setattr(a, "_save_unconfirmed", lost)
    held = await a.lease("f", 2, ttl=3600)
    assert len(held) == 2
    assert (await a.counts())["f"] == {"pending": 2}
    for delivery in held:
        await a.ack(delivery.id, ok(1))
    assert (await a.counts())["f"] == {"delivered": 2}


async def test_a_delivery_offered_again_after_its_recorded_ack_is_not_made_twice(
    open_log: OpenLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The state says delivered, but the message's ack did not stick (the
    # consumer's leader stepped down before it had it): the server offers it
    # again after the ack wait, and the node that gets it acks it again.
    a, b = await open_log(ack_wait=1.0), await open_log(ack_wait=1.0)
    await a.append([make_event(1)], route=to("f"))
    (held,) = await a.lease("f", 1, ttl=3600)
    settle_many = _deliveries.settle_many
    lost = []

    async def ack_lost(msgs: Any, kind: bytes, **options: Any) -> None:
        if kind == _deliveries.ACK:
            lost.extend(msgs)
        else:
            await settle_many(msgs, kind, **options)

    monkeypatch.setattr(_deliveries, "settle_many", ack_lost)
    await a.ack(held.id, ok(1))
    monkeypatch.setattr(_deliveries, "settle_many", settle_many)
    assert len(lost) == 1
    assert await lease_within(b, "f", 4.0) == []  # offered after 1 s; acked, not made
    info = await b.delivery(held.id)
    assert info is not None and (info.status, info.attempts) == ("delivered", 1)


async def test_two_nodes_pruning_at_once_both_finish_and_prune_each_event_once(
    open_log: OpenLog,
) -> None:
    # Every node runs retention; two passes over the same old events must not
    # fail on a message the other deleted first ("no message found").
    a, b = await open_log(), await open_log()
    await a.append([make_event(k) for k in range(1, 201)], route=to("f"))
    leased = await a.lease("f", 200, 30)
    await a.ack_many([(d.id, ok(1)) for d in leased])
    pruned = await asyncio.gather(a.prune(time.time() + 1), b.prune(time.time() + 1))
    assert sum(pruned) == 200  # each event counted by the node that deleted it
    assert await a.events() == [] and await b.events() == []
    assert await b.deliveries(subscription="f") == []


async def test_two_nodes_redriving_the_same_dead_letters_at_once_both_finish(
    open_log: OpenLog,
) -> None:
    a, b = await open_log(), await open_log()
    await a.append([make_event(k) for k in range(1, 51)], route=to("f"))
    for delivery in await a.lease("f", 50, 30):
        await a.dead(delivery.id, failed(1, 400))
    await asyncio.gather(a.redrive(subscription="f"), b.redrive(subscription="f"))
    assert await a.deliveries(subscription="f", status="dead") == []
    offered = await b.lease("f", 200, 30)  # at least once: a race may offer one twice
    assert {d.event.data["Key"] for d in offered} == set(range(1, 51))


async def test_each_node_s_counts_follow_every_change_without_reading_everything_again(
    open_log: OpenLog,
) -> None:
    # Node B keeps a tally as A and B change things; a fresh node C reads the
    # whole log once: after each step all three agree, and B read only what was new.
    a, b = await open_log(), await open_log()
    await a.append([make_event(k) for k in range(1, 301)], route=to("f", "g"))
    assert (await b.counts())["f"] == {"pending": 300}

    async def agree() -> dict[str, dict[str, int]]:
        fresh = await open_log()
        counts = await fresh.counts()
        await fresh.close()
        assert await a.counts() == counts and await b.counts() == counts
        return counts

    leased = await b.lease("f", 200, 30)
    await b.ack_many([(d.id, ok(1)) for d in leased[:120]])
    for d in leased[120:140]:
        await b.dead(d.id, failed(1, 400))
    for d in leased[140:150]:
        await b.retry(d.id, failed(1), time.time() + 3600)
    assert (await agree())["f"] == {"delivered": 120, "dead": 20, "pending": 110, "leased": 50}
    read_before = b._tally.states_seq if b._tally else 0
    await a.redrive(subscription="f")
    assert (await agree())["f"] == {"delivered": 120, "pending": 130, "leased": 50}
    assert b._tally is not None and b._tally.states_seq > read_before  # read on from there
    assert await a.forget("g") == 300
    counts = await agree()
    assert "g" not in counts
    # Retention on A deletes the delivered events' states; B hears it from A's notice.
    assert await a.prune(time.time() + 1) == 120
    assert (await agree())["f"] == {"pending": 130, "leased": 50}


async def test_a_node_that_missed_notices_of_deleted_states_reads_everything_again(
    open_log: OpenLog, name: str
) -> None:
    a, b = await open_log(), await open_log()
    await a.append([make_event(k) for k in range(1, 11)], route=to("f"))
    await a.ack_many([(d.id, ok(1)) for d in await a.lease("f", 10, 30)])
    assert (await b.counts())["f"] == {"delivered": 10}
    assert await a.prune(time.time() + 1) == 10
    # The notices gone before B read them (as after a day): B cannot tell what
    # was deleted, so it reads the states anew rather than count what is gone.
    await a._jetstream().purge_stream(f"{name}_gone")
    assert await b.counts() == {}


async def test_names_that_are_no_subject_tokens_round_trip(log: JetStreamLog) -> None:
    sub, source = "fn with.dots*>", "https://vc.example.com/sdk"
    event = make_event(1, subject="a.b c", source=source)
    await log.append([event], route=to(sub), checkpoint=("vc:a.b", "9"))
    assert await log.get_checkpoint("vc:a.b") == "9"
    assert [c.name for c in await log.checkpoints()] == ["vc:a.b"]
    assert set(await log.backlog()) == {sub}
    (d,) = await log.lease(sub, 10, 30)
    assert d.event.to_dict() == event.to_dict()
    await log.dead(d.id, failed(1))
    assert (await log.counts()) == {sub: {"dead": 1}}
    assert await log.redrive(subscription=sub) == 1
    info = await log.delivery(d.id)
    assert info is not None and (info.subject, info.event_source) == ("a.b c", source)
    record = await log.event(event.id)
    assert record is not None and record.event.subject == "a.b c"
    assert [r.seq for r in await log.events(subject="a.b c")] == [record.seq]


async def test_a_subscription_forgotten_on_one_node_leases_again_on_another(
    open_log: OpenLog,
) -> None:
    a, b = await open_log(), await open_log()
    await a.append([make_event(1)], route=to("f"))
    assert len(await b.lease("f", 10, 30)) == 1  # b has f's consumer
    assert await a.forget("f") == 1
    await a.append([make_event(2)], route=to("f"))
    assert [d.event.data["Key"] for d in await b.lease("f", 10, 30)] == [2]


async def test_events_newest_first_reach_back_past_one_window(log: JetStreamLog) -> None:
    await log.append([make_event(k) for k in range(300)], route=to())
    await log.append([make_event(1000, subject="Rare")], route=to())
    newest = await log.events(newest_first=True, limit=150)
    assert [r.event.data["Key"] for r in newest] == [1000, *range(299, 150, -1)]
    rare = await log.events(newest_first=True, subject="VmPoweredOnEvent", limit=1)
    assert [r.event.data["Key"] for r in rare] == [299]


async def test_a_node_that_closes_gives_what_it_held_to_the_others_at_once(
    open_log: OpenLog,
) -> None:
    a, b = await open_log(), await open_log()  # ack wait 30 s: not what brings it back
    await a.append([make_event(1)], route=to("f"))
    (held,) = await a.lease("f", 1, ttl=3600)
    await a.close()
    again = await lease_within(b, "f", 10)
    assert [(d.id, d.attempt) for d in again] == [(held.id, 2)]  # the interrupted one counts


# A node that appends events routed to f and g, and is SIGKILLed at a point of
# its append: "events" (written, their deliveries not) or "deliveries" (those
# written too, not the mark that they are, nor the checkpoint).
NODE = """
import asyncio, os, signal, sys
from tests.eventlog.conformance import make_event, to
from veba.eventlog.jetstream import JetStreamLog

async def main(name, point, count):
    log = JetStreamLog(["nats://127.0.0.1:4222"], name=name)
    await log.open()
    def die(at):
        if at == point:
            os.kill(os.getpid(), signal.SIGKILL)
    log.crash_point = die
    events = [make_event(k) for k in range(count)]
    await log.append(events, route=to("f", "g"), checkpoint=("vc1", "1"))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def node_killed_at(name: str, point: str, count: int) -> None:
    root = Path(__file__).resolve().parents[2]
    args = (name, point, str(count))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", NODE, *args, cwd=root)
    try:
        assert await asyncio.wait_for(proc.wait(), 60) == -signal.SIGKILL
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def routed_upto(log: JetStreamLog) -> int:
    """The router's watermark: every event up to this seq has its deliveries."""
    entry = await log._router_bucket().get("watermark")
    return int(json.loads(entry.value or b"{}")["events"])


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.05)


async def open_counts(log: JetStreamLog) -> dict[str, int]:
    return {sub: b.open for sub, b in (await log.backlog()).items()}


async def leased_keys(log: JetStreamLog, subscription: str) -> list[int]:
    return [d.event.data["Key"] for d in await log.lease(subscription, 10_000, 60)]


def test_marks_are_runs_of_seqs() -> None:
    body = mark_body([9, 3, 4, 5, 7, 8, 12])
    assert body == b"3-5,7-9,12"
    assert marked_seqs(body) == [3, 4, 5, 7, 8, 9, 12]
    assert marked_seqs(mark_body([])) == []


async def test_a_retry_after_a_node_died_between_the_writes_makes_each_delivery_once(
    open_log: OpenLog, name: str
) -> None:
    await node_killed_at(name, "events", 5)
    b = await open_log()
    assert len(await b.events()) == 5 and await b.backlog() == {}
    events = [make_event(k) for k in range(5)]
    # The sender got no answer and sends again (to another node). Its events are
    # duplicates, and their deliveries are the ones recorded when they were
    # logged: not h's, a subscription made since.
    again = await b.append(events, route=to("f", "g", "h"), lease={"f": (2, 30)})
    assert (again.accepted, again.duplicates) == (0, 5)
    assert again.deliveries == {"f": 5, "g": 5}
    assert [d.event.data["Key"] for d in again.leased] == [0, 1]
    assert await leased_keys(b, "f") == [2, 3, 4]
    assert await leased_keys(b, "g") == [0, 1, 2, 3, 4]
    assert await leased_keys(b, "h") == []
    # Once more: nothing new. The router has nothing to make either.
    assert (await b.append(events, route=to("f", "g"))).deliveries == {}
    assert await b.repair() == 0
    assert await b.counts() == {"f": {"leased": 5}, "g": {"leased": 5}}


async def test_another_node_makes_the_deliveries_of_a_node_that_died_between_the_writes(
    open_log: OpenLog, name: str
) -> None:
    # Live all along, no retry comes; both routers at it, one at a time or at once.
    b, c = await open_log(repair_after=0.5), await open_log(repair_after=0.5)
    await node_killed_at(name, "events", 5)
    await until(lambda: _equals(open_counts(b), {"f": 5, "g": 5}))
    await until(lambda: _at_least(routed_upto(b), 5))
    assert await b.repair() == 0 and await c.repair() == 0
    assert await leased_keys(b, "f") == [0, 1, 2, 3, 4]
    assert await leased_keys(b, "g") == [0, 1, 2, 3, 4]
    assert await open_counts(b) == {"f": 5, "g": 5}  # those, and no more


async def test_deliveries_made_but_not_marked_are_not_made_twice(
    open_log: OpenLog, name: str
) -> None:
    b = await open_log(repair_after=0.3)
    await node_killed_at(name, "deliveries", 5)
    assert await open_counts(b) == {"f": 5, "g": 5}
    # The router finds the events unmarked and makes their deliveries again:
    # every one is dropped by the deliveries stream as made already.
    await until(lambda: _at_least(routed_upto(b), 5))
    assert await open_counts(b) == {"f": 5, "g": 5}
    # The checkpoint was not written: the provider sends the events again, and
    # dedup drops them.
    assert await b.get_checkpoint("vc1") is None
    again = await b.append(
        [make_event(k) for k in range(5)], route=to("f", "g"), checkpoint=("vc1", "1")
    )
    assert (again.accepted, again.deliveries) == (0, {})
    assert await b.get_checkpoint("vc1") == "1"
    assert await leased_keys(b, "f") == [0, 1, 2, 3, 4]


async def test_the_router_leaves_an_append_under_way_alone(open_log: OpenLog, name: str) -> None:
    b = await open_log(repair_after=3600)  # every append is still under way
    await node_killed_at(name, "events", 3)
    assert await b.repair() == 0
    assert await routed_upto(b) == 0 and await b.backlog() == {}
    await b.append([make_event(10)], route=to("f"))  # marked: past it, the watermark waits
    assert await b.repair() == 0 and await routed_upto(b) == 0


async def test_a_retry_past_the_duplicate_window_gets_its_deliveries_from_the_router(
    open_log: OpenLog, name: str
) -> None:
    await node_killed_at(name, "events", 3)
    b = await open_log(duplicate_window=0.2, repair_after=0.5)
    assert await b.backlog() == {}
    started = time.monotonic()
    while time.monotonic() < started + 0.5:  # past the window of the node that died
        await asyncio.sleep(0.05)
    again = await b.append([make_event(k) for k in range(3)], route=to("f", "g"))
    assert (again.accepted, again.duplicates, again.deliveries) == (0, 3, {})
    await until(lambda: _equals(open_counts(b), {"f": 3, "g": 3}))
    await until(lambda: _at_least(routed_upto(b), 3))
    assert await leased_keys(b, "f") == [0, 1, 2]
    assert await open_counts(b) == {"f": 3, "g": 3}


async def test_routers_racing_appends_under_way_make_no_delivery_twice(
    open_log: OpenLog,
) -> None:
    # Routers so eager that they repair appends still writing: the deliveries
    # stream drops what the appends and the routers both make.
    a, b = await open_log(repair_after=0.01), await open_log(repair_after=0.01)

    async def appends(node: JetStreamLog, keys: range) -> None:
        for k in keys:
            await node.append([make_event(k)], route=to("f"))
            await node.repair()

    await asyncio.gather(appends(a, range(0, 150)), appends(b, range(150, 300)))
    await until(lambda: _at_least(routed_upto(a), 300))
    assert sorted(await leased_keys(a, "f")) == list(range(300))
    assert await open_counts(a) == {"f": 300}


class Crash(Exception):
    pass


async def test_a_node_reopened_after_dying_between_the_writes_makes_the_deliveries(
    open_log: OpenLog,
) -> None:
    a = await open_log()

    def crash(point: str) -> None:
        if point == "events":
            raise Crash

    a.crash_point = crash
    with pytest.raises(Crash):  # more events than one publish takes
        await a.append([make_event(k) for k in range(1500)], route=to("f"))
    await a._conn().close()  # as if it died there
    await a.close()
    again = await open_log(repair_after=0.3)
    await until(lambda: _equals(open_counts(again), {"f": 1500}))
    assert await leased_keys(again, "f") == list(range(1500))


async def _equals(value: Awaitable[Any], expected: Any) -> bool:
    return bool(await value == expected)


async def _at_least(value: Awaitable[int], expected: int) -> bool:
    return await value >= expected


async def test_a_cluster_without_a_quorum_is_log_unavailable_until_it_has_one_again(
    nats_cluster: NatsCluster,
) -> None:
    # What the webhook answers 503 to (send again) and a dispatcher backs off from.
    log = JetStreamLog(nats_cluster.urls, name="quorum", replicas=3)
    await log.open()
    try:
        await log.append([make_event(1)], route=to("f"))
        nats_cluster.stop(1, kill=True)
        nats_cluster.stop(2, kill=True)
        with pytest.raises(LogUnavailable):
            await log.append([make_event(2)], route=to("f"))
        nats_cluster.start()  # all three again

        async def appended() -> bool:
            try:
                await log.append([make_event(3)], route=to("f"))
            except LogUnavailable:
                return False
            return True

        await until(appended, 60)
        assert sorted(d.event.data["Key"] for d in await log.lease("f", 10, 30)) in (
            [1, 3],
            [1, 2, 3],
        )
    finally:
        await log.close()


async def test_a_node_started_while_its_cluster_has_no_quorum_waits_for_it(
    nats_cluster: NatsCluster, caplog: pytest.LogCaptureFixture
) -> None:
    # A node started with its cluster (a reboot of everything, a cluster still
    # electing) must not fail for a stream it cannot make yet: it waits.
    import nats

    from veba.jetstream._buckets import key_value
    from veba.leadership import KVLeadership

    nats_cluster.stop(1, kill=True)
    nats_cluster.stop(2, kill=True)
    name = f"t{uuid.uuid4().hex[:12]}"
    log = JetStreamLog(nats_cluster.urls, name=name, replicas=3)
    client = await nats.connect(nats_cluster.urls, max_reconnect_attempts=-1)
    js = client.jetstream()
    making = [
        asyncio.create_task(log.open()),
        asyncio.create_task(key_value(js, f"{name}_store", replicas=3)),
        asyncio.create_task(KVLeadership.open(client, js, f"{name}_leases", replicas=3)),
    ]
    try:

        async def each_told_to_wait() -> bool:
            return caplog.text.count("JetStream cannot make") >= 3

        await until(each_told_to_wait, 60)
        assert not any(task.done() for task in making), [t for t in making if t.done()]
        nats_cluster.start()  # all three again
        done, _ = await asyncio.wait(making, timeout=90)
        assert done == set(making)
        for task in making:
            task.result()  # raises what it raised, if anything
        await log.append([make_event(1)], route=to("f"))
        assert [d.event.data["Key"] for d in await log.lease("f", 10, 30)] == [1]
        for stream in (f"{name}_events", f"KV_{name}_store", f"KV_{name}_leases"):
            assert (await js.stream_info(stream)).config.num_replicas == 3
    finally:
        for task in making:
            task.cancel()
        await asyncio.gather(*making, return_exceptions=True)
        await log.close()
        await client.close()
