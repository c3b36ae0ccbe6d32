"""The behaviour every `EventLog` must show. Implementations subclass
`EventLogConformance` and provide a `log` fixture (an opened, empty log)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace

import pytest

from veba.eventlog import Attempt, EventLog, SubjectCounts
from veba.eventlog.base import Backlog
from veba.events import Event, vsphere_event


def make_event(key: int, subject: str = "VmPoweredOnEvent", source: str = "vc1") -> Event:
    data = {"Key": key, "CreatedTime": "2026-01-01T00:00:00Z", "Vm": {"Name": f"vm{key % 3}"}}
    return vsphere_event(data, event_class=subject, source=source, instance_uuid=source)


def to(*subs: str):  # a route sending every event to the named subscriptions
    return lambda event: subs


def failed(n: int, status: int = 500) -> Attempt:
    now = time.time()
    return Attempt(n, now, now, "error", status, "RuntimeError: boom")


def ok(n: int) -> Attempt:
    now = time.time()
    return Attempt(n, now, now, "ok", 200)


async def settled_backlog(
    log: EventLog, settled: Callable[[dict[str, Backlog]], bool]
) -> dict[str, Backlog]:
    """The backlog once `settled` holds, or as it stands after 5 s: a replicated
    log (JetStream on a cluster) may count an ack's removal a moment later."""
    deadline = time.monotonic() + 5
    while not settled(backlog := await log.backlog()) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return backlog


class EventLogConformance:
    async def test_append_deduplicates_on_source_and_id(self, log: EventLog) -> None:
        first = await log.append([make_event(1), make_event(2)], route=to("f"))
        again = await log.append([make_event(2), make_event(3)], route=to("f"))
        other_source = await log.append([make_event(1, source="vc2")], route=to("f"))
        assert (first.accepted, first.duplicates) == (2, 0)
        assert (again.accepted, again.duplicates) == (1, 1)
        assert other_source.accepted == 1
        assert first.deliveries == {"f": 2}
        assert [r.event.id for r in await log.events()] == [
            make_event(1).id,
            make_event(2).id,
            make_event(3).id,
            make_event(1, source="vc2").id,
        ]

    async def test_append_says_which_events_were_new_with_their_seq(self, log: EventLog) -> None:
        await log.append([make_event(1)], route=to())
        result = await log.append([make_event(1), make_event(2), make_event(3)], route=to())
        records = {r.event.id: r for r in await log.events()}
        # The duplicate (index 0) is left out; the new ones carry the seq they got.
        assert [index for _, index in result.logged] == [1, 2]
        for seq, index in result.logged:
            record = records[make_event(index + 1).id]
            assert record.seq == seq and record.received == result.received

    async def test_append_can_lease_new_deliveries_in_its_own_write(self, log: EventLog) -> None:
        events = [make_event(k) for k in range(1, 4)]
        await log.append([events[0]], route=to("g"))  # then a duplicate: no delivery
        result = await log.append(events, route=to("f", "g"), lease={"f": (1, 1.0)})
        # One of f's two new deliveries is leased at once, as `lease` would have it:
        # the oldest open one. (A dispatcher asks only when it has no backlog.)
        assert [(d.subscription, d.event.id, d.attempt) for d in result.leased] == [
            ("f", events[1].id, 1)
        ]
        assert result.deliveries == {"f": 2, "g": 2}
        # It is not leased again while held; the rest wait in the log, in order.
        assert [d.event.id for d in await log.lease("f", 10, 30)] == [events[2].id]
        assert [d.event.id for d in await log.lease("g", 10, 30)] == [e.id for e in events]
        info = await log.delivery(result.leased[0].id)
        assert info is not None and (info.status, info.attempts) == ("leased", 1)
        # Its lease lapses like any other: offered again, the second attempt.
        deadline = time.monotonic() + 10
        again: list = []
        while not again and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            again = await log.lease("f", 10, 30)
        assert [(d.id, d.attempt) for d in again] == [(result.leased[0].id, 2)]
        await log.ack(again[0].id, ok(2))
        delivered = await log.delivery(again[0].id)
        assert delivered is not None and delivered.status == "delivered"

    async def test_a_large_append_with_repeats_logs_leases_and_acks_the_right_rows(
        self, log: EventLog
    ) -> None:
        # Many events at once (the SQLite log writes them in statements of many
        # rows): repeats of logged events and of each other scattered through
        # them, three subscriptions, two given leases at append.
        # (Logged first for another subscription: a lease at append is asked
        # for only by a dispatcher with no backlog.)
        await log.append([make_event(k) for k in range(0, 300, 7)], route=to("e"))
        keys = [k for k in range(300)] + [5, 77, 299, 150]
        batch = [make_event(k) for k in keys]
        result = await log.append(
            batch, route=to("f", "g", "h"), lease={"f": (40, 30.0), "g": (300, 30.0)}
        )
        fresh = [k for k in range(300) if k % 7]
        assert (result.accepted, result.duplicates) == (len(fresh), len(batch) - len(fresh))
        assert [keys[index] for _, index in result.logged] == fresh
        records = {r.seq: r for r in await log.events(limit=1000)}
        for seq, index in result.logged:
            assert records[seq].event.id == batch[index].id
        assert result.deliveries == {"f": len(fresh), "g": len(fresh), "h": len(fresh)}
        leased = {(d.subscription, d.event.data["Key"]) for d in result.leased}
        assert leased == {("f", k) for k in fresh[:40]} | {("g", k) for k in fresh}
        for delivery in result.leased:
            info = await log.delivery(delivery.id)
            assert info is not None
            assert (info.subscription, info.event_id, info.status) == (
                delivery.subscription, delivery.event.id, "leased",
            )  # fmt: skip
        # Everything else waits in the log, in order: f's rest, and all of h's.
        f_rest = await log.lease("f", 1000, 30)
        assert [d.event.data["Key"] for d in f_rest] == fresh[40:]
        h_all = await log.lease("h", 1000, 30)
        assert [d.event.data["Key"] for d in h_all] == fresh
        # One ack of them all marks exactly those delivered.
        g_mine = [d for d in result.leased if d.subscription == "g"]
        await log.ack_many([(d.id, ok(1)) for d in [*g_mine, *h_all]])
        counts = await log.counts()
        assert counts["g"].get("delivered") == counts["h"].get("delivered") == len(fresh)
        assert not counts["f"].get("delivered")

    async def test_events_round_trip_exactly(self, log: EventLog) -> None:
        event = make_event(7)
        await log.append([event], route=to())
        record = await log.event(event.id)
        assert record is not None
        assert record.event.to_dict() == event.to_dict()

    async def test_deliveries_follow_the_route(self, log: EventLog) -> None:
        route = lambda e: ["on"] if e.subject == "VmPoweredOnEvent" else ["off", "all"]  # noqa: E731
        await log.append([make_event(1), make_event(2, "VmPoweredOffEvent")], route=route)
        on = await log.lease("on", 10, 30)
        off = await log.lease("off", 10, 30)
        assert [d.event.subject for d in on] == ["VmPoweredOnEvent"]
        assert [d.event.subject for d in off] == ["VmPoweredOffEvent"]
        assert await log.lease("nobody", 10, 30) == []

    async def test_checkpoint_commits_with_events(self, log: EventLog) -> None:
        assert await log.get_checkpoint("vc1") is None
        await log.append([make_event(1)], route=to(), checkpoint=("vc1", "2"))
        assert await log.get_checkpoint("vc1") == "2"

    async def test_lease_is_exclusive_in_log_order_and_counts_attempts(self, log: EventLog) -> None:
        await log.append([make_event(k) for k in range(1, 6)], route=to("f"))
        first = await log.lease("f", 3, 30)
        second = await log.lease("f", 10, 30)
        assert [d.event.data["Key"] for d in first] == [1, 2, 3]
        assert [d.event.data["Key"] for d in second] == [4, 5]
        assert {d.attempt for d in first + second} == {1}
        assert await log.lease("f", 10, 30) == []

    async def test_expired_lease_is_redelivered(self, log: EventLog) -> None:
        await log.append([make_event(1)], route=to("f"))
        (first,) = await log.lease("f", 1, 0.05)
        deadline = time.monotonic() + 10
        again: list = []
        while not again and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            again = await log.lease("f", 1, 30)
        assert [d.id for d in again] == [first.id]
        assert again[0].attempt == 2

    async def test_extend_keeps_the_lease(self, log: EventLog) -> None:
        await log.append([make_event(1)], route=to("f"))
        (d,) = await log.lease("f", 1, 0.2)
        await log.extend([d.id], 60)
        await asyncio.sleep(0.3)  # past the original lease: it must still be held
        assert await log.lease("f", 1, 30) == []

    async def test_ack_finishes_a_delivery(self, log: EventLog) -> None:
        await log.append([make_event(1)], route=to("f"))
        (d,) = await log.lease("f", 1, 0.05)
        await log.ack(d.id, ok(1))
        await asyncio.sleep(0.1)
        assert await log.lease("f", 1, 30) == []
        info = await log.delivery(d.id)
        assert info is not None and info.status == "delivered"
        assert (await log.counts())["f"] == {"delivered": 1}

    async def test_retry_waits_until_due_and_keeps_history(self, log: EventLog) -> None:
        await log.append([make_event(1)], route=to("f"))
        (d,) = await log.lease("f", 1, 30)
        await log.retry(d.id, failed(1), time.time() + 0.3)
        assert await log.lease("f", 1, 30) == []
        deadline = time.monotonic() + 10
        again: list = []
        while not again and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            again = await log.lease("f", 1, 30)
        assert again[0].attempt == 2
        info = await log.delivery(d.id)
        assert info is not None
        assert [(a.attempt, a.status) for a in info.history] == [(1, 500)]
        assert info.last_error == "RuntimeError: boom"

    async def test_retry_in_place_keeps_the_lease(self, log: EventLog) -> None:
        await log.append([make_event(1)], route=to("f"))
        (d,) = await log.lease("f", 1, 30, include_delayed=True)
        await log.retry(d.id, failed(1), time.time(), lease_ttl=30)
        assert await log.lease("f", 1, 30, include_delayed=True) == []
        await log.ack(d.id, ok(2))
        info = await log.delivery(d.id)
        assert info is not None and info.status == "delivered" and info.attempts == 2

    async def test_dead_letter_and_redrive(self, log: EventLog) -> None:
        await log.append([make_event(1), make_event(2)], route=to("f", "g"))
        for sub in ("f", "g"):
            for d in await log.lease(sub, 10, 30):
                await log.dead(d.id, failed(1, 400))
        dead = await log.deliveries(status="dead", subscription="f")
        assert len(dead) == 2 and dead[0].last_status == 400
        assert await log.redrive(delivery_ids=[dead[0].id]) == 1
        again = await log.lease("f", 10, 30)
        assert [d.id for d in again] == [dead[0].id] and again[0].attempt == 1
        assert await log.redrive(subscription="g") == 2
        assert await log.redrive() == 1  # the last dead one, of f
        assert await log.deliveries(status="dead") == []

    async def test_dead_letters_and_an_events_deliveries_are_listed_newest_first(
        self, log: EventLog
    ) -> None:
        events = [make_event(k) for k in range(1, 4)]
        await log.append(events, route=to("f", "g"))
        for d in await log.lease("f", 10, 30):
            await log.dead(d.id, failed(1, 400))
        (leased,) = await log.lease("g", 1, 30)  # the first event's; g's others stay pending
        assert leased.event.id == events[0].id

        dead = await log.deliveries(status="dead", with_history=True)
        assert [(d.subscription, d.event_id) for d in dead] == [
            ("f", e.id) for e in reversed(events)
        ]
        assert [a.status for a in dead[0].history] == [400]
        assert await log.deliveries(status="dead", limit=2) == [
            replace(d, history=()) for d in dead[:2]
        ]
        assert await log.deliveries(status="dead", subscription="g") == []
        only = await log.deliveries(status="dead", event_id=events[1].id)
        assert [d.id for d in only] == [dead[1].id]

        first = await log.deliveries(event_id=events[0].id)
        assert sorted((d.subscription, d.status) for d in first) == [
            ("f", "dead"),
            ("g", "leased"),
        ]
        second = await log.deliveries(event_id=events[1].id)
        assert sorted((d.subscription, d.status) for d in second) == [
            ("f", "dead"),
            ("g", "pending"),
        ]
        assert await log.deliveries(event_id="no-such-event") == []

    async def test_release_does_not_count_an_attempt(self, log: EventLog) -> None:
        await log.append([make_event(1)], route=to("f"))
        (d,) = await log.lease("f", 1, 30)
        await log.release([d.id])
        (again,) = await log.lease("f", 1, 30)
        assert again.attempt == 1

    async def test_replay_creates_new_deliveries_by_range_and_subject(self, log: EventLog) -> None:
        await log.append(
            [make_event(1), make_event(2, "VmPoweredOffEvent"), make_event(3)], route=to()
        )
        assert await log.replay("late", subjects=["VmPoweredOnEvent"]) == 2
        got = await log.lease("late", 10, 30)
        assert [d.event.data["Key"] for d in got] == [1, 3]
        assert await log.replay("late", since=time.time() + 60) == 0

    async def test_replay_takes_what_matches_and_a_dry_run_only_counts(self, log: EventLog) -> None:
        await log.append(
            [make_event(1), make_event(2, "VmPoweredOffEvent"), make_event(3)], route=to()
        )

        def powered_on(event: Event) -> bool:
            return event.subject == "VmPoweredOnEvent"

        assert await log.replay("late", dry_run=True) == 3
        assert await log.replay("late", matches=powered_on, dry_run=True) == 2
        assert await log.lease("late", 10, 30) == []  # a dry run writes nothing
        assert await log.replay("late", matches=powered_on) == 2
        got = await log.lease("late", 10, 30)
        assert [d.event.data["Key"] for d in got] == [1, 3]

    async def test_backlog_counts_open_deliveries_their_oldest_and_dead_letters(
        self, log: EventLog
    ) -> None:
        assert await log.backlog() == {}
        before = time.time()
        await log.append([make_event(1), make_event(2)], route=to("f", "g"))
        after = time.time()
        await log.append([make_event(3)], route=to("f"))
        (first,) = await log.lease("g", 1, 30)
        await log.dead(first.id, failed(1, 400))
        backlog = await settled_backlog(
            log, lambda b: "g" in b and (b["g"].open, b["g"].dead) == (1, 1)
        )
        assert set(backlog) == {"f", "g"}
        assert backlog["f"].open == 3 and backlog["f"].dead == 0
        assert backlog["g"].open == 1 and backlog["g"].dead == 1
        assert before <= (backlog["f"].oldest or 0) <= after
        assert backlog["f"].lag(after + 10) >= 10
        # Leased is still open; delivered is not; the oldest moves on.
        leased = await log.lease("f", 2, 30)
        assert (await log.backlog())["f"].open == 3
        for d in leased:
            await log.ack(d.id, ok(1))
        # A replicated log may count an ack's removal a moment later (JetStream
        # on a cluster): what it shows must come right within a few seconds.
        left = (await settled_backlog(log, lambda b: b["f"].open == 1))["f"]
        assert left.open == 1 and (left.oldest or 0) >= after
        (last,) = await log.lease("f", 1, 30)
        await log.ack(last.id, ok(1))
        (rest,) = await log.lease("g", 1, 30)
        await log.ack(rest.id, ok(1))
        backlog = await settled_backlog(log, lambda b: not b.get("g", Backlog()).open)
        assert "f" not in backlog  # nothing open, nothing dead
        assert backlog["g"].open == 0 and backlog["g"].oldest is None
        assert backlog["g"].dead == 1 and backlog["g"].lag(time.time()) == 0.0
        await log.redrive(subscription="g")
        assert (await log.backlog())["g"].dead == 0

    async def test_size_grows_with_what_is_written(self, log: EventLog) -> None:
        empty = await log.size()
        await log.append([make_event(k) for k in range(200)], route=to("f"))
        grown = await log.size()
        assert grown.bytes + grown.wal_bytes > empty.bytes + empty.wal_bytes
        assert min(grown.bytes, grown.wal_bytes) >= 0

    async def test_subject_counts_count_by_subject_and_type_from_a_seq_on(
        self, log: EventLog
    ) -> None:
        assert await log.subject_counts() == SubjectCounts(0, ())
        await log.append(
            [make_event(1), make_event(2), make_event(3, "VmPoweredOffEvent")], route=to()
        )
        first = await log.subject_counts()
        on, off = "VmPoweredOnEvent", "VmPoweredOffEvent"
        kind = make_event(1).type
        assert sorted(first.counts) == [(off, kind, 1), (on, kind, 2)]
        await log.append([make_event(4), make_event(1)], route=to())  # one new, one duplicate
        since = await log.subject_counts(first.upto)
        assert since.counts == ((on, kind, 1),) and since.upto > first.upto
        assert (await log.subject_counts(since.upto)).counts == ()

    async def test_checkpoints_say_when_each_was_last_written(self, log: EventLog) -> None:
        assert await log.checkpoints() == []
        await log.append([make_event(1)], route=to(), checkpoint=("vc1", "2"))
        before = time.time()
        await log.append([make_event(2)], route=to(), checkpoint=("vc1", "3"))
        await log.append([make_event(3)], route=to(), checkpoint=("sim", "9"))
        found = {c.name: c for c in await log.checkpoints()}
        assert {name: c.value for name, c in found.items()} == {"vc1": "3", "sim": "9"}
        assert found["vc1"].updated >= before - 0.001

    async def test_forget_drops_open_deliveries(self, log: EventLog) -> None:
        await log.append([make_event(1), make_event(2)], route=to("f"))
        assert await log.forget("f") == 2
        assert await log.lease("f", 10, 30) == []

    async def test_prune_drops_old_finished_events_only(self, log: EventLog) -> None:
        await log.append([make_event(k) for k in range(1, 5)], route=to("f"))
        leased = await log.lease("f", 10, 30)
        await log.ack(leased[0].id, ok(1))  # key 1: delivered
        await log.dead(leased[1].id, failed(1, 400))  # key 2: dead, kept for the DLQ
        # key 3 stays leased, key 4 too: both still open
        await log.append([make_event(5)], route=to())  # key 5: nobody subscribed
        assert await log.prune(time.time() - 3600) == 0  # nothing that old
        assert await log.prune(time.time() + 1) == 2  # keys 1 and 5
        left = [r.event.data["Key"] for r in await log.events()]
        assert left == [2, 3, 4]
        assert [d.status for d in await log.deliveries(subscription="f")] == [
            "leased",
            "leased",
            "dead",
        ]

    async def test_many_concurrent_appends_are_all_durable(self, log: EventLog) -> None:
        batches = [[make_event(b * 100 + i) for i in range(100)] for b in range(20)]
        results = await asyncio.gather(*(log.append(b, route=to("f")) for b in batches))
        assert sum(r.accepted for r in results) == 2000
        leased = await log.lease("f", 5000, 30)
        assert len(leased) == 2000
        assert [d.seq for d in leased] == sorted(d.seq for d in leased)


__all__ = ["EventLogConformance", "make_event", "pytest"]
