"""The functions' key-value store: the SQLite and JetStream implementations and
its HTTP API.

`StoreConformance` is what every `Store` must do; the API tests run the real
app under uvicorn and speak HTTP to it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.jetstream_buckets import prefixed_buckets
from tests.natscluster import NatsCluster, module_cluster_fixture  # noqa: F401
from tests.support import ServedAppliance
from veba.eventlog import SQLiteLog
from veba.eventlog.schema import MIGRATIONS
from veba.eventlog.sqlite_store import SQLiteStore
from veba.jetstream import JetStreamStore
from veba.store import (
    MAX_VALUE_BYTES,
    InvalidStoreRequest,
    RevisionMismatch,
    Store,
    StoreTokens,
    local_api_url,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def log(tmp_path: Path, clock: Clock) -> AsyncIterator[SQLiteLog]:
    log = SQLiteLog(tmp_path / "events.db", clock=clock)
    await log.open()
    yield log
    await log.close()


@pytest.fixture
def store(log: SQLiteLog) -> Store:
    return SQLiteStore(log)


class StoreConformance:
    """What any `Store` does; a subclass provides `store` and a settable `clock`."""

    async def test_put_get_and_revisions_grow(self, store: Store) -> None:
        assert await store.get("fn", "a") is None
        first = await store.put("fn", "a", {"n": 1})
        assert first.value == {"n": 1} and first.revision > 0 and first.expires_at is None
        second = await store.put("fn", "a", [1, "two", None])
        assert second.revision > first.revision
        assert second.created == first.created
        got = await store.get("fn", "a")
        assert got is not None and got.value == [1, "two", None]
        assert got.revision == second.revision

    async def test_create_only_if_absent(self, store: Store) -> None:
        made = await store.put("fn", "k", "mine", expect_revision=0)
        with pytest.raises(RevisionMismatch) as info:
            await store.put("fn", "k", "theirs", expect_revision=0)
        assert info.value.current is not None
        assert info.value.current.value == "mine"
        assert info.value.current.revision == made.revision
        assert (await store.get("fn", "k")).value == "mine"  # type: ignore[union-attr]

    async def test_compare_and_set_on_the_revision(self, store: Store) -> None:
        v1 = await store.put("fn", "k", 1)
        v2 = await store.put("fn", "k", 2, expect_revision=v1.revision)
        with pytest.raises(RevisionMismatch) as info:
            await store.put("fn", "k", 3, expect_revision=v1.revision)  # stale
        assert info.value.current is not None and info.value.current.value == 2
        with pytest.raises(RevisionMismatch) as missing:
            await store.put("fn", "other", 1, expect_revision=v2.revision)
        assert missing.value.current is None
        assert (await store.get("fn", "k")).value == 2  # type: ignore[union-attr]

    async def test_concurrent_compare_and_set_loses_no_update(self, store: Store) -> None:
        await store.put("fn", "counter", 0)

        async def increment() -> int:
            conflicts = 0
            while True:
                current = await store.get("fn", "counter")
                assert current is not None
                try:
                    await store.put(
                        "fn", "counter", current.value + 1, expect_revision=current.revision
                    )
                    return conflicts
                except RevisionMismatch:
                    conflicts += 1

        conflicts = await asyncio.gather(*(increment() for _ in range(40)))
        assert (await store.get("fn", "counter")).value == 40  # type: ignore[union-attr]
        assert sum(conflicts) > 0  # they did race

    async def test_delete_and_conditional_delete(self, store: Store) -> None:
        entry = await store.put("fn", "k", "v")
        with pytest.raises(RevisionMismatch):
            await store.delete("fn", "k", expect_revision=entry.revision + 1000)
        assert await store.delete("fn", "k", expect_revision=entry.revision) is True
        assert await store.get("fn", "k") is None
        assert await store.delete("fn", "k") is False

    async def test_a_key_made_again_never_reuses_a_revision(self, store: Store) -> None:
        first = await store.put("fn", "k", "v", expect_revision=0)
        await store.delete("fn", "k")
        again = await store.put("fn", "k", "v", expect_revision=0)
        assert again.revision > first.revision
        with pytest.raises(RevisionMismatch):  # the old revision does not match the new entry
            await store.put("fn", "k", "x", expect_revision=first.revision)

    async def test_expiry(self, store: Store, clock: Clock) -> None:
        entry = await store.put("fn", "k", "v", ttl=10)
        assert entry.expires_at == pytest.approx(clock.now + 10)
        clock.now += 9.9
        assert (await store.get("fn", "k")) is not None
        clock.now += 0.2
        assert await store.get("fn", "k") is None
        assert await store.list("fn") == []
        # Expired is absent for writers too: create succeeds, the old revision is stale.
        with pytest.raises(RevisionMismatch) as info:
            await store.put("fn", "k", "w", expect_revision=entry.revision)
        assert info.value.current is None
        assert await store.delete("fn", "k") is False
        fresh = await store.put("fn", "k", "w", expect_revision=0)
        assert fresh.expires_at is None and fresh.value == "w"

    async def test_a_write_without_ttl_clears_the_expiry(self, store: Store, clock: Clock) -> None:
        await store.put("fn", "k", 1, ttl=5)
        await store.put("fn", "k", 2)
        clock.now += 60
        assert (await store.get("fn", "k")).value == 2  # type: ignore[union-attr]

    async def test_namespaces_are_apart(self, store: Store) -> None:
        await store.put("fn-a", "k", "a")
        await store.put("fn-b", "k", "b")
        assert (await store.get("fn-a", "k")).value == "a"  # type: ignore[union-attr]
        assert (await store.get("fn-b", "k")).value == "b"  # type: ignore[union-attr]
        assert await store.drop("fn-a") == 1
        assert await store.get("fn-a", "k") is None
        assert (await store.get("fn-b", "k")).value == "b"  # type: ignore[union-attr]

    async def test_namespaces_are_those_with_live_entries(self, store: Store, clock: Clock) -> None:
        assert await store.namespaces() == []
        await store.put("fn-b", "k", 1)
        await store.put("fn-a", "k", 1)
        await store.put("fn-a", "j", 2)
        await store.put("gone", "k", 1)
        await store.delete("gone", "k")
        await store.put("stale", "k", 1, ttl=5)
        assert await store.namespaces() == ["fn-a", "fn-b", "stale"]
        clock.now += 6
        await store.drop("fn-b")
        assert await store.namespaces() == ["fn-a"]

    async def test_list_by_prefix_in_key_order(self, store: Store) -> None:
        for key in ("latest.b", "idempotent.x", "latest.a", "latest_c"):
            await store.put("fn", key, key)
        await store.put("other", "latest.z", 1)
        assert [e.key for e in await store.list("fn", prefix="latest.")] == [
            "latest.a",
            "latest.b",
        ]
        assert len(await store.list("fn")) == 4
        assert len(await store.list("fn", limit=2)) == 2

    async def test_bad_requests_are_refused(self, store: Store) -> None:
        for key in ("", ".a", "a.", "a..b", "a b", "ä", "x" * 600):
            with pytest.raises(InvalidStoreRequest, match="key"):
                await store.put("fn", key, 1)
        for namespace in ("Fn", "-fn", "fn_x", ""):
            with pytest.raises(InvalidStoreRequest, match="namespace"):
                await store.get(namespace, "k")
        for ttl in (0, -1, float("nan"), "10"):
            with pytest.raises(InvalidStoreRequest, match="ttl"):
                await store.put("fn", "k", 1, ttl=ttl)  # type: ignore[arg-type]
        with pytest.raises(InvalidStoreRequest, match="at most"):
            await store.put("fn", "k", "x" * MAX_VALUE_BYTES)
        with pytest.raises(InvalidStoreRequest, match="JSON"):
            await store.put("fn", "k", {1, 2})
        assert await store.get("fn", "k") is None


class TestSQLiteStore(StoreConformance):
    pass


class TestJetStreamStore(StoreConformance):
    """On the machine's NATS server, in buckets of a prefix of the test's own."""

    @pytest.fixture
    async def store(self, clock: Clock) -> AsyncIterator[Store]:
        async with prefixed_buckets() as (client, prefix):
            yield JetStreamStore(client, prefix, clock=clock)


class TestJetStreamStoreOnACluster(StoreConformance):
    """The suite again on a 3-server cluster, the bucket kept on all three."""

    @pytest.fixture
    async def store(self, clock: Clock, cluster: NatsCluster) -> AsyncIterator[Store]:
        async with prefixed_buckets(cluster.urls) as (client, prefix):
            yield JetStreamStore(client, prefix, replicas=3, clock=clock)


async def test_jetstream_store_refuses_what_nats_cannot_carry(clock: Clock) -> None:
    """A value within the store's limit whose envelope is over the server's
    max_payload: refused as too large, nothing written."""
    async with prefixed_buckets() as (client, prefix):
        store = JetStreamStore(client, prefix, clock=clock)
        with pytest.raises(InvalidStoreRequest, match="max_payload"):
            await store.put("fn", "k", "x" * (MAX_VALUE_BYTES - 10))
        assert await store.get("fn", "k") is None


async def test_jetstream_store_nodes_share_entries_and_revisions(clock: Clock) -> None:
    """Two stores on the same buckets (two nodes): one sees what the other wrote,
    and a compare-and-set decides between them."""
    async with prefixed_buckets() as (client, prefix):
        one = JetStreamStore(client, prefix, clock=clock)
        two = JetStreamStore(client.jetstream(), prefix, clock=clock)
        made = await one.put("fn", "k", "one", expect_revision=0)
        with pytest.raises(RevisionMismatch):
            await two.put("fn", "k", "two", expect_revision=0)
        assert (await two.get("fn", "k")) == made
        stale = await one.put("fn", "short", 1, ttl=5)
        clock.now += 6
        # Both replace the stale entry; the one that read first loses its CAS.
        won = await two.put("fn", "short", 2, expect_revision=0)
        with pytest.raises(RevisionMismatch) as lost:
            await one.put("fn", "short", 3, expect_revision=0)
        assert lost.value.current == won and won.revision > stale.revision


async def test_entries_survive_reopen_and_share_the_log_file(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    log = SQLiteLog(path)
    await log.open()
    entry = await SQLiteStore(log).put("fn", "k", {"x": 1})
    await log.close()
    log = SQLiteLog(path)
    await log.open()
    try:
        again = await SQLiteStore(log).get("fn", "k")
        assert again is not None and again.value == {"x": 1}
        assert again.revision == entry.revision
        later = await SQLiteStore(log).put("fn", "j", 2)
        assert later.revision > entry.revision  # the counter is in the file too
    finally:
        await log.close()


async def test_migration_2_upgrades_a_version_1_file(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(MIGRATIONS[0])
    conn.execute("PRAGMA user_version=1")
    conn.close()
    log = SQLiteLog(path)
    await log.open()
    try:
        await SQLiteStore(log).put("fn", "k", 1)
    finally:
        await log.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) >= 2
    conn.close()


async def test_expired_rows_are_purged_by_later_writes(log: SQLiteLog, clock: Clock) -> None:
    store = SQLiteStore(log)
    for i in range(10):
        await store.put("fn", f"old{i}", i, ttl=1)
    clock.now += 2
    await store.put("fn", "new", 1)

    def rows(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT count(*) FROM store").fetchone()[0])

    assert await log.read(rows) == 1


def test_store_tokens() -> None:
    tokens = StoreTokens()
    a = tokens.issue("fn-a")
    b = tokens.issue("fn-b")
    assert a != b and len(a) > 40
    assert tokens.namespace(a) == "fn-a" and tokens.namespace(b) == "fn-b"
    assert tokens.namespace("vst_guess") is None
    tokens.revoke(a)
    assert tokens.namespace(a) is None and tokens.namespace(b) == "fn-b"


def test_local_api_url() -> None:
    assert local_api_url("127.0.0.1:8080") == "http://127.0.0.1:8080"
    assert local_api_url("0.0.0.0:9000") == "http://127.0.0.1:9000"
    assert local_api_url(":9000") == "http://127.0.0.1:9000"
    assert local_api_url("[::]:9000") == "http://[::1]:9000"
    assert local_api_url("[::1]:9000") == "http://[::1]:9000"
    assert local_api_url("veba.local:80") == "http://veba.local:80"
    assert local_api_url("0.0.0.0:8443", tls=True) == "https://127.0.0.1:8443"


# --- the HTTP API, served for real ----------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServedAppliance]:
    served = ServedAppliance(tmp_path / "data").start()
    yield served
    served.stop()


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_api_put_get_cas_and_delete(served: ServedAppliance) -> None:
    token = served.issue("fn-a")
    with httpx.Client(base_url=f"{served.url}/api/v1/store/fn-a", headers=_auth(token)) as http:
        assert http.get("/idempotent.x").status_code == 404
        r = http.put("/idempotent.x", json={"value": {"status": "IN_PROGRESS"}, "ttl": 30})
        assert r.status_code == 200, r.text
        made = r.json()
        assert made["value"] == {"status": "IN_PROGRESS"} and made["expires_at"] > time.time()
        r = http.put("/idempotent.x", json={"value": "again", "expect_revision": 0})
        assert r.status_code == 409
        assert r.json()["current"]["revision"] == made["revision"]
        assert r.json()["current"]["value"] == {"status": "IN_PROGRESS"}
        r = http.put("/idempotent.x", json={"value": "done", "expect_revision": made["revision"]})
        assert r.status_code == 200 and r.json()["expires_at"] is None
        assert http.get("/idempotent.x").json()["value"] == "done"
        assert [e["key"] for e in http.get("", params={"prefix": "idem"}).json()["entries"]] == [
            "idempotent.x"
        ]
        r = http.delete("/idempotent.x", params={"expect_revision": made["revision"]})
        assert r.status_code == 409
        assert http.delete("/idempotent.x").json() == {"deleted": True}
        assert http.delete("/idempotent.x").json() == {"deleted": False}
        # Keys may hold slashes; the path carries them.
        assert http.put("/a/b=c", json={"value": 1}).status_code == 200
        assert http.get("/a/b=c").json()["value"] == 1


def test_api_refuses_bad_requests(served: ServedAppliance) -> None:
    token = served.issue("fn-a")
    with httpx.Client(base_url=f"{served.url}/api/v1/store/fn-a", headers=_auth(token)) as http:
        assert http.put("/k", content=b"not json").status_code == 400
        assert http.put("/k", json={"no": "value"}).status_code == 400
        assert http.put("/k", json={"value": 1, "ttl": -5}).status_code == 400
        assert http.put("/k", json={"value": 1, "expect_revision": "x"}).status_code == 400
        r = http.put("/a..b", json={"value": 1})
        assert r.status_code == 400 and "key" in r.json()["error"]
        big = {"value": "x" * (MAX_VALUE_BYTES + 10)}
        assert http.put("/k", json=big).status_code == 413
        assert http.get("/k").status_code == 404


def test_api_tokens_open_their_own_namespace_only(served: ServedAppliance) -> None:
    a = served.issue("fn-a")
    b = served.issue("fn-b")
    url = f"{served.url}/api/v1/store"
    assert httpx.put(f"{url}/fn-a/k", json={"value": "a"}, headers=_auth(a)).status_code == 200
    assert httpx.put(f"{url}/fn-b/k", json={"value": "b"}, headers=_auth(b)).status_code == 200

    # Another function's namespace: 403, whatever the method.
    for method in ("GET", "PUT", "DELETE"):
        r = httpx.request(method, f"{url}/fn-b/k", json={"value": "x"}, headers=_auth(a))
        assert r.status_code == 403, (method, r.text)
        assert "fn-a" in r.json()["error"]
    assert httpx.get(f"{url}/fn-b", headers=_auth(a)).status_code == 403
    # No token, or one nobody issued: 401.
    assert httpx.get(f"{url}/fn-a/k").status_code == 401
    assert httpx.get(f"{url}/fn-a/k", headers=_auth("vst_forged")).status_code == 401
    assert httpx.get(f"{url}/fn-a/k", headers={"Authorization": f"Basic {a}"}).status_code == 401
    # The appliance's API token opens every namespace (operators); a store token
    # opens nothing else of the API.
    assert httpx.get(f"{url}/fn-b/k", headers=_auth(served.token)).json()["value"] == "b"
    assert httpx.get(f"{served.url}/api/v1/events", headers=_auth(a)).status_code == 401
    assert httpx.get(f"{served.url}/system/functions", headers=_auth(a)).status_code == 401
    # A revoked token (its pool stopped) opens nothing.
    served.appliance.store_tokens.revoke(a)
    assert httpx.get(f"{url}/fn-a/k", headers=_auth(a)).status_code == 401
    assert httpx.get(f"{url}/fn-b/k", headers=_auth(b)).json()["value"] == "b"


def test_api_entries_expire(served: ServedAppliance) -> None:
    token = served.issue("fn-a")
    with httpx.Client(base_url=f"{served.url}/api/v1/store/fn-a", headers=_auth(token)) as http:
        assert http.put("/short", json={"value": 1, "ttl": 0.3}).status_code == 200
        assert http.get("/short").status_code == 200
        deadline = time.monotonic() + 10
        while http.get("/short").status_code != 404:
            assert time.monotonic() < deadline, "entry did not expire"
            time.sleep(0.05)
        assert http.put("/short", json={"value": 2, "expect_revision": 0}).status_code == 200
