"""The threads behind the SQLite log: one writer doing group commit, and one
checkpointer keeping the WAL short without making a commit wait for an fsync."""

from __future__ import annotations

import asyncio
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veba.eventlog.base import LogFull

_MAX_BATCH = 1000
_WAL_LIMIT = 64 << 20  # bytes of WAL before the writer is made to wait for a rewind

Result = tuple[asyncio.Future[Any], Any, BaseException | None]


@dataclass(slots=True)
class Op:
    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]


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
    """The single writer: runs queued operations in shared transactions."""

    def __init__(self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(name="veba-sqlite-writer", daemon=True)
        self._conn = conn
        self._loop = loop
        self.queue: queue.SimpleQueue[Op | None] = queue.SimpleQueue()

    def run(self) -> None:
        stopping = False
        while not stopping:
            first = self.queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < _MAX_BATCH:
                try:
                    nxt = self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                batch.append(nxt)
            results = self._run_batch(batch)
            self._loop.call_soon_threadsafe(resolve, results)
        self._conn.close()

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
    blocking the writer (PASSIVE), so commits never wait for an fsync."""

    def __init__(self, conn: sqlite3.Connection, wal: Path, interval: float = 0.2) -> None:
        super().__init__(name="veba-sqlite-checkpoint", daemon=True)
        self._conn = conn
        self._wal = wal
        self._interval = interval
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.wait(self._interval):
                try:
                    self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    if self._wal_size() > _WAL_LIMIT:
                        # Under a constant stream of commits a passive checkpoint
                        # may never catch the WAL's end, so the file never rewinds:
                        # now and then, make the writer wait for one that does.
                        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error:
                    continue  # busy or full: the next round tries again
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._conn.close()

    def _wal_size(self) -> int:
        try:
            return os.stat(self._wal).st_size
        except OSError:
            return 0


def translate(exc: BaseException) -> BaseException:
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc)
        if "full" in text or "readonly" in text or "disk I/O" in text:
            return LogFull(f"event log cannot commit: {text}")
    return exc
