"""Two running nodes' `Functions` on one set of JetStream records: what one
deploys, redeploys, pauses, resumes or removes, the other follows while it runs
(`Functions.follow`), and a secret made through one node's `SecretStore` reaches
the function's workers on the other."""

from __future__ import annotations

import base64
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from tests.functions.conftest import process_gone, wait_until
from tests.jetstream_buckets import prefixed_buckets
from veba.activity import Activity, Happening
from veba.codearchive import pack_folder
from veba.deployments import RETRY_FIRST, Deployment, Functions, retry_delay
from veba.eventlog import SQLiteLog
from veba.functionlogs import LogHub
from veba.functions.supervisor import Invocation
from veba.jetstream import JetStreamFunctionRecords, JetStreamSecretBlobs
from veba.secrets import SecretStore

FOLLOWED = "on another node"  # what every line of a followed change says


@pytest.fixture
async def buckets() -> AsyncIterator[tuple[Client, str]]:
    async with prefixed_buckets() as (client, prefix):
        yield client, prefix


def payload(tmp_path: Path, name: str, body: str, **fields: Any) -> dict[str, Any]:
    handler = tmp_path / f"src-{name}-{len(list(tmp_path.glob('src-*')))}"
    handler.mkdir()
    (handler / "handler.py").write_text(body)
    code = base64.b64encode(pack_folder(handler)).decode()
    return {"name": name, "lang": "python3", "topic": "VmPoweredOnEvent", "code": code, **fields}


def answering(text: str) -> str:
    return f"def handle(req):\n    return {text!r}\n"


def secret_reader(answers: dict[str, str]) -> str:
    """A handler answering by the value of its `api-token` secret (what a function
    answers is scrubbed of its secrets, so it answers what it read, not the value)."""
    return (
        "def handle(req):\n"
        "    got = open('/var/openfaas/secrets/api-token').read()\n"
        f"    return {answers!r}.get(got, 'neither')\n"
    )


class Node:
    """One node's `Functions` on the shared records and secrets, with its own
    event log, folders and activity lines; following every 0.2 s."""

    def __init__(
        self,
        data: Path,
        venvs: Path,
        buckets: tuple[Client, str],
        keys: Path,
        retry_first: float = RETRY_FIRST,
    ) -> None:
        self.data = data
        self.log = SQLiteLog(data / "events.db")
        self.lines: list[str] = []
        activity = Activity()
        activity.subscribe(self._heard)
        # Nodes that share secrets share the key file (copied by the operator).
        data.mkdir(parents=True)
        shutil.copy(keys / "secret.key", data / "secret.key")
        self.secrets = SecretStore(data, JetStreamSecretBlobs(*buckets))
        self.functions = Functions(
            functions_dir=data / "functions",
            venv_cache=venvs,
            log=self.log,
            secrets=self.secrets,
            logs=LogHub(data / "logs"),
            records=JetStreamFunctionRecords(*buckets),
            activity=activity,
            follow_every=0.2,
            retry_first=retry_first,
        )

    def _heard(self, happening: Happening) -> None:
        self.lines.append(happening.text)

    def followed(self) -> list[str]:
        return [line for line in self.lines if FOLLOWED in line]

    async def __aenter__(self) -> Node:
        await self.log.open()
        await self.functions.load()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.functions.stop()
        await self.log.close()


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    folder = tmp_path / "keys"
    folder.mkdir()
    SecretStore(folder)  # makes secret.key
    return folder


async def ready(node: Node, name: str, version: str = "", timeout: float = 60) -> Deployment:
    """`name` on `node`, running the code `version` (any if empty)."""

    def there() -> bool:
        got = node.functions.get(name)
        return (
            got is not None
            and got.status != "starting"
            and (not version or got.definition.code_hash == version)
        )

    await wait_until(there, timeout=timeout)
    got = node.functions.get(name)
    assert got is not None and got.status == "ready", got and got.error
    return got


async def answer(node: Node, name: str) -> bytes:
    outcome = await node.functions.invoke(name, Invocation(b"{}"))
    return outcome.body.strip()


async def test_a_deploy_and_a_redeploy_on_one_node_run_on_the_other(
    tmp_path: Path, venv_cache: Path, buckets: tuple[Client, str], keys: Path
) -> None:
    async with (
        Node(tmp_path / "a", venv_cache, buckets, keys) as a,
        Node(tmp_path / "b", venv_cache, buckets, keys) as b,
    ):
        first = await a.functions.deploy(payload(tmp_path, "hello", answering("one")), print)
        on_b = await ready(b, "hello", first.definition.code_hash)
        assert on_b.definition == first.definition
        assert await answer(b, "hello") == b"one"
        assert [s.name for s in b.functions.router.subscriptions] == ["hello"]
        old_pids = set(b.functions.worker_pids())
        assert old_pids

        second = await a.functions.deploy(payload(tmp_path, "hello", answering("two")), print)
        assert second.definition.code_hash != first.definition.code_hash
        await ready(b, "hello", second.definition.code_hash)
        assert await answer(b, "hello") == b"two"
        await wait_until(lambda: all(process_gone(pid) for pid in old_pids), timeout=30)
        code_dirs = sorted(p.name for p in (b.data / "functions" / "hello").glob("code-*"))
        assert code_dirs == [f"code-{second.definition.code_hash}"]  # the old one tidied

        assert b.followed() == [
            "function hello deployed on another node: starting here",
            "function hello redeployed on another node: started here",
        ]
        assert a.followed() == []  # its own deploys are not news to it


async def test_pause_resume_and_removal_on_one_node_reach_the_other(
    tmp_path: Path, venv_cache: Path, buckets: tuple[Client, str], keys: Path
) -> None:
    async with (
        Node(tmp_path / "a", venv_cache, buckets, keys) as a,
        Node(tmp_path / "b", venv_cache, buckets, keys) as b,
    ):
        await a.functions.deploy(payload(tmp_path, "paused", answering("hi")), print)
        on_b = await ready(b, "paused")
        assert on_b.dispatcher is not None and not on_b.dispatcher.paused

        await a.functions.pause("paused")
        await wait_until(lambda: on_b.dispatcher is not None and on_b.dispatcher.paused, 10)
        await a.functions.pause("paused", paused=False)
        await wait_until(lambda: on_b.dispatcher is not None and not on_b.dispatcher.paused, 10)

        pids = set(b.functions.worker_pids())
        assert await a.functions.remove("paused")
        await wait_until(lambda: b.functions.get("paused") is None, 10)
        await wait_until(lambda: all(process_gone(pid) for pid in pids), timeout=30)
        await wait_until(lambda: not (b.data / "functions" / "paused").exists(), 10)
        assert b.followed()[1:] == [
            "function paused paused on another node: paused here",
            "function paused resumed on another node: resumed here",
            "function paused removed on another node: stopped here",
        ]

        # A pause made on the node itself is its own, not undone by what it reads.
        await b.functions.deploy(payload(tmp_path, "local", answering("b")), print)
        await b.functions.pause("local")
        on_a = await ready(a, "local")
        await wait_until(lambda: on_a.paused, 10)
        local = b.functions.get("local")
        assert local is not None and local.paused
        assert [line for line in b.followed() if "local" in line] == []


async def test_a_secret_made_through_one_node_reaches_the_workers_on_the_other(
    tmp_path: Path, venv_cache: Path, buckets: tuple[Client, str], keys: Path
) -> None:
    reader = secret_reader({"s3cr3t-from-node-a": "read it"})
    async with (
        Node(tmp_path / "a", venv_cache, buckets, keys) as a,
        Node(tmp_path / "b", venv_cache, buckets, keys) as b,
    ):
        await a.secrets.put("api-token", b"s3cr3t-from-node-a")
        await a.functions.deploy(payload(tmp_path, "reads", reader, secrets=["api-token"]), print)
        await ready(b, "reads")
        assert await answer(b, "reads") == b"read it"
        assert await answer(a, "reads") == b"read it"


async def test_a_secret_replaced_through_one_node_restarts_its_readers_on_the_other(
    tmp_path: Path, venv_cache: Path, buckets: tuple[Client, str], keys: Path
) -> None:
    reader = secret_reader({"old-value-from-a": "old", "new-value-from-a": "new"})
    async with (
        Node(tmp_path / "a", venv_cache, buckets, keys) as a,
        Node(tmp_path / "b", venv_cache, buckets, keys) as b,
    ):
        await a.secrets.put("api-token", b"old-value-from-a")
        await a.functions.deploy(payload(tmp_path, "reads", reader, secrets=["api-token"]), print)
        await a.functions.deploy(payload(tmp_path, "other", answering("untouched")), print)
        await ready(b, "reads")
        other_on_b = await ready(b, "other")
        assert await answer(b, "reads") == b"old"
        # As `veba secret create --replace` through A does: write, then restart A's readers.
        await a.secrets.put("api-token", b"new-value-from-a", replace=True)
        assert await a.functions.restart_using("api-token") == ["reads"]
        assert await answer(a, "reads") == b"new"

        await wait_until(lambda: any("api-token" in line for line in b.followed()), 30)
        assert await answer(b, "reads") == b"new"
        assert b.followed()[-1] == (
            "function reads secret 'api-token' changed on another node: restarted here"
        )
        assert b.functions.get("other") is other_on_b  # declares no secret: not restarted
        # A, whose own replace restarted its readers, does not restart them again.
        a_reads = a.functions.get("reads")
        for _ in range(5):
            await a.functions._follow_once()
        assert a.functions.get("reads") is a_reads
        assert not [line for line in a.followed() if "api-token" in line]


async def test_a_function_that_could_not_start_is_tried_again_until_it_starts(
    tmp_path: Path, venv_cache: Path, buckets: tuple[Client, str], keys: Path
) -> None:
    reader = secret_reader({"made-after-the-start-failed": "read it"})
    async with Node(tmp_path / "a", venv_cache, buckets, keys) as a:
        await a.secrets.put("api-token", b"made-before-the-deploy")
        await a.functions.deploy(payload(tmp_path, "reads", reader, secrets=["api-token"]), print)
        await a.secrets.remove("api-token")  # gone when node B starts
        async with Node(tmp_path / "b", venv_cache, buckets, keys, retry_first=0.3) as b:
            failed = "reads: could not start: functions.reads.secrets: secret 'api-token'"
            await wait_until(lambda: any(line.startswith(failed) for line in b.lines), 60)
            on_b = b.functions.get("reads")
            assert on_b is not None and on_b.status == "error"
            assert "does not exist" in (on_b.error or "")
            # Tried again, twice as late each time, while it cannot start.
            await wait_until(lambda: any("trying again in 1.2 s" in line for line in b.lines), 60)
            await a.secrets.put("api-token", b"made-after-the-start-failed")
            await wait_until(lambda: on_b.status == "ready", 60)  # at its next try
            assert await answer(b, "reads") == b"read it"
            assert b.functions.get("reads") is on_b  # the same deployment, now started


def test_the_delay_before_each_new_try_doubles_up_to_ten_minutes() -> None:
    assert [retry_delay(n) for n in (1, 2, 3, 4, 5, 6)] == [30, 60, 120, 240, 480, 600]
    assert retry_delay(50) == 600
    assert [retry_delay(n, 0.3) for n in (1, 2, 3)] == [0.3, 0.6, 1.2]


async def test_records_on_this_nodes_disk_are_not_followed(
    tmp_path: Path, venv_cache: Path
) -> None:
    log = SQLiteLog(tmp_path / "events.db")
    await log.open()
    functions = Functions(
        functions_dir=tmp_path / "functions",
        venv_cache=venv_cache,
        log=log,
        secrets=SecretStore(tmp_path),
        logs=LogHub(tmp_path / "logs"),
    )
    try:
        await functions.load()
        assert functions._follower is None
    finally:
        await functions.stop()
        await log.close()


CANNOT = "function fn redeployed on another node, cannot start here"


@contextlib.asynccontextmanager
async def a_redeploy_b_cannot_start(
    tmp_path: Path, venv_cache: Path, buckets: tuple[Client, str], keys: Path, **b_options: Any
) -> AsyncIterator[tuple[Node, Node, Deployment]]:
    """Nodes A and B run `fn`; A redeploys it with a secret B cannot decrypt (B
    has a key of its own). Yields A, B and the first version, once B said so."""
    other_keys = tmp_path / "other-keys"
    other_keys.mkdir()
    SecretStore(other_keys)
    async with (
        Node(tmp_path / "a", venv_cache, buckets, keys) as a,
        Node(tmp_path / "b", venv_cache, buckets, other_keys, **b_options) as b,
    ):
        first = await a.functions.deploy(payload(tmp_path, "fn", answering("one")), print)
        await ready(b, "fn", first.definition.code_hash)
        await a.secrets.put("api-token", b"s3cr3t-from-node-a")
        with_secret = payload(tmp_path, "fn", answering("two"), secrets=["api-token"])
        await a.functions.deploy(with_secret, print)
        await wait_until(lambda: any(line.startswith(CANNOT) for line in b.lines), 30)
        yield a, b, first


async def test_a_redeploy_this_node_cannot_start_leaves_the_old_version_running(
    tmp_path: Path, venv_cache: Path, buckets: tuple[Client, str], keys: Path
) -> None:
    async with a_redeploy_b_cannot_start(tmp_path, venv_cache, buckets, keys) as (a, b, first):
        # Rounds later (B has followed another deploy since), not tried again
        # before its delay (30 s at first).
        await a.functions.deploy(payload(tmp_path, "marker", answering("m")), print)
        await ready(b, "marker")
        assert len([line for line in b.lines if line.startswith(CANNOT)]) == 1
        running = b.functions.get("fn")
        assert running is not None and running.definition == first.definition
        assert await answer(b, "fn") == b"one"


async def test_a_redeploy_this_node_cannot_start_is_tried_again_later_the_old_running_meanwhile(
    tmp_path: Path, venv_cache: Path, buckets: tuple[Client, str], keys: Path
) -> None:
    retried = a_redeploy_b_cannot_start(tmp_path, venv_cache, buckets, keys, retry_first=0.3)
    async with retried as (_, b, first):
        tries = ["; trying again in 0.3 s", "; trying again in 0.6 s"]
        await wait_until(
            lambda: any(line.startswith(CANNOT) and tries[1] in line for line in b.lines), 60
        )
        said = [line for line in b.lines if line.startswith(CANNOT)]
        assert tries[0] in said[0] and tries[1] in said[1]
        running = b.functions.get("fn")
        assert running is not None and running.definition == first.definition
        assert await answer(b, "fn") == b"one"
