"""Versioned schema of the SQLite log. Each migration runs once, in order, in one
transaction; `PRAGMA user_version` records how far a file has come."""

from __future__ import annotations

import sqlite3

__all__ = ["MIGRATIONS", "SchemaTooNew", "migrate"]

MIGRATIONS: tuple[str, ...] = (
    # 1: events, their deliveries, failed attempts, provider checkpoints.
    """
    CREATE TABLE events (
        seq      INTEGER PRIMARY KEY,
        source   TEXT NOT NULL,
        id       TEXT NOT NULL,
        type     TEXT NOT NULL,
        subject  TEXT NOT NULL DEFAULT '',
        time     TEXT NOT NULL DEFAULT '',
        received REAL NOT NULL,
        body     BLOB NOT NULL,
        UNIQUE (source, id)
    );
    CREATE INDEX events_id ON events(id);
    CREATE INDEX events_received ON events(received);
    CREATE TABLE deliveries (
        id           INTEGER PRIMARY KEY,
        seq          INTEGER NOT NULL REFERENCES events(seq),
        subscription TEXT NOT NULL,
        status       TEXT NOT NULL CHECK (status IN ('pending','leased','delivered','dead')),
        attempts     INTEGER NOT NULL DEFAULT 0,
        available_at REAL NOT NULL,
        leased_until REAL,
        created      REAL NOT NULL,
        started      REAL,
        finished     REAL,
        last_status  INTEGER,
        last_error   TEXT,
        origin       TEXT NOT NULL DEFAULT 'route'
    );
    -- Only open deliveries are indexed, so the index stays small however long the log.
    CREATE INDEX deliveries_open ON deliveries(subscription, seq)
        WHERE status IN ('pending','leased');
    CREATE INDEX deliveries_dead ON deliveries(subscription) WHERE status = 'dead';
    CREATE INDEX deliveries_seq ON deliveries(seq);
    CREATE TABLE attempts (
        delivery_id INTEGER NOT NULL REFERENCES deliveries(id) ON DELETE CASCADE,
        attempt     INTEGER NOT NULL,
        started     REAL NOT NULL,
        finished    REAL NOT NULL,
        outcome     TEXT NOT NULL,
        status      INTEGER NOT NULL,
        error       TEXT
    );
    CREATE INDEX attempts_delivery ON attempts(delivery_id);
    CREATE TABLE checkpoints (
        name    TEXT PRIMARY KEY,
        value   TEXT NOT NULL,
        updated REAL NOT NULL
    );
    """,
    # 2: the functions' key-value store (idempotency records, watermarks): one row
    # per (namespace, key); `revision` comes from one counter for the whole store,
    # so a key deleted and created again never reuses a revision (no ABA for CAS).
    # An entry past `expires_at` is gone for every reader; rows are purged lazily.
    """
    CREATE TABLE store (
        namespace  TEXT NOT NULL,
        key        TEXT NOT NULL,
        value      BLOB NOT NULL,
        revision   INTEGER NOT NULL,
        created    REAL NOT NULL,
        updated    REAL NOT NULL,
        expires_at REAL,
        PRIMARY KEY (namespace, key)
    );
    CREATE INDEX store_expiry ON store(expires_at) WHERE expires_at IS NOT NULL;
    CREATE TABLE store_revision (
        id    INTEGER PRIMARY KEY CHECK (id = 1),
        value INTEGER NOT NULL
    );
    INSERT INTO store_revision(id, value) VALUES (1, 0);
    """,
)


class SchemaTooNew(RuntimeError):
    """The file was written by a newer veba; refusing to touch it."""


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to date; returns the version now in force."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > len(MIGRATIONS):
        raise SchemaTooNew(
            f"event log schema version {version} is newer than this veba knows"
            f" ({len(MIGRATIONS)}); upgrade veba"
        )
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return len(MIGRATIONS)
