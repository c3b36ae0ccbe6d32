"""`veba migrate`: an appliance's state in its data directory (made here with
the SQLite backends' public APIs) copied onto the machine's NATS server by
the real CLI, then read back through the JetStream backends."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from tests.e2e.harness import VEBA, ApplianceProcess
from tests.eventlog.conformance import failed, make_event, ok, to
from tests.jetstream_buckets import NATS_URL, delete_everything_named
from veba.codearchive import pack_folder, unpack
from veba.eventlog import SQLiteLog
from veba.eventlog.jetstream import JetStreamLog
from veba.eventlog.sqlite_store import SQLiteStore
from veba.functionrecords import FileFunctionRecords
from veba.jetstream import JetStreamFunctionRecords, JetStreamSecretBlobs, JetStreamStore
from veba.secrets import SecretStore

# (source, id) of the events made below, by what became of them.
DEAD, OPEN_FN_B, LEASED, RETRYING, DELIVERED = (make_event(k) for k in (1, 2, 3, 4, 5))


@pytest.fixture
def name() -> Iterator[str]:
    """A NAME of this test's own on the NATS server; all it made goes after."""
    name = f"mig{uuid.uuid4().hex[:10]}"
    yield name
    asyncio.run(delete_everything_named(name))


def _migrate(data_dir: Path, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VEBA, "migrate", "--data-dir", str(data_dir), "--to", f"{NATS_URL}/{name}", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


async def _appliance_state(data_dir: Path, code: Path) -> None:
    """A stopped appliance: two functions (one paused), a secret, store entries,
    and events with a dead letter, open deliveries (pending, leased, retrying)
    and one delivered; a provider's checkpoint."""
    records = FileFunctionRecords(data_dir / "functions")
    archive = pack_folder(code)
    for fn in ("fn-a", "fn-b"):
        await records.save(fn, {"name": fn, "code_hash": "c0ffee", "handler": "h.h"}, archive)
    await records.set_paused("fn-b", True)
    await SecretStore(data_dir).put("vcconfig", b"password=hunter2")

    log = SQLiteLog(data_dir / "events.db")
    await log.open()
    try:
        store = SQLiteStore(log)
        await store.put("fn-a", "idempotent.x", {"done": True})
        await store.put("fn-a", "latest.vm1", 7, ttl=3600)
        await store.put("fn-b", "k", "v")
        await log.append([DEAD], route=to("fn-b"))
        (dead,) = await log.lease("fn-b", 1, 30)
        await log.dead(dead.id, failed(1, 503))
        await log.append([OPEN_FN_B], route=to("fn-a", "fn-b"))  # fn-b's stays pending
        await log.append([DELIVERED], route=to("fn-a"))
        for delivery in await log.lease("fn-a", 2, 30):
            await log.ack(delivery.id, ok(1))
        await log.append([LEASED], route=to("fn-a"))
        await log.lease("fn-a", 1, 30)  # held when the appliance stopped
        await log.append([RETRYING], route=to("fn-a"), checkpoint=("vc1", "key-42"))
        (retrying,) = await log.lease("fn-a", 1, 30)
        await log.retry(retrying.id, failed(1), time.time() + 3600)
    finally:
        await log.close()


@pytest.fixture
async def data_dir(tmp_path: Path) -> AsyncIterator[Path]:
    code = tmp_path / "code"
    code.mkdir()
    (code / "h.py").write_text("def h(event, context):\n    return None\n")
    data_dir = tmp_path / "data"
    await _appliance_state(data_dir, code)
    yield data_dir


@contextlib.asynccontextmanager
async def _target(name: str) -> AsyncIterator[tuple[JetStreamLog, Client]]:
    client = await nats.connect(NATS_URL, connect_timeout=10)
    log = JetStreamLog([NATS_URL], name=name, client=client)
    await log.open()
    try:
        yield log, client
    finally:
        await log.close()
        await client.close()


async def _check_everything_is_there(name: str, data_dir: Path) -> None:
    async with _target(name) as (log, client):
        # Functions: definitions, paused flags, the same code.
        records = JetStreamFunctionRecords(client, name)
        kept = await records.all()
        assert sorted(kept) == ["fn-a", "fn-b"]
        assert kept["fn-a"].paused is False and kept["fn-b"].paused is True
        assert kept["fn-a"].definition["handler"] == "h.h"
        archive = await records.code("fn-a", "c0ffee")
        assert archive is not None
        unpacked = data_dir.parent / f"unpacked-{uuid.uuid4().hex}"
        unpack(archive, unpacked)
        assert "def h(event" in (unpacked / "h.py").read_text()
        # The secret: the same ciphertext, which this data dir's key opens.
        blobs = JetStreamSecretBlobs(client, name)
        assert await blobs.read("vcconfig") == (data_dir / "secrets/vcconfig.secret").read_bytes()
        assert await SecretStore(data_dir, blobs).get("vcconfig") == b"password=hunter2"
        # The store, with the time left to live.
        store = JetStreamStore(client, name)
        assert await store.namespaces() == ["fn-a", "fn-b"]
        assert (await store.get("fn-a", "idempotent.x")).value == {"done": True}  # type: ignore[union-attr]
        latest = await store.get("fn-a", "latest.vm1")
        assert latest is not None and latest.value == 7 and latest.expires_at is not None
        assert latest.expires_at == pytest.approx(time.time() + 3600, abs=120)
        assert (await store.get("fn-b", "k")).value == "v"  # type: ignore[union-attr]
        # The work left: open deliveries exactly, the dead letter dead, not the delivered.
        events = {r.event.id for r in await log.events(limit=100)}
        assert events == {e.id for e in (DEAD, OPEN_FN_B, LEASED, RETRYING)}
        (dead,) = await log.deliveries(status="dead")
        assert (dead.subscription, dead.event_id, dead.last_status) == ("fn-b", DEAD.id, 503)
        open_a = await log.lease("fn-a", 10, 30)
        open_b = await log.lease("fn-b", 10, 30)
        assert sorted(d.event.id for d in open_a) == sorted([LEASED.id, RETRYING.id])
        assert [d.event.id for d in open_b] == [OPEN_FN_B.id]
        await log.release([d.id for d in open_a + open_b])
        assert await log.get_checkpoint("vc1") == "key-42"


async def test_migrate_copies_every_piece_and_a_second_run_copies_nothing_twice(
    data_dir: Path, name: str
) -> None:
    dry = _migrate(data_dir, name, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "functions: would copy 2 (1 paused)" in dry.stdout
    client = await nats.connect(NATS_URL, connect_timeout=10)
    try:  # a dry run writes nothing
        streams = [i.config.name or "" for i in await client.jetstream().streams_info()]
        assert not [s for s in streams if name in s]
    finally:
        await client.close()

    first = _migrate(data_dir, name)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert lines[0] == "functions: copied 2 (1 paused)"
    assert lines[1].startswith("secrets: copied 1 (encrypted); copy ")
    assert str(data_dir / "secret.key") in lines[1]
    assert lines[2].startswith("store: copied 3 entries in 2 namespaces")
    assert lines[3] == "events: copied 4 with open deliveries or dead letters; 3 open deliveries"
    assert lines[4] == "dead letters: 1 found, 1 made dead now"
    assert lines[5] == "checkpoints: copied 1"
    await _check_everything_is_there(name, data_dir)

    refused = _migrate(data_dir, name)
    assert refused.returncode == 1
    assert "holds 2 functions already (fn-a, fn-b)" in " ".join(refused.stderr.split())
    again = _migrate(data_dir, name, "--force")
    assert again.returncode == 0, again.stderr
    assert "events: copied 0 with open deliveries or dead letters (4 there already)" in again.stdout
    assert "dead letters: 1 found, 0 made dead now" in again.stdout
    await _check_everything_is_there(name, data_dir)  # exactly once each still


def test_migrate_is_refused_while_the_appliance_runs(tmp_path: Path, name: str) -> None:
    appliance = ApplianceProcess(tmp_path / "data", "--no-simulator").start()
    try:
        refused = _migrate(appliance.data_dir, name)
    finally:
        appliance.stop()
    message = " ".join(refused.stderr.split())
    assert refused.returncode == 1, refused.stdout
    assert "in use by another veba appliance" in message and "stop it first" in message
    assert "Traceback" not in message


def test_migrate_refuses_a_folder_without_an_appliance(tmp_path: Path, name: str) -> None:
    refused = _migrate(tmp_path, name)
    assert refused.returncode == 1
    assert "holds no appliance (no events.db)" in refused.stderr


async def test_a_function_without_its_code_is_named_and_the_rest_copied(
    tmp_path: Path, name: str
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "h.py").write_text("def h(event, context):\n    return None\n")
    data_dir = tmp_path / "data"
    await _appliance_state(data_dir, code)
    shutil.rmtree(data_dir / "functions" / "fn-b" / "code-c0ffee")
    copied = _migrate(data_dir, name)
    assert copied.returncode == 1
    assert copied.stdout.splitlines()[:2] == [
        "functions: copied 1; 1 NOT copied",
        "  not copied: fn-b: its code c0ffee is not kept",
    ]
    assert "events: copied 4" in copied.stdout
    assert "some functions were not copied" in " ".join(copied.stderr.split())


async def test_replicas_the_server_cannot_keep_are_refused_before_anything_is_copied(
    data_dir: Path, name: str
) -> None:
    refused = _migrate(data_dir, name, "--replicas", "3")  # the test server is one, not a cluster
    message = " ".join(refused.stderr.split())
    assert refused.returncode == 1
    assert "refused the log's streams" in message and "replicas" in message
    assert "Traceback" not in message
    client = await nats.connect(NATS_URL, connect_timeout=10)
    try:
        assert await JetStreamFunctionRecords(client, name).all() == {}
    finally:
        await client.close()
