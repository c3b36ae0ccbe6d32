from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.eventlog.conformance import EventLogConformance, failed, make_event, to
from veba.eventlog import LogFull, LogInUse, OwnerLock, ReplayTooLarge, SQLiteLog
from veba.eventlog import sqlite as sqlite_log
from veba.eventlog.schema import MIGRATIONS, SchemaTooNew
from veba.events import vsphere_event


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[SQLiteLog]:
    log = SQLiteLog(tmp_path / "events.db")
    await log.open()
    yield log
    await log.close()


class TestSQLiteLog(EventLogConformance):
    async def test_include_delayed_leases_in_order_regardless_of_due_time(
        self, log: SQLiteLog
    ) -> None:
        # SQLite only: JetStream holds a nak's delay on the server, out of a lease's
        # reach. Ordered subscriptions retry in place, so theirs never wait there.
        await log.append([make_event(1), make_event(2)], route=to("f"))
        (d1,) = await log.lease("f", 1, 30)
        await log.retry(d1.id, failed(1), time.time() + 3600)
        plain = await log.lease("f", 10, 30)
        assert [d.event.data["Key"] for d in plain] == [2]
        await log.release([d.id for d in plain])
        ordered = await log.lease("f", 10, 30, include_delayed=True)
        assert [d.event.data["Key"] for d in ordered] == [1, 2]
        assert ordered[0].available_at > time.time() + 3000


async def test_events_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    first = SQLiteLog(path)
    await first.open()
    await first.append([make_event(1)], route=to("f"), checkpoint=("vc1", "2"))
    await first.close()
    second = SQLiteLog(path)
    await second.open()
    try:
        assert await second.get_checkpoint("vc1") == "2"
        assert len(await second.lease("f", 10, 30)) == 1
    finally:
        await second.close()


async def test_schema_version_is_recorded_and_newer_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    log = SQLiteLog(path)
    await log.open()
    await log.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    conn.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(SchemaTooNew, match="upgrade veba"):
        await SQLiteLog(path).open()


async def test_full_disk_refuses_the_append_and_keeps_what_was_accepted(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    log = SQLiteLog(path)
    await log.open()
    try:
        await log.append([make_event(1)], route=to("f"))
        # Cap the file at its current size: the next growth fails as a full disk would.
        conn = sqlite3.connect(path)
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.close()

        def cap(c: sqlite3.Connection) -> None:
            c.execute(f"PRAGMA max_page_count={pages}")

        await log.write(cap)
        big = [make_event(k) for k in range(2, 400)]
        with pytest.raises(LogFull, match="full"):
            await log.append(big, route=to("f"))
        assert [r.event.data["Key"] for r in await log.events()] == [1]
        assert len(await log.lease("f", 10, 30)) == 1
    finally:
        await log.close()


async def test_a_restart_offers_what_was_leased_at_once(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    first = SQLiteLog(path)
    await first.open()
    await first.append([make_event(1)], route=to("f"))
    assert len(await first.lease("f", 10, ttl=3600)) == 1
    await first.close()  # as if the appliance died holding the lease
    second = SQLiteLog(path)
    await second.open()
    try:
        (again,) = await second.lease("f", 10, 30)
        assert again.attempt == 2  # the interrupted attempt still counts
    finally:
        await second.close()


async def test_two_appliances_cannot_share_one_log(tmp_path: Path) -> None:
    first = SQLiteLog(tmp_path / "events.db")
    await first.open()
    try:
        with pytest.raises(RuntimeError, match="in use by another veba appliance"):
            await SQLiteLog(tmp_path / "events.db").open()
    finally:
        await first.close()


async def test_a_lock_taken_first_is_the_logs_and_names_its_holder(tmp_path: Path) -> None:
    # `veba serve` locks before it writes anything, then hands the lock to the log.
    path = tmp_path / "data" / "events.db"
    lock = OwnerLock.acquire(path, url="http://127.0.0.1:8080")
    log = SQLiteLog(path, lock=lock)
    await log.open()
    try:
        with pytest.raises(
            LogInUse, match=rf"pid {os.getpid()}, serving on http://127\.0\.0\.1:8080"
        ):
            OwnerLock.acquire(path)
        await log.append([], route=lambda _: ())
    finally:
        await log.close()
    with pytest.raises(LogInUse):  # the log leaves a lock it was given to its owner
        OwnerLock.acquire(path)
    lock.release()
    OwnerLock.acquire(path).release()


async def test_recent_events_held_in_memory_are_bounded_in_bytes(log: SQLiteLog) -> None:
    # A hundred 1 MiB events would be 100 MiB if the cache held them by count.
    big = [
        vsphere_event(
            {"Key": key, "Blob": "x" * (1 << 20)},
            event_class="VmPoweredOnEvent",
            source="vc1",
            instance_uuid="vc1",
        )
        for key in range(100)
    ]
    for at in range(0, 100, 10):
        await log.append(big[at : at + 10], route=to("f"))
    assert log._recent_bytes <= sqlite_log._RECENT_BYTES
    assert sum(size for _, size in log._recent.values()) == log._recent_bytes
    # What fell out of memory is read back from the file, whole.
    leased = await log.lease("f", 200, 30)
    assert [d.event.data["Key"] for d in leased] == list(range(100))
    assert all(len(d.event.data["Blob"]) == 1 << 20 for d in leased)


async def test_replay_and_redrive_go_in_steps_and_miss_nothing(
    log: SQLiteLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_log, "_STEP", 3)  # steps of 3 rows instead of 5000
    await log.append([make_event(k) for k in range(1, 11)], route=to("f"))
    assert await log.replay("late") == 10
    assert [d.event.data["Key"] for d in await log.lease("late", 100, 30)] == list(range(1, 11))
    for d in await log.lease("f", 100, 30):
        await log.dead(d.id, failed(1, 400))
    assert await log.redrive(subscription="f") == 10
    assert await log.deliveries(status="dead") == []
    assert len(await log.lease("f", 100, 30)) == 10


async def test_a_replay_larger_than_allowed_does_nothing(log: SQLiteLog) -> None:
    await log.append([make_event(k) for k in range(1, 6)], route=to())
    with pytest.raises(ReplayTooLarge, match="would deliver 5 events again; at most 4"):
        await log.replay("late", at_most=4)
    assert await log.lease("late", 100, 30) == []
    assert await log.replay("late", at_most=5) == 5


async def test_the_wal_is_written_over_not_grown_under_a_steady_stream_of_appends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The checkpointer rewinds a WAL past its limit (at the latest once it is four
    # times over, waiting for the writer), so under a steady stream of appends the
    # file is written over from its start rather than grown: its size stays within
    # a few limits however much is appended (here some twelve limits' worth).
    from veba.eventlog import _threads

    limit = 1 << 20
    monkeypatch.setattr(_threads, "_WAL_LIMIT", limit)
    log = SQLiteLog(tmp_path / "events.db")
    await log.open()
    wal = tmp_path / "events.db-wal"
    try:
        checkpointer = log._checkpointer
        key, biggest = 0, 0
        while checkpointer.passes < 20:  # ~4 s at a pass every 0.2 s
            events = [make_event(key + i).with_attribute("padding", "x" * 1000) for i in range(10)]
            key += 10
            await log.append(events, route=to("f"))
            biggest = max(biggest, wal.stat().st_size)
            await asyncio.sleep(0.005)  # a steady stream, not one burst
        appended = await log.read(
            lambda conn: conn.execute("SELECT COUNT(*) FROM events").fetchone()
        )
        assert appended[0] * 4096 > 10 * limit  # a page or more of WAL per event
        assert limit < biggest < 8 * limit, f"WAL reached {biggest / limit:.2f}x the limit"
    finally:
        await log.close()


async def test_a_write_asked_for_while_the_log_closes_is_refused_not_left_hanging(
    log: SQLiteLog,
) -> None:
    # Once close has told the writer to stop, a write asked for (a prune's next
    # step, an append from a request still in flight) is refused at once: queued
    # behind the writer's stop, it would never run and its caller never return.
    await log.append([make_event(1)], route=to("f"))
    closing = asyncio.create_task(log.close())
    await asyncio.sleep(0)  # close has told the writer and waits for it to end
    with pytest.raises(RuntimeError, match="not open"):
        await asyncio.wait_for(log.append([make_event(2)], route=to("f")), 10)
    await closing
