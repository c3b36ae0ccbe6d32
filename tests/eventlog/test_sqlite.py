from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.eventlog.conformance import EventLogConformance, make_event, to
from veba.eventlog import LogFull, LogInUse, OwnerLock, SQLiteLog
from veba.eventlog.schema import MIGRATIONS, SchemaTooNew


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[SQLiteLog]:
    log = SQLiteLog(tmp_path / "events.db")
    await log.open()
    yield log
    await log.close()


class TestSQLiteLog(EventLogConformance):
    pass


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

        await log._write(cap)
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
