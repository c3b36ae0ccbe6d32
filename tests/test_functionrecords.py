"""What is kept of each deployed function (definition, code, paused flag), on
every backend: `RecordsConformance` runs on veba's folders on disk and on
JetStream (a KV bucket and an object store)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.jetstream_buckets import prefixed_buckets
from tests.natscluster import NatsCluster, module_cluster_fixture  # noqa: F401
from veba.codearchive import pack_folder
from veba.functionrecords import FileFunctionRecords, FunctionRecords
from veba.jetstream.functions import JetStreamFunctionRecords


def code(tmp_path: Path, version: str) -> tuple[bytes, str]:
    """A handler folder packed as a deploy sends it, and its code hash."""
    folder = tmp_path / f"src-{version}"
    (folder / "lib").mkdir(parents=True)
    (folder / "handler.py").write_text(f"def handle(req):\n    return {version!r}\n")
    (folder / "lib" / "data.txt").write_text(version)
    archive = pack_folder(folder)
    return archive, hashlib.sha256(archive).hexdigest()[:16]


def files_of(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


def definition(name: str, code_hash: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "lang": "python3", "code_hash": code_hash, "workers": 1, **more}


class RecordsConformance:
    """A subclass provides `records` and `another` (a second node's handle)."""

    async def test_save_get_and_all(self, records: FunctionRecords, tmp_path: Path) -> None:
        assert await records.get("fn") is None and await records.all() == {}
        archive, digest = code(tmp_path, "one")
        saved = await records.save(
            "fn", definition("fn", digest, topic="VmPoweredOnEvent"), archive
        )
        assert saved.definition["topic"] == "VmPoweredOnEvent" and not saved.paused
        assert await records.get("fn") == saved
        other, other_digest = code(tmp_path, "two")
        await records.save("fn-b", definition("fn-b", other_digest), other)
        kept = await records.all()
        assert sorted(kept) == ["fn", "fn-b"] and kept["fn"] == saved
        assert kept["fn-b"].code_hash == other_digest

    async def test_the_code_comes_back_with_the_same_files(
        self, records: FunctionRecords, tmp_path: Path
    ) -> None:
        archive, digest = code(tmp_path, "one")
        await records.save("fn", definition("fn", digest), archive)
        back = await records.code("fn", digest)
        assert back is not None and files_of(back) == files_of(archive)
        assert await records.code("fn", "0" * 16) is None
        assert await records.code("nope", digest) is None

    async def test_a_redeploy_replaces_definition_and_code(
        self, records: FunctionRecords, tmp_path: Path
    ) -> None:
        first, first_digest = code(tmp_path, "one")
        second, second_digest = code(tmp_path, "two")
        await records.save("fn", definition("fn", first_digest), first)
        again = await records.save("fn", definition("fn", second_digest, workers=3), second)
        assert again.code_hash == second_digest and again.definition["workers"] == 3
        got = await records.get("fn")
        assert got is not None and got.code_hash == second_digest
        back = await records.code("fn", second_digest)
        assert back is not None and files_of(back)["lib/data.txt"] == b"two"

    async def test_a_pause_outlives_a_redeploy_until_resumed(
        self, records: FunctionRecords, tmp_path: Path
    ) -> None:
        archive, digest = code(tmp_path, "one")
        assert await records.set_paused("fn", True) is False  # nothing to pause
        await records.save("fn", definition("fn", digest), archive)
        assert await records.set_paused("fn", True) is True
        assert (await records.get("fn")).paused  # type: ignore[union-attr]
        again = await records.save("fn", definition("fn", digest, workers=2), archive)
        assert again.paused and (await records.all())["fn"].paused
        assert await records.set_paused("fn", False) is True
        assert not (await records.get("fn")).paused  # type: ignore[union-attr]
        assert await records.set_paused("fn", False) is True  # resuming twice is no error

    async def test_remove_forgets_everything(
        self, records: FunctionRecords, tmp_path: Path
    ) -> None:
        archive, digest = code(tmp_path, "one")
        await records.save("fn", definition("fn", digest), archive)
        await records.set_paused("fn", True)
        assert await records.remove("fn") is True
        assert await records.get("fn") is None and await records.all() == {}
        assert await records.code("fn", digest) is None
        assert await records.remove("fn") is False
        made = await records.save("fn", definition("fn", digest), archive)
        assert not made.paused  # a new function: the old pause went with the old one

    async def test_another_node_sees_the_same_records(
        self,
        records: FunctionRecords,
        another: Callable[[], FunctionRecords],
        tmp_path: Path,
    ) -> None:
        archive, digest = code(tmp_path, "one")
        await records.save("fn", definition("fn", digest), archive)
        node = another()
        assert (await node.get("fn")) == (await records.get("fn"))
        back = await node.code("fn", digest)
        assert back is not None and files_of(back) == files_of(archive)
        await node.set_paused("fn", True)
        assert (await records.get("fn")).paused  # type: ignore[union-attr]
        await node.remove("fn")
        assert await records.all() == {}


class TestFileRecords(RecordsConformance):
    @pytest.fixture
    def records(self, tmp_path: Path) -> FunctionRecords:
        return FileFunctionRecords(tmp_path / "functions")

    @pytest.fixture
    def another(self, tmp_path: Path) -> Callable[[], FunctionRecords]:
        return lambda: FileFunctionRecords(tmp_path / "functions")

    async def test_veba_s_layout_on_disk(self, records: FunctionRecords, tmp_path: Path) -> None:
        archive, digest = code(tmp_path, "one")
        await records.save("fn", definition("fn", digest), archive)
        home = tmp_path / "functions" / "fn"
        assert json.loads((home / "function.json").read_text())["code_hash"] == digest
        assert (home / f"code-{digest}" / "handler.py").is_file()
        await records.set_paused("fn", True)
        assert (home / "paused").is_file()
        await records.set_paused("fn", False)
        assert not (home / "paused").exists()

    async def test_an_unreadable_definition_is_kept_for_the_operator(
        self, records: FunctionRecords, tmp_path: Path
    ) -> None:
        home = tmp_path / "functions" / "broken"
        home.mkdir(parents=True)
        (home / "function.json").write_text("{not json")
        (tmp_path / "functions" / "half-deployed" / "code-abc").mkdir(parents=True)
        kept = await records.all()
        assert list(kept) == ["broken"] and kept["broken"].definition == {}


class TestJetStreamRecords(RecordsConformance):
    @pytest.fixture
    async def records(self) -> AsyncIterator[FunctionRecords]:
        async with prefixed_buckets() as (client, prefix):
            self.client, self.prefix = client, prefix
            yield JetStreamFunctionRecords(client, prefix)

    @pytest.fixture
    def another(self, records: FunctionRecords) -> Callable[[], FunctionRecords]:
        return lambda: JetStreamFunctionRecords(self.client.jetstream(), self.prefix)

    async def test_the_bucket_and_object_names(
        self, records: FunctionRecords, tmp_path: Path
    ) -> None:
        archive, digest = code(tmp_path, "one")
        await records.save("fn", definition("fn", digest), archive)
        await records.set_paused("fn", True)
        js = self.client.jetstream()
        kv = await js.key_value(f"{self.prefix}_functions")
        assert json.loads((await kv.get("fn.definition")).value or b"")["code_hash"] == digest
        assert (await kv.get("fn.paused")).value == b"1"
        objects = await js.object_store(f"{self.prefix}_code")
        assert (await objects.get(f"fn/{digest}")).data == archive
        # A redeploy with other code drops the archive no definition names.
        second, second_digest = code(tmp_path, "two")
        await records.save("fn", definition("fn", second_digest), second)
        assert [o.name for o in await objects.list(ignore_deletes=True)] == [f"fn/{second_digest}"]


class TestJetStreamRecordsOnACluster(RecordsConformance):
    """The suite again on a 3-server cluster, bucket and object store on all three."""

    @pytest.fixture
    async def records(self, cluster: NatsCluster) -> AsyncIterator[FunctionRecords]:
        async with prefixed_buckets(cluster.urls) as (client, prefix):
            self.client, self.prefix = client, prefix
            yield JetStreamFunctionRecords(client, prefix, replicas=3)

    @pytest.fixture
    def another(self, records: FunctionRecords) -> Callable[[], FunctionRecords]:
        return lambda: JetStreamFunctionRecords(self.client.jetstream(), self.prefix, replicas=3)
