"""`Store` on the SQLite log's file: table `store` (schema migration 2).

Writes go through the log's single writer thread (`SQLiteLog.write`), so they
share its group commits, and a compare-and-set is atomic because nothing else
writes in between; reads use the log's read connection (`SQLiteLog.read`). A
conditional write that finds another revision returns its verdict instead of
raising inside the writer, so it never rolls back the batch it shares a
transaction with.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import orjson

from veba.eventlog.sqlite import SQLiteLog
from veba.store import (
    Entry,
    RevisionMismatch,
    check_key,
    check_namespace,
    check_ttl,
    encode_value,
)

__all__ = ["SQLiteStore"]

_PURGE_BATCH = 64  # expired rows removed by each write, so the table stays bounded
_COLUMNS = "namespace, key, value, revision, created, updated, expires_at"
_LIVE = "(expires_at IS NULL OR expires_at > ?)"


def _entry(row: tuple[Any, ...]) -> Entry:
    namespace, key, value, revision, created, updated, expires_at = row
    return Entry(namespace, key, orjson.loads(value), revision, created, updated, expires_at)


def _live(conn: sqlite3.Connection, namespace: str, key: str, now: float) -> Entry | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM store WHERE namespace=? AND key=? AND {_LIVE}",
        (namespace, key, now),
    ).fetchone()
    return None if row is None else _entry(row)


def _purge(conn: sqlite3.Connection, now: float) -> None:
    conn.execute(
        "DELETE FROM store WHERE rowid IN (SELECT rowid FROM store"
        " WHERE expires_at IS NOT NULL AND expires_at <= ? LIMIT ?)",
        (now, _PURGE_BATCH),
    )


class SQLiteStore:
    """The `Store` of an open `SQLiteLog`, on the same file and writer."""

    def __init__(self, log: SQLiteLog, *, clock: Callable[[], float] | None = None) -> None:
        self._log = log
        self._clock = clock or log.clock

    async def get(self, namespace: str, key: str) -> Entry | None:
        check_namespace(namespace)
        check_key(key)
        now = self._clock()
        return await self._log.read(lambda conn: _live(conn, namespace, key, now))

    async def put(
        self,
        namespace: str,
        key: str,
        value: Any,
        *,
        ttl: float | None = None,
        expect_revision: int | None = None,
    ) -> Entry:
        check_namespace(namespace)
        check_key(key)
        ttl = check_ttl(ttl)
        data = encode_value(value)
        now = self._clock()
        expires_at = None if ttl is None else now + ttl

        def op(conn: sqlite3.Connection) -> Entry | RevisionMismatch:
            _purge(conn, now)
            current = _live(conn, namespace, key, now)
            if expect_revision is not None and expect_revision != (
                current.revision if current else 0
            ):
                return RevisionMismatch(namespace, key, expect_revision, current)
            (revision,) = conn.execute(
                "UPDATE store_revision SET value = value + 1 WHERE id = 1 RETURNING value"
            ).fetchone()
            created = current.created if current else now
            conn.execute(
                f"INSERT INTO store({_COLUMNS}) VALUES (?,?,?,?,?,?,?)"
                " ON CONFLICT(namespace, key) DO UPDATE SET value=excluded.value,"
                " revision=excluded.revision, created=excluded.created,"
                " updated=excluded.updated, expires_at=excluded.expires_at",
                (namespace, key, data, revision, created, now, expires_at),
            )
            return Entry(namespace, key, orjson.loads(data), revision, created, now, expires_at)

        result = await self._log.write(op)
        if isinstance(result, RevisionMismatch):
            raise result
        return result

    async def delete(self, namespace: str, key: str, *, expect_revision: int | None = None) -> bool:
        check_namespace(namespace)
        check_key(key)
        now = self._clock()

        def op(conn: sqlite3.Connection) -> bool | RevisionMismatch:
            _purge(conn, now)
            current = _live(conn, namespace, key, now)
            if expect_revision is not None and expect_revision != (
                current.revision if current else 0
            ):
                return RevisionMismatch(namespace, key, expect_revision, current)
            if current is None:
                return False
            conn.execute("DELETE FROM store WHERE namespace=? AND key=?", (namespace, key))
            return True

        result = await self._log.write(op)
        if isinstance(result, RevisionMismatch):
            raise result
        return result

    async def namespaces(self) -> list[str]:
        now = self._clock()

        def op(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                f"SELECT DISTINCT namespace FROM store WHERE {_LIVE} ORDER BY namespace", (now,)
            ).fetchall()
            return [str(namespace) for (namespace,) in rows]

        return await self._log.read(op)

    async def list(self, namespace: str, *, prefix: str = "", limit: int = 1000) -> list[Entry]:
        check_namespace(namespace)
        now = self._clock()
        # Keys hold no LIKE wildcards but '_'; compare the prefix as a range instead.
        low, high = prefix, prefix + "\U0010ffff"

        def op(conn: sqlite3.Connection) -> list[Entry]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM store WHERE namespace=? AND key>=? AND key<?"
                f" AND {_LIVE} ORDER BY key LIMIT ?",
                (namespace, low, high, now, max(0, limit)),
            ).fetchall()
            return [_entry(row) for row in rows]

        return await self._log.read(op)

    async def drop(self, namespace: str) -> int:
        check_namespace(namespace)

        def op(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM store WHERE namespace=?", (namespace,)).rowcount

        return await self._log.write(op)
