"""Two nodes' `Functions` on one set of JetStream function records: what one
deploys and pauses the other brings back at start, unpacking the code from
the object store into its own folder and building its own venv."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from tests.functions.conftest import wait_until
from tests.jetstream_buckets import prefixed_buckets
from veba.codearchive import pack_folder
from veba.deployments import Functions
from veba.eventlog import SQLiteLog
from veba.functionlogs import LogHub
from veba.functions.supervisor import Invocation
from veba.jetstream.functions import JetStreamFunctionRecords
from veba.secrets import SecretStore


@pytest.fixture
async def buckets() -> AsyncIterator[tuple[Client, str]]:
    async with prefixed_buckets() as (client, prefix):
        yield client, prefix


@pytest.fixture
def records(buckets: tuple[Client, str]) -> JetStreamFunctionRecords:
    return JetStreamFunctionRecords(*buckets)


def handler_payload(tmp_path: Path, name: str) -> dict[str, Any]:
    handler = tmp_path / f"src-{name}"
    handler.mkdir()
    (handler / "handler.py").write_text("def handle(req):\n    return 'from the first node'\n")
    return {
        "name": name,
        "lang": "python3",
        "topic": "VmPoweredOnEvent",
        "code": base64.b64encode(pack_folder(handler)).decode(),
    }


class Node:
    def __init__(self, data: Path, venvs: Path, records: JetStreamFunctionRecords) -> None:
        self.data = data
        self.log = SQLiteLog(data / "events.db")
        self.functions = Functions(
            functions_dir=data / "functions",
            venv_cache=venvs,
            log=self.log,
            secrets=SecretStore(data),
            logs=LogHub(data / "logs"),
            records=records,
        )

    async def __aenter__(self) -> Node:
        await self.log.open()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.functions.stop()
        await self.log.close()


async def test_a_second_node_runs_what_the_first_deployed(
    tmp_path: Path, venv_cache: Path, records: JetStreamFunctionRecords
) -> None:
    payload = handler_payload(tmp_path, "shared")
    async with Node(tmp_path / "one", venv_cache, records) as one:
        deployed = await one.functions.deploy(payload, progress=lambda line: None)
        await one.functions.pause("shared")
        code_hash = deployed.definition.code_hash

        async with Node(tmp_path / "two", venv_cache, records) as two:
            assert not (two.data / "functions").exists()
            await two.functions.load()
            got = two.functions.get("shared")
            assert got is not None and got.definition == deployed.definition
            assert got.paused  # paused on the first node: paused here too
            await wait_until(lambda: got.status != "starting", timeout=120)
            assert got.status == "ready", got.error
            code_dir = two.data / "functions" / "shared" / f"code-{code_hash}"
            assert (code_dir / "handler.py").is_file()
            outcome = await two.functions.invoke("shared", Invocation(b"{}"))
            assert outcome.body.strip() == b"from the first node"

            # Removed on one node, gone from the records the other starts from.
            assert await one.functions.remove("shared")
            assert await records.all() == {}


async def test_a_node_that_cannot_find_the_code_says_so(
    tmp_path: Path,
    venv_cache: Path,
    records: JetStreamFunctionRecords,
    buckets: tuple[Client, str],
) -> None:
    async with Node(tmp_path / "one", venv_cache, records) as one:
        deployed = await one.functions.deploy(handler_payload(tmp_path, "lost"), lambda _: None)
    client, prefix = buckets
    objects = await client.jetstream().object_store(f"{prefix}_code")
    await objects.delete(f"lost/{deployed.definition.code_hash}")  # as if lost
    async with Node(tmp_path / "two", venv_cache, records) as two:
        await two.functions.load()
        got = two.functions.get("lost")
        assert got is not None
        await wait_until(lambda: got.status != "starting", timeout=60)
        assert got.status == "error"
        assert "is not kept any more; deploy the function again" in (got.error or "")
