"""The threads behind the SQLite log: one writer doing group commit, and one
checkpointer keeping the WAL short without making a commit wait for an fsync."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veba.eventlog.base import LogFull

_MAX_BATCH = 1000
_WAL_LIMIT = 64 << 20  # bytes in the WAL before the writer is made to wait for a rewind
# A background op (a retention step) runs when no other op is queued; under a
# load that never lets the queue empty, it runs anyway once it has waited this
# long, so retention slows down under load but is never starved outright.
_BACKGROUND_WAIT = 0.5

Result = tuple[asyncio.Future[Any], Any, BaseException | None]


@dataclass(slots=True)
class Op:
    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    # Background ops (retention's steps) yield to all others: each runs alone in
    # a transaction of its own, only when nothing else is waiting for the writer.
    background: bool = False
    queued: float = 0.0  # when the writer took it up (monotonic), for background ops


def connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def resolve(results: list[Result]) -> None:
    for future, value, error in results:
        if future.cancelled():
            continue
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)


class Writer(threading.Thread):
    """The single writer: runs queued operations in shared transactions, and
    background ones (retention) one at a time whenever it would otherwise idle."""

    def __init__(self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(name="veba-sqlite-writer", daemon=True)
        self._conn = conn
        self._loop = loop
        self.queue: queue.SimpleQueue[Op | None] = queue.SimpleQueue()

    def run(self) -> None:
        stopping = False
        waiting: deque[Op] = deque()  # background ops, oldest first
        while not stopping:
            if not waiting:
                first = self.queue.get()
            else:
                try:
                    first = self.queue.get_nowait()
                except queue.Empty:  # nothing else wants the writer: its turn
                    self._run([waiting.popleft()])
                    continue
            if first is None:
                break
            batch: list[Op] = []
            self._add(first, batch, waiting)
            while len(batch) < _MAX_BATCH:
                try:
                    nxt = self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                self._add(nxt, batch, waiting)
            if batch:
                self._run(batch)
            if waiting and not stopping and self._overdue(waiting[0]):
                self._run([waiting.popleft()])
        self._conn.close()
        # Background work left over (a prune cut short by close) fails, not hangs.
        closed = RuntimeError("event log is closed")
        left: list[Result] = [(op.future, None, closed) for op in waiting]
        with contextlib.suppress(RuntimeError):  # the loop itself may be gone
            self._loop.call_soon_threadsafe(resolve, left)

    def _run(self, batch: list[Op]) -> None:
        results = self._run_batch(batch)
        self._loop.call_soon_threadsafe(resolve, results)

    @staticmethod
    def _add(op: Op, batch: list[Op], waiting: deque[Op]) -> None:
        if op.background:
            op.queued = time.monotonic()
            waiting.append(op)
        else:
            batch.append(op)

    @staticmethod
    def _overdue(op: Op) -> bool:
        return time.monotonic() - op.queued > _BACKGROUND_WAIT

    def _run_batch(self, batch: list[Op]) -> list[Result]:
        # Fast path: the whole batch in one transaction. Should any op fail, the
        # batch is rolled back and each op is run again in a transaction of its
        # own, so one bad op cannot sink the others.
        try:
            return self._transaction(batch)
        except Exception as exc:
            if len(batch) == 1:
                return [(batch[0].future, None, translate(exc))]
        results: list[Result] = []
        for op in batch:
            try:
                results.extend(self._transaction([op]))
            except Exception as exc:
                results.append((op.future, None, translate(exc)))
        return results

    def _transaction(self, batch: list[Op]) -> list[Result]:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            values = [op.fn(conn) for op in batch]
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return [(op.future, value, None) for op, value in zip(batch, values, strict=True)]


class Checkpointer(threading.Thread):
    """Copies the WAL into the database file five times a second without
    blocking the writer (PASSIVE), so commits never wait for an fsync.

    While `hurry` is set (a long prune writes fast), passes come ten times as
    often, so each has little to copy, and so has a restart should one come:
    that one holds the writer for as long as it copies and syncs (see
    `_rewind`)."""

    def __init__(self, conn: sqlite3.Connection, path: Path, interval: float = 0.2) -> None:
        super().__init__(name="veba-sqlite-checkpoint", daemon=True)
        self._conn = conn
        self._files = (path, path.with_name(path.name + "-wal"))
        self._interval = interval
        self._hurried = interval / 10
        self.stop = threading.Event()
        self.hurry = threading.Event()
        self.passes = 0  # passes made, so a waiter can tell when the next one is done
        # A sync of both files asked for ahead of a restart; set once it is done.
        self._syncing: threading.Thread | None = None
        self._synced = threading.Event()
        self._wake = threading.Event()  # the next pass now: stopping, or synced

    def finish(self) -> None:
        """End the passes (the last one truncates the WAL); `join` waits for it."""
        self.stop.set()
        self._wake.set()

    def run(self) -> None:
        try:
            (page,) = self._conn.execute("PRAGMA page_size").fetchone()
            while True:
                self._wake.wait(self._hurried if self.hurry.is_set() else self._interval)
                self._wake.clear()
                if self.stop.is_set():
                    break
                try:
                    _, frames, _ = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if frames * page > _WAL_LIMIT:
                        self._rewind(wait=frames * page > 4 * _WAL_LIMIT)
                except sqlite3.Error:
                    pass  # busy or full: the next round tries again
                self.passes += 1
            self._conn.execute("PRAGMA busy_timeout=30000")
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._conn.close()

    def _rewind(self, *, wait: bool) -> None:
        """Under a constant stream of commits a passive checkpoint may never catch
        the WAL's end, so the WAL never rewinds: now and then, one that does.

        RESTART, not TRUNCATE: right after a passive pass a restart held the writer
        under 1 ms, where truncating a 64-160 MB WAL file held it 80-250 ms here;
        the file keeps its size and is written over from its start. Without
        `wait` it gives up at once if the writer is mid-transaction or a reader
        still reads from the WAL (a restart waits for readers holding the writer
        lock, so a long API read would stall appends); the next pass tries again,
        and only a WAL four times over the limit makes it wait.

        A restart also syncs both files while it holds the writer, and what
        passive passes copied is unsynced until one of them copies everything,
        which under a stream of commits is seldom: during a 1,000,000-event
        prune at 500 appends/s restarts held appends 20-100 ms. So the files are
        synced first, in a thread of their own while passes go on (a slow disk
        must not hold up the restart either: the WAL grows meanwhile), and the
        restart comes in a pass made as soon as that is done: it then syncs what
        that pass copied, and held appends 0.2-3 ms in the same run. A WAL four
        times over its limit is restarted at once, synced or not."""
        if not wait and not self._synced.is_set():
            if self._syncing is None or not self._syncing.is_alive():
                self._syncing = threading.Thread(
                    target=self._sync, name="veba-sqlite-sync", daemon=True
                )
                self._syncing.start()
            return
        self._synced.clear()
        self._conn.execute(f"PRAGMA busy_timeout={30000 if wait else 0}")
        try:
            self._conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        finally:
            self._conn.execute("PRAGMA busy_timeout=30000")

    def _sync(self) -> None:
        for file in self._files:
            with contextlib.suppress(OSError):  # the restart syncs anyway
                descriptor = os.open(file, os.O_RDONLY)
                try:
                    os.fsync(descriptor)
                finally:
                    os.close(descriptor)
        self._synced.set()
        self._wake.set()


def translate(exc: BaseException) -> BaseException:
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc)
        if "full" in text or "readonly" in text or "disk I/O" in text:
            return LogFull(f"event log cannot commit: {text}")
    return exc
