"""Many rows in one statement: how the SQLite log's writer spends few calls.

Each call into sqlite3 lets go of the GIL while SQLite works and must take it
back from the event loop's thread, which holds it most of the time under load:
taking it back can wait up to the interpreter's switch interval (5 ms). A
writer that made one call per row (an `execute` or an `executemany` step per
delivery) waited that way once per row. Measured with a busy second thread,
inserting 2,000 delivery rows took 2.8 ms a row one `execute` at a time, 3.7
ms with `executemany` and 0.14 ms in multi-row statements (4.5, 4.4 and 2.4 µs
a row with nobody else wanting the GIL). So the writer's hot statements here
handle a whole batch of rows a call: inserts with many `VALUES` rows, updates
that join a `VALUES` list or a JSON array of ids.

Statements come in a few fixed sizes (256, 64, 16, 4 and 1 rows), so sqlite3's
statement cache holds a handful of texts rather than one per batch size.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

import orjson

__all__ = ["ids_json", "insert_events", "insert_rows", "pieces", "values"]

_SIZES = (256, 64, 16, 4, 1)
_PARAMETERS = 999
_INSERT_EVENT = "INSERT INTO events(source, id, type, subject, time, received, body) VALUES "
_EVENT_ROW = "(?,?,?,?,?,?,?)"


def pieces(count: int, width: int) -> Iterator[tuple[int, int]]:
    """(start, size) of consecutive pieces covering `count` rows of `width`
    values each, biggest first, each of one of the fixed sizes and within
    SQLite's oldest limit on a statement's parameters (999)."""
    most = _PARAMETERS // max(width, 1)
    start = 0
    for size in _SIZES:
        if size > most:
            continue
        while count - start >= size:
            yield start, size
            start += size


@functools.cache
def values(row: str, size: int) -> str:
    """`row` (``(?,?)``) `size` times, for a ``VALUES`` list."""
    return ",".join([row] * size)


def insert_rows(
    conn: sqlite3.Connection, head: str, row: str, rows: Sequence[Sequence[Any]]
) -> list[int]:
    """`head` (``INSERT INTO t(a, b) VALUES ``) with every one of `rows` (each
    bound to the placeholders of `row`, ``(?,?)``); the rowid each was given,
    in order. A table's new rows take the rowids after its largest in the order
    they are inserted (SQLite's rule until a rowid reaches 2**63 - 1), so the
    last rowid of a statement tells every one of its rows'."""
    ids: list[int] = []
    for start, size in pieces(len(rows), row.count("?")):
        params = [value for one in rows[start : start + size] for value in one]
        cur = conn.execute(head + values(row, size), params)
        last = int(cur.lastrowid or 0)
        ids.extend(range(last - size + 1, last + 1))
    return ids


def insert_events(
    conn: sqlite3.Connection, rows: Sequence[tuple[str, str, str, str, str, float, bytes]]
) -> list[tuple[int, int]]:
    """Log `rows` (source, id, type, subject, time, received, body) unless their
    (source, id) is logged already; (seq, index in `rows`) of each one logged
    now, in order. A row repeating an earlier one of `rows` is a duplicate too."""
    new: list[tuple[int, int]] = []
    for start, size in pieces(len(rows), _EVENT_ROW.count("?")):
        chunk = rows[start : start + size]
        cur = conn.execute(
            _INSERT_EVENT + values(_EVENT_ROW, size) + " ON CONFLICT(source, id) DO NOTHING",
            [value for row in chunk for value in row],
        )
        logged = cur.rowcount
        if logged <= 0:
            continue
        last = int(cur.lastrowid or 0)
        first = last - logged + 1
        if logged == size:
            new.extend((first + k, start + k) for k in range(size))
            continue
        # Some were duplicates: which rows these seqs went to, by (source, id);
        # of rows repeating one another the first was logged.
        seqs = {
            (source, eid): seq
            for seq, source, eid in conn.execute(
                "SELECT seq, source, id FROM events WHERE seq BETWEEN ? AND ?", (first, last)
            )
        }
        for k, row in enumerate(chunk):
            seq = seqs.pop((row[0], row[1]), None)
            if seq is not None:
                new.append((seq, start + k))
    return new


def ids_json(ids: Sequence[int]) -> bytes:
    """Ids as a JSON array, for ``... WHERE id IN (SELECT value FROM json_each(?))``."""
    return orjson.dumps(list(ids))
