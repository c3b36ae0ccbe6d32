"""The embedded event log: one SQLite file in WAL mode.

All writes go through one thread that groups whatever is queued into a single
transaction (group commit): under load hundreds of appends, leases and acks
share one commit, and when idle a lone write commits at once. Reads use a
second connection on their own thread, so the API never waits behind writes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import sqlite3
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import orjson

from veba.eventlog._rows import ids_json, insert_events, insert_rows, pieces, values
from veba.eventlog._threads import Checkpointer, Op, Writer, connect
from veba.eventlog.base import (
    AppendResult,
    Attempt,
    Backlog,
    Checkpoint,
    Delivery,
    DeliveryInfo,
    EventRecord,
    LogSize,
    ReplayTooLarge,
    Route,
    Status,
    SubjectCounts,
)
from veba.eventlog.ownerlock import OwnerLock
from veba.eventlog.schema import migrate
from veba.events import INVOCATION_TYPE, Event

__all__ = ["SQLiteLog"]

T = TypeVar("T")
_ERROR_LIMIT = 8192
# The columns of a DeliveryInfo, in its field order.
_DELIVERY_INFO = (
    "SELECT d.id, d.seq, d.subscription, e.id, e.source, e.subject, d.status, d.attempts,"
    " d.created, d.available_at, d.finished, d.last_status, d.last_error"
    " FROM deliveries d JOIN events e ON e.seq = d.seq"
)
# Events kept in memory after append, for leasing: bounded in bytes as well as
# in number, so a few large events cannot hold the memory that many small ones
# would. An event's cost is taken as 4 times its JSON: the JSON itself and its
# parsed data (Python objects; a vSphere event's take about 4 KB per 850 bytes).
_RECENT = 20_000
_RECENT_BYTES = 64 << 20
_COST = 4
_STEP = 5_000  # rows one write transaction of a replay or redrive touches
# Retention deletes in steps of about this much writer time (adaptive, see
# _PruneSteps): an event with its delivery costs 15-20 us to delete, so a step
# is some 100 events, and an append arriving mid-step waits a few ms at most.
_PRUNE_STEP_SECONDS = 0.002
_PRUNE_STEP_FIRST = 100
_PRUNE_STEP_MIN = 10
_PRUNE_STEP_MAX = 2_000
# Between two checkpoint passes a prune spends at most this much writer time,
# so it never writes faster than the checkpointer copies (see `prune`).
_PRUNE_PER_PASS = 0.005
_PRUNE_PASS_POLL = 0.005
_INSERT_PENDING = (
    "INSERT INTO deliveries(seq, subscription, status, attempts, available_at, created) VALUES "
)
# An ack of many deliveries in one statement: `values` rows of (id, started,
# finished, status).
_ACK_FROM = (
    "WITH acked(id, started, finished, status) AS (VALUES {values})"
    " UPDATE deliveries SET status='delivered', started=acked.started,"
    " finished=acked.finished, last_status=acked.status, leased_until=NULL"
    " FROM acked WHERE deliveries.id = acked.id"
)
_INSERT_LEASED = (
    "INSERT INTO deliveries(seq, subscription, status, attempts, available_at, created,"
    " leased_until) VALUES "
)


class SQLiteLog:
    """`EventLog` on a SQLite file (WAL, synchronous=NORMAL by default)."""

    def __init__(
        self,
        path: Path | str,
        *,
        synchronous: str = "NORMAL",
        clock: Callable[[], float] = time.time,
        lock: OwnerLock | None = None,
    ) -> None:
        self.path = Path(path)
        self._synchronous = synchronous
        self._clock = clock
        self._writer: Writer | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._read_conn: sqlite3.Connection | None = None
        # One appliance per file: a lock it was given (`veba serve` takes it before
        # anything else), else one it takes at open.
        self._lock = lock
        self._own_lock = False
        self._checkpointer: Checkpointer | None = None
        self._recent: OrderedDict[int, tuple[Event, int]] = OrderedDict()  # seq -> (event, bytes)
        self._recent_bytes = 0

    # -- lifecycle ------------------------------------------------------------

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_owner()
        # Created private: SQLite gives the -wal and -shm files the database's mode.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        conn = connect(self.path, self._synchronous)
        migrate(conn)
        # One appliance owns this file (see _lock_owner), so whatever was leased
        # when it last stopped is in nobody's hands now: offer it again at once
        # instead of waiting out the leases. The attempt stays counted.
        conn.execute(
            "UPDATE deliveries SET status='pending', leased_until=NULL WHERE status='leased'"
        )
        # Checkpoints (WAL -> database, with an fsync) run on a thread of their
        # own, never inside a commit that a webhook request is waiting for.
        conn.execute("PRAGMA wal_autocheckpoint=0")
        self._checkpointer = Checkpointer(connect(self.path, self._synchronous), self.path)
        self._checkpointer.start()
        self._writer = Writer(conn, asyncio.get_running_loop())
        self._writer.start()
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="veba-sqlite-reader")
        self._read_conn = connect(self.path, self._synchronous)

    def _lock_owner(self) -> None:
        if self._lock is None:  # LogInUse (a RuntimeError) if another appliance has it
            self._lock = OwnerLock.acquire(self.path)
            self._own_lock = True

    async def close(self) -> None:
        if self._writer is not None:
            # Let go of the writer before telling it to stop: a write asked for
            # meanwhile (a prune's next step) is refused, not queued behind the
            # stop where nothing would ever run it.
            writer, self._writer = self._writer, None
            writer.queue.put(None)
            await asyncio.to_thread(writer.join)
        if self._checkpointer is not None:
            self._checkpointer.finish()
            await asyncio.to_thread(self._checkpointer.join)
            self._checkpointer = None
        if self._reader is not None:
            self._reader.shutdown(wait=True)
            self._reader = None
        if self._read_conn is not None:
            self._read_conn.close()
            self._read_conn = None
        if self._lock is not None and self._own_lock:
            self._lock.release()
            self._lock = None

    def _write(
        self, fn: Callable[[sqlite3.Connection], T], *, background: bool = False
    ) -> asyncio.Future[T]:
        if self._writer is None:
            raise RuntimeError("event log is not open")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._writer.queue.put(Op(fn, future, background))
        return future

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._reader is None or self._read_conn is None:
            raise RuntimeError("event log is not open")
        conn = self._read_conn
        return await asyncio.get_running_loop().run_in_executor(self._reader, fn, conn)

    # -- tables beside the log ------------------------------------------------
    # Other tables of this file (the functions' store, `sqlite_store.py`) are
    # reached through these three, and nothing else of the log's insides.

    @property
    def clock(self) -> Callable[[], float]:
        """The clock the log stamps its rows with (seconds since the epoch)."""
        return self._clock

    async def write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """`op(conn)` on the writer thread, in the transaction it shares with
        whatever else is queued (group commit); its result once committed.

        Nothing else writes between the reads and writes of one op, so an op may
        read and then write atomically (a compare-and-set). Should any op of the
        batch raise, the batch is rolled back and each op run again alone: so an
        op keeps no state between runs, and an expected refusal (a CAS that lost)
        is *returned*, not raised, so it costs the others no second run."""
        return await self._write(op)

    async def read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """`op(conn)` on the read connection's thread (never behind the writer);
        it must not write."""
        return await self._read(op)

    # -- ingest ---------------------------------------------------------------

    async def append(
        self,
        events: Sequence[Event],
        *,
        route: Route,
        checkpoint: tuple[str, str] | None = None,
        lease: Mapping[str, tuple[int, float]] | None = None,
    ) -> AppendResult:
        now = self._clock()
        rows = [(e.source, e.id, e.type, e.subject, e.time, now, e.to_json()) for e in events]
        routes = [tuple(route(e)) for e in events]
        grants = dict(lease or {})

        def op(conn: sqlite3.Connection) -> AppendResult:
            per_sub: Counter[str] = Counter()
            left = {sub: count for sub, (count, _) in grants.items()}
            # The op may run twice if its first transaction rolled back.
            new[:] = insert_events(conn, rows)
            pending: list[tuple[int, str, float, float]] = []
            to_lease: list[tuple[int, str, float, float, float]] = []
            owners: list[int] = []  # the index in `rows` of each of `to_lease`
            for seq, index in new:
                for sub in routes[index]:
                    per_sub[sub] += 1
                    if left.get(sub, 0) > 0:
                        left[sub] -= 1
                        to_lease.append((seq, sub, now, now, now + grants[sub][1]))
                        owners.append(index)
                    else:
                        pending.append((seq, sub, now, now))
            insert_rows(conn, _INSERT_PENDING, "(?,?,'pending',0,?,?)", pending)
            ids = insert_rows(conn, _INSERT_LEASED, "(?,?,'leased',1,?,?,?)", to_lease)
            leased[:] = [
                (did, row[0], row[1], index)
                for did, row, index in zip(ids, to_lease, owners, strict=True)
            ]
            accepted = len(new)
            if checkpoint is not None:
                conn.execute(
                    "INSERT INTO checkpoints(name, value, updated) VALUES (?,?,?)"
                    " ON CONFLICT(name) DO UPDATE SET value=excluded.value,"
                    " updated=excluded.updated",
                    (checkpoint[0], checkpoint[1], now),
                )
            return AppendResult(accepted, len(rows) - accepted, dict(per_sub), tuple(new), now)

        new: list[tuple[int, int]] = []
        leased: list[tuple[int, int, str, int]] = []  # (delivery id, seq, subscription, index)
        result = await self._write(op)
        # Committed: remember the new events, so leasing them soon after needs
        # no read and no parse of what is already in memory.
        recent = self._recent
        for seq, index in new:
            size = len(rows[index][6]) * _COST
            if size <= _RECENT_BYTES // 16:  # a huge one is read back when leased
                recent[seq] = (events[index], size)
                self._recent_bytes += size
        while recent and (len(recent) > _RECENT or self._recent_bytes > _RECENT_BYTES):
            self._recent_bytes -= recent.popitem(last=False)[1][1]
        if leased:
            handed = tuple(
                Delivery(did, seq, sub, events[index], 1, now) for did, seq, sub, index in leased
            )
            result = dataclasses.replace(result, leased=handed)
        return result

    async def get_checkpoint(self, name: str) -> str | None:
        def op(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT value FROM checkpoints WHERE name=?", (name,)).fetchone()
            return None if row is None else str(row[0])

        return await self._read(op)

    # -- delivery state -------------------------------------------------------

    async def lease(
        self, subscription: str, limit: int, ttl: float, *, include_delayed: bool = False
    ) -> list[Delivery]:
        now = self._clock()
        ready = (
            "status='pending'" if include_delayed else "(status='pending' AND available_at<=:now)"
        )

        def op(conn: sqlite3.Connection) -> list[Delivery]:
            # Chosen in one row (a JSON array) and leased by their ids: two calls
            # into sqlite3, not one per row (`_rows`). '%!.17g' writes a float
            # that reads back exactly.
            (chosen,) = conn.execute(
                "SELECT json_group_array(json_array(id, seq, attempts + 1,"
                " printf('%!.17g', available_at))) FROM (SELECT id, seq, attempts, available_at"
                " FROM deliveries WHERE subscription=:sub AND status IN ('pending','leased')"
                f" AND ({ready} OR (status='leased' AND leased_until<:now))"
                " ORDER BY seq LIMIT :limit)",
                {"sub": subscription, "now": now, "limit": limit},
            ).fetchone()
            leased = [(did, seq, tries, float(at)) for did, seq, tries, at in orjson.loads(chosen)]
            if not leased:
                return []
            conn.execute(
                "UPDATE deliveries SET status='leased', leased_until=?, attempts=attempts+1"
                " WHERE id IN (SELECT value FROM json_each(?))",
                (now + ttl, ids_json([row[0] for row in leased])),
            )
            seqs = sorted({row[1] for row in leased})
            found: dict[int, Event] = {}
            missing = []
            for seq in seqs:
                cached = self._recent.get(seq)
                if cached is None:
                    missing.append(seq)
                else:
                    found[seq] = cached[0]
            for chunk in range(0, len(missing), 500):
                part = missing[chunk : chunk + 500]
                marks = ",".join("?" * len(part))
                for seq, body in conn.execute(
                    f"SELECT seq, body FROM events WHERE seq IN ({marks})", part
                ):
                    found[seq] = Event.from_json(body)
            leased.sort(key=lambda row: (row[1], row[0]))
            return [
                Delivery(did, seq, subscription, found[seq], attempts, avail)
                for did, seq, attempts, avail in leased
            ]

        return await self._write(op)

    async def extend(self, delivery_ids: Sequence[int], ttl: float) -> None:
        until = self._clock() + ttl
        ids = list(delivery_ids)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE deliveries SET leased_until=? WHERE status='leased'"
                " AND id IN (SELECT value FROM json_each(?))",
                (until, ids_json(ids)),
            )

        await self._write(op)

    async def ack(self, delivery_id: int, attempt: Attempt) -> None:
        await self.ack_many([(delivery_id, attempt)])

    async def ack_many(self, acks: Sequence[tuple[int, Attempt]]) -> None:
        rows = [(did, a.started, a.finished, a.status) for did, a in acks]

        def op(conn: sqlite3.Connection) -> None:
            for start, size in pieces(len(rows), 4):
                conn.execute(
                    _ACK_FROM.format(values=values("(?,?,?,?)", size)),
                    [value for row in rows[start : start + size] for value in row],
                )

        await self._write(op)

    def _record_failure(
        self, conn: sqlite3.Connection, delivery_id: int, attempt: Attempt
    ) -> str | None:
        error = attempt.error[:_ERROR_LIMIT] if attempt.error else None
        conn.execute(
            "INSERT INTO attempts(delivery_id, attempt, started, finished, outcome, status, error)"
            " VALUES (?,?,?,?,?,?,?)",
            (
                delivery_id,
                attempt.attempt,
                attempt.started,
                attempt.finished,
                attempt.outcome,
                attempt.status,
                error,
            ),
        )
        return error

    async def retry(
        self,
        delivery_id: int,
        attempt: Attempt,
        available_at: float,
        *,
        lease_ttl: float | None = None,
    ) -> None:
        def op(conn: sqlite3.Connection) -> None:
            error = self._record_failure(conn, delivery_id, attempt)
            if lease_ttl is not None:
                conn.execute(
                    "UPDATE deliveries SET attempts=attempts+1, available_at=?, leased_until=?,"
                    " last_status=?, last_error=? WHERE id=?",
                    (available_at, available_at + lease_ttl, attempt.status, error, delivery_id),
                )
                return
            conn.execute(
                "UPDATE deliveries SET status='pending', available_at=?, leased_until=NULL,"
                " last_status=?, last_error=? WHERE id=?",
                (available_at, attempt.status, error, delivery_id),
            )

        await self._write(op)

    async def dead(self, delivery_id: int, attempt: Attempt) -> None:
        def op(conn: sqlite3.Connection) -> None:
            error = self._record_failure(conn, delivery_id, attempt)
            conn.execute(
                "UPDATE deliveries SET status='dead', finished=?, leased_until=NULL,"
                " last_status=?, last_error=? WHERE id=?",
                (attempt.finished, attempt.status, error, delivery_id),
            )

        await self._write(op)

    async def release(self, delivery_ids: Sequence[int]) -> None:
        ids = list(delivery_ids)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE deliveries SET status='pending', attempts=max(attempts-1, 0),"
                " leased_until=NULL WHERE status='leased'"
                " AND id IN (SELECT value FROM json_each(?))",
                (ids_json(ids),),
            )

        await self._write(op)

    async def redrive(
        self, *, delivery_ids: Sequence[int] | None = None, subscription: str | None = None
    ) -> int:
        now = self._clock()
        ids = list(delivery_ids or [])
        sql = (
            "UPDATE deliveries SET status='pending', attempts=0, available_at=?,"
            " finished=NULL, leased_until=NULL WHERE status='dead'"
        )
        if ids:

            def by_id(conn: sqlite3.Connection) -> int:
                return sum(conn.execute(sql + " AND id=?", (now, i)).rowcount for i in ids)

            return await self._write(by_id)
        # A whole dead-letter queue goes back in steps, so other writes (appends,
        # acks) get their turn between them rather than waiting for all of it.
        where, params = (
            ("subscription=?", [subscription]) if subscription is not None else ("1=1", [])
        )

        def step(conn: sqlite3.Connection) -> int:
            return conn.execute(
                f"{sql} AND id IN (SELECT id FROM deliveries WHERE status='dead' AND {where}"
                " LIMIT ?)",
                [now, *params, _STEP],
            ).rowcount

        total = 0
        while (done := await self._write(step)) > 0:
            total += done
        return total

    async def replay(
        self,
        subscription: str,
        *,
        since: float | None = None,
        until: float | None = None,
        subjects: Sequence[str] | None = None,
        at_most: int | None = None,
        matches: Callable[[Event], bool] | None = None,
        dry_run: bool = False,
    ) -> int:
        now = self._clock()
        # Async calls live in the log too, but belong to the function they named.
        where = ["received >= ?", "received <= ?", f"type != '{INVOCATION_TYPE}'"]
        params: list[Any] = [
            since if since is not None else 0.0,
            until if until is not None else now,
        ]
        if subjects:
            where.append(f"subject IN ({','.join('?' * len(subjects))})")
            params.extend(subjects)
        matching = " AND ".join(where)

        def count(conn: sqlite3.Connection) -> int:
            query = f"SELECT count(*) FROM events WHERE {matching}"
            return int(conn.execute(query, params).fetchone()[0])

        if at_most is not None or (dry_run and matches is None):
            found = await self._read(count)
            if at_most is not None and found > at_most:
                raise ReplayTooLarge(found, at_most)
            if dry_run and matches is None:
                return found
        if matches is not None:
            return await self._replay_matching(subscription, matching, params, matches, dry_run)

        # In steps of _STEP events in log order, so other writes interleave.
        def step(conn: sqlite3.Connection, after: int) -> tuple[int, int]:
            seqs = conn.execute(
                "INSERT INTO deliveries(seq, subscription, status, attempts, available_at,"
                " created, origin) SELECT seq, ?, 'pending', 0, ?, ?, 'replay' FROM events"
                f" WHERE seq > ? AND {matching} ORDER BY seq LIMIT ? RETURNING seq",
                [subscription, now, now, after, *params, _STEP],
            ).fetchall()
            return len(seqs), max((seq for (seq,) in seqs), default=after)

        total, after = 0, 0
        while True:
            done, after = await self._write(functools.partial(step, after=after))
            total += done
            if done < _STEP:
                return total

    async def _replay_matching(
        self,
        subscription: str,
        matching: str,
        params: list[Any],
        matches: Callable[[Event], bool],
        dry_run: bool,
    ) -> int:
        """Replay what `matches` takes of the range: events are read and matched
        on the reader thread, _STEP at a time, and only the chosen seqs written."""
        now = self._clock()

        def read(conn: sqlite3.Connection, after: int) -> tuple[int, int, list[int]]:
            rows = conn.execute(
                f"SELECT seq, body FROM events WHERE seq > ? AND {matching} ORDER BY seq LIMIT ?",
                [after, *params, _STEP],
            ).fetchall()
            chosen = [seq for seq, body in rows if matches(Event.from_json(body))]
            return len(rows), (rows[-1][0] if rows else after), chosen

        def insert(conn: sqlite3.Connection, seqs: list[int]) -> None:
            conn.executemany(
                "INSERT INTO deliveries(seq, subscription, status, attempts, available_at,"
                " created, origin) VALUES (?, ?, 'pending', 0, ?, ?, 'replay')",
                [(seq, subscription, now, now) for seq in seqs],
            )

        total, after = 0, 0
        while True:
            read_rows, after, chosen = await self._read(functools.partial(read, after=after))
            if chosen and not dry_run:
                await self._write(functools.partial(insert, seqs=chosen))
            total += len(chosen)
            if read_rows < _STEP:
                return total

    async def forget(self, subscription: str) -> int:
        def op(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM deliveries WHERE subscription=? AND status IN ('pending','leased')",
                (subscription,),
            ).rowcount

        return await self._write(op)

    async def prune(self, received_before: float) -> int:
        """Drop every event received before the cutoff whose deliveries are all
        delivered (with their deliveries and attempts); an event with a pending,
        leased or dead delivery stays. In short background steps (see `_PruneSteps`),
        so appends, leases and acks never wait behind more than one of them."""
        if self._checkpointer is None:
            raise RuntimeError("event log is not open")
        checkpointer = self._checkpointer
        steps = _PruneSteps(received_before)
        checkpointer.hurry.set()
        try:
            passes, spent = checkpointer.passes, 0.0
            while not steps.done:
                # Deleting writes to the WAL as fast as the disk takes it; were the
                # checkpointer left behind, the WAL would grow, and the restart that
                # rewinds it would hold appends up while it copied all of that.
                if spent >= _PRUNE_PER_PASS:
                    while checkpointer.passes == passes and not checkpointer.stop.is_set():
                        await asyncio.sleep(_PRUNE_PASS_POLL)
                    passes, spent = checkpointer.passes, 0.0
                step = await self._write(steps.step, background=True)
                steps.advance(step)
                spent += step.seconds
        finally:
            checkpointer.hurry.clear()
        return steps.pruned

    # -- queries --------------------------------------------------------------

    async def events(
        self,
        *,
        after_seq: int = 0,
        limit: int = 100,
        subject: str | None = None,
        newest_first: bool = False,
    ) -> list[EventRecord]:
        where, params = ["seq > ?"], [after_seq]
        if subject:
            where.append("subject = ?")
            params.append(subject)  # type: ignore[arg-type]
        order = "DESC" if newest_first else "ASC"

        def op(conn: sqlite3.Connection) -> list[EventRecord]:
            rows = conn.execute(
                f"SELECT seq, received, body FROM events WHERE {' AND '.join(where)}"
                f" ORDER BY seq {order} LIMIT ?",
                [*params, limit],
            ).fetchall()
            return [
                EventRecord(seq, received, Event.from_json(body)) for seq, received, body in rows
            ]

        return await self._read(op)

    async def event(self, event_id: str) -> EventRecord | None:
        def op(conn: sqlite3.Connection) -> EventRecord | None:
            row = conn.execute(
                "SELECT seq, received, body FROM events WHERE id=? ORDER BY seq LIMIT 1",
                (event_id,),
            ).fetchone()
            return None if row is None else EventRecord(row[0], row[1], Event.from_json(row[2]))

        return await self._read(op)

    async def deliveries(
        self,
        *,
        subscription: str | None = None,
        status: Status | None = None,
        event_id: str | None = None,
        limit: int = 100,
        with_history: bool = False,
    ) -> list[DeliveryInfo]:
        where, params = ["1=1"], []
        if subscription:
            where.append("d.subscription = ?")
            params.append(subscription)
        if status:
            where.append("d.status = ?")
            params.append(status)
        if event_id:
            where.append("e.id = ?")
            params.append(event_id)

        def op(conn: sqlite3.Connection) -> list[DeliveryInfo]:
            rows = conn.execute(
                f"{_DELIVERY_INFO} WHERE {' AND '.join(where)} ORDER BY d.id DESC LIMIT ?",
                [*params, limit],
            ).fetchall()
            infos = [DeliveryInfo(*row) for row in rows]
            if with_history:
                infos = [_with_history(conn, info) for info in infos]
            return infos

        return await self._read(op)

    async def delivery(self, delivery_id: int) -> DeliveryInfo | None:
        def op(conn: sqlite3.Connection) -> DeliveryInfo | None:
            row = conn.execute(
                f"{_DELIVERY_INFO} WHERE d.id=?",
                (delivery_id,),
            ).fetchone()
            return None if row is None else _with_history(conn, DeliveryInfo(*row))

        return await self._read(op)

    async def counts(self) -> dict[str, dict[str, int]]:
        def op(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = {}
            for sub, status, n in conn.execute(
                "SELECT subscription, status, count(*) FROM deliveries GROUP BY 1, 2"
            ):
                out.setdefault(sub, {})[status] = n
            return out

        return await self._read(op)

    async def backlog(self) -> dict[str, Backlog]:
        def op(conn: sqlite3.Connection) -> dict[str, Backlog]:
            # Both read partial indexes (deliveries_open, deliveries_dead): what is
            # open or dead, never the delivered rows that make up most of the log.
            found = {
                sub: Backlog(n, oldest)
                for sub, n, oldest in conn.execute(
                    "SELECT subscription, count(*), min(created) FROM deliveries"
                    " WHERE status IN ('pending','leased') GROUP BY subscription"
                )
            }
            for sub, n in conn.execute(
                "SELECT subscription, count(*) FROM deliveries WHERE status='dead'"
                " GROUP BY subscription"
            ):
                open_ = found.get(sub, Backlog())
                found[sub] = Backlog(open_.open, open_.oldest, n)
            return found

        return await self._read(op)

    async def size(self) -> LogSize:
        def size_of(path: Path) -> int:
            try:
                return path.stat().st_size
            except FileNotFoundError:
                return 0

        wal = self.path.with_name(self.path.name + "-wal")
        return LogSize(size_of(self.path), size_of(wal))

    async def subject_counts(self, after_seq: int = 0) -> SubjectCounts:
        def op(conn: sqlite3.Connection) -> SubjectCounts:
            (upto,) = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
            rows = conn.execute(  # a range of the primary key: cheap asked often
                "SELECT subject, type, count(*) FROM events WHERE seq > ? AND seq <= ?"
                " GROUP BY subject, type",
                (after_seq, upto),
            ).fetchall()
            return SubjectCounts(int(upto), tuple((str(s), str(t), int(n)) for s, t, n in rows))

        return await self._read(op)

    async def checkpoints(self) -> list[Checkpoint]:
        def op(conn: sqlite3.Connection) -> list[Checkpoint]:
            rows = conn.execute("SELECT name, value, updated FROM checkpoints ORDER BY name")
            return [Checkpoint(*row) for row in rows]

        return await self._read(op)


class _PruneStep(NamedTuple):
    read: int  # index entries read
    last: tuple[float, int]  # (received, seq) of the last one
    deleted: int  # events deleted
    seconds: float  # writer time taken


class _PruneSteps:
    """Retention as a walk along the events_received index, from the oldest event
    to the cutoff, a step at a time; the walk's position is kept between steps,
    so an event that must stay (a dead letter, an open delivery) is read once per
    prune, not once per step. Each step reads at most `size` index entries and
    deletes those of them that need nothing more; `size` follows the measured
    time of the steps, so that one takes about _PRUNE_STEP_SECONDS of writer time
    however fast the disk: what an append arriving meanwhile may have to wait."""

    def __init__(self, cutoff: float) -> None:
        self.cutoff = cutoff
        self.size = _PRUNE_STEP_FIRST
        self.pruned = 0
        self.done = False
        self._after: tuple[float, int] = (float("-inf"), 0)  # (received, seq) last read

    def step(self, conn: sqlite3.Connection) -> _PruneStep:
        """One step, in the writer's transaction; the walk advances only once it
        has committed (`advance`)."""
        started = time.perf_counter()
        received, seq = self._after
        rows = conn.execute(
            "SELECT received, seq, NOT EXISTS (SELECT 1 FROM deliveries d"
            " WHERE d.seq = events.seq AND d.status != 'delivered')"
            " FROM events WHERE received >= ? AND received < ? AND (received > ? OR seq > ?)"
            " ORDER BY received, seq LIMIT ?",
            (received, self.cutoff, received, seq, self.size),
        ).fetchall()
        seqs = [row_seq for _, row_seq, finished in rows if finished]
        if seqs:
            marks = ",".join("?" * len(seqs))
            conn.execute(
                "DELETE FROM attempts WHERE delivery_id IN"
                f" (SELECT id FROM deliveries WHERE seq IN ({marks}))",
                seqs,
            )
            conn.execute(f"DELETE FROM deliveries WHERE seq IN ({marks})", seqs)
            conn.execute(f"DELETE FROM events WHERE seq IN ({marks})", seqs)
        last = (rows[-1][0], rows[-1][1]) if rows else self._after
        return _PruneStep(len(rows), last, len(seqs), time.perf_counter() - started)

    def advance(self, step: _PruneStep) -> None:
        self._after = step.last
        self.pruned += step.deleted
        self.done = step.read < self.size
        if step.seconds > 0:  # halfway towards the size that would have taken the target
            ideal = self.size * _PRUNE_STEP_SECONDS / step.seconds
            self.size = int(min(max((self.size + ideal) / 2, _PRUNE_STEP_MIN), _PRUNE_STEP_MAX))


def _with_history(conn: sqlite3.Connection, info: DeliveryInfo) -> DeliveryInfo:
    rows = conn.execute(
        "SELECT attempt, started, finished, outcome, status, error FROM attempts"
        " WHERE delivery_id=? ORDER BY started",
        (info.id,),
    ).fetchall()
    history = [Attempt(*row) for row in rows]
    if info.status == "delivered" and info.finished is not None:
        (started,) = conn.execute(
            "SELECT started FROM deliveries WHERE id=?", (info.id,)
        ).fetchone()
        status = info.last_status or 200
        history.append(
            Attempt(info.attempts, started or info.finished, info.finished, "ok", status)
        )
    return DeliveryInfo(**{**info.to_dict(), "history": tuple(history)})
