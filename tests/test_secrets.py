"""The secret store: single values and Kubernetes-style secrets with several keys,
encrypted by the appliance, on every backend that keeps the ciphertext.

`SecretConformance` is what `SecretStore` does over any `SecretBlobs`; a
subclass provides `blobs` (files in a folder, a JetStream KV bucket).
"""

from __future__ import annotations

import asyncio
import shutil
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.jetstream_buckets import prefixed_buckets
from tests.natscluster import NatsCluster, module_cluster_fixture  # noqa: F401
from veba.jetstream import JetStreamSecretBlobs
from veba.secrets import FileSecretBlobs, SecretBlobs, SecretError, SecretExists, SecretStore

SECRET = b"hunter2-distinctive-value"


@pytest.fixture
def store(tmp_path: Path, blobs: SecretBlobs) -> SecretStore:
    return SecretStore(tmp_path / "node", blobs)


def another_node(store: SecretStore, tmp_path: Path, *, same_key: bool = True) -> SecretStore:
    """A second appliance on the same blobs, with a copy of the key (or its own)."""
    data = tmp_path / ("node2" if same_key else "stranger")
    data.mkdir()
    if same_key:
        shutil.copy(tmp_path / "node" / "secret.key", data / "secret.key")
    return SecretStore(data, store.blobs)


class SecretConformance:
    async def test_single_value_is_one_file_named_after_the_secret(
        self, store: SecretStore
    ) -> None:
        await store.put("vcconfig", b"[vcenter]\nserver = 'vc'\n")
        assert await store.files("vcconfig") == {"vcconfig": b"[vcenter]\nserver = 'vc'\n"}
        assert await store.get("vcconfig") == b"[vcenter]\nserver = 'vc'\n"
        assert await store.keys("vcconfig") is None
        assert await store.exists("vcconfig") and not await store.exists("other")

    async def test_several_keys_are_one_file_each(self, store: SecretStore) -> None:
        keys = {"vc-host": b"vc01.lab", "vc-user": b"administrator", "vc-password": b'p\\a"ss'}
        await store.put_keys("vc-credentials", keys)
        assert await store.files("vc-credentials") == keys
        assert await store.keys("vc-credentials") == ["vc-host", "vc-password", "vc-user"]
        assert await store.get("vc-credentials", "vc-user") == b"administrator"
        with pytest.raises(SecretError, match="has the keys vc-host, vc-password, vc-user"):
            await store.get("vc-credentials")
        with pytest.raises(SecretError, match="has no key 'nope'"):
            await store.get("vc-credentials", "nope")

    async def test_the_backend_holds_only_ciphertext(self, store: SecretStore) -> None:
        await store.put_keys("creds", {"password": SECRET})
        await store.put("token", SECRET + b"-token")
        assert await store.blobs.names() == ["creds", "token"]
        for name in ("creds", "token"):
            blob = await store.blobs.read(name)
            assert blob is not None and b"distinctive" not in blob

    async def test_names_sorted_and_dotted_names_kept(self, store: SecretStore) -> None:
        for name in ("vc.password", "a..b", "Z-1", "m_2"):
            await store.put(name, SECRET)
        assert await store.names() == ["Z-1", "a..b", "m_2", "vc.password"]
        assert await store.get("a..b") == SECRET

    @pytest.mark.parametrize("key", ["", ".", "..", "a/b", "a b", "x\n"])
    async def test_bad_keys_are_refused_with_the_key_named(
        self, store: SecretStore, key: str
    ) -> None:
        with pytest.raises(SecretError, match="is not valid"):
            await store.put_keys("creds", {key: b"v"})
        assert not await store.names()

    async def test_bad_names_are_refused(self, store: SecretStore) -> None:
        for name in ("", "-a", "a/b", "a b", "ä", "x" * 300):
            with pytest.raises(SecretError, match="is not valid"):
                await store.put(name, b"v")
            with pytest.raises(SecretError, match="is not valid"):
                await store.exists(name)
        assert not await store.names()

    async def test_replacing_needs_replace_and_may_change_kind(self, store: SecretStore) -> None:
        assert await store.put("creds", b"one") is False
        with pytest.raises(SecretExists, match="already exists"):
            await store.put_keys("creds", {"a": b"1"})
        assert await store.get("creds") == b"one"
        assert await store.put_keys("creds", {"a": b"1", "b": b"2"}, replace=True) is True
        assert await store.files("creds") == {"a": b"1", "b": b"2"}
        assert await store.put("new", b"x", replace=True) is False

    async def test_remove(self, store: SecretStore) -> None:
        await store.put("creds", SECRET)
        await store.remove("creds")
        assert await store.names() == []
        with pytest.raises(SecretError, match="does not exist"):
            await store.get("creds")
        with pytest.raises(SecretError, match="does not exist"):
            await store.remove("creds")
        assert await store.put("creds", b"again") is False  # made anew, not replaced
        assert await store.get("creds") == b"again"

    async def test_of_two_nodes_making_one_secret_one_wins(self, store: SecretStore) -> None:
        made = await asyncio.gather(
            store.put("race", b"one"), store.put("race", b"two"), return_exceptions=True
        )
        assert made.count(False) == 1  # made, not replaced
        assert sum(isinstance(r, SecretExists) for r in made) == 1
        assert await store.get("race") in (b"one", b"two")

    async def test_nodes_with_a_copy_of_the_key_share_secrets(
        self, store: SecretStore, tmp_path: Path
    ) -> None:
        await store.put("shared", SECRET)
        other = another_node(store, tmp_path)
        assert await other.get("shared") == SECRET
        assert await other.put("shared", b"rotated", replace=True) is True
        assert await store.get("shared") == b"rotated"

    async def test_the_version_changes_with_every_write_and_every_node_sees_it(
        self, store: SecretStore, tmp_path: Path
    ) -> None:
        assert await store.version("rotating") is None
        await store.put("rotating", SECRET)
        first = await store.version("rotating")
        assert first is not None
        assert await store.version("rotating") == first  # reading changes nothing
        await store.get("rotating")
        assert await store.version("rotating") == first
        other = another_node(store, tmp_path)
        assert await other.version("rotating") == first
        await other.put("rotating", SECRET, replace=True)  # the same value, written again
        second = await store.version("rotating")
        assert second not in (None, first)
        await store.put("unrelated", b"another-distinct-value")
        assert await store.version("rotating") == second
        await store.remove("rotating")
        assert await store.version("rotating") is None
        with pytest.raises(SecretError, match="is not valid"):
            await store.version("../escape")

    async def test_secrets_appear_in_no_error_or_repr(
        self, store: SecretStore, tmp_path: Path
    ) -> None:
        await store.put_keys("creds", {"password": SECRET})
        stranger = another_node(store, tmp_path, same_key=False)
        with pytest.raises(SecretError, match="cannot be decrypted") as info:
            await stranger.get("creds", "password")
        problems = [info.value]
        for call in (store.get("creds"), store.get("creds", "nope"), store.put("creds", SECRET)):
            with pytest.raises(SecretError) as failed:
                await call
            problems.append(failed.value)
        shown = " ".join(
            [*map(str, problems), *map(repr, problems), repr(store), repr(store.blobs)]
        )
        assert "distinctive" not in shown and "hunter2" not in shown
        key = (tmp_path / "node" / "secret.key").read_bytes().strip().decode()
        assert key not in repr(store) and key not in repr(store.blobs)


class TestFileSecrets(SecretConformance):
    @pytest.fixture
    def blobs(self, tmp_path: Path) -> SecretBlobs:
        return FileSecretBlobs(tmp_path / "node" / "secrets")

    async def test_today_s_layout_one_private_file_per_secret(
        self, store: SecretStore, tmp_path: Path
    ) -> None:
        await store.put_keys("creds", {"password": SECRET})
        await store.put("token", SECRET)
        data = tmp_path / "node"
        assert stat.S_IMODE((data / "secret.key").stat().st_mode) == 0o600
        assert sorted(p.name for p in (data / "secrets").iterdir()) == [
            "creds.secret",
            "token.secret",
        ]
        for path in (data / "secrets").iterdir():
            assert b"distinctive" not in path.read_bytes()
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
        # The default backend is that folder: what an older veba wrote is read.
        assert await SecretStore(data).get("token") == SECRET


class TestJetStreamSecrets(SecretConformance):
    @pytest.fixture
    async def blobs(self) -> AsyncIterator[SecretBlobs]:
        async with prefixed_buckets() as (client, prefix):
            self.client, self.prefix = client, prefix
            yield JetStreamSecretBlobs(client, prefix)

    async def test_nats_holds_only_ciphertext_under_the_secret_s_name(
        self, store: SecretStore
    ) -> None:
        await store.put("vc.password", SECRET)
        kv = await self.client.jetstream().key_value(f"{self.prefix}_secrets")
        raw = await kv.get("vc=password")
        assert raw.value is not None and b"distinctive" not in raw.value
        assert raw.value.startswith(b"gAAAAA")  # a Fernet token


class TestJetStreamSecretsOnACluster(SecretConformance):
    """The suite again on a 3-server cluster, the bucket kept on all three."""

    @pytest.fixture
    async def blobs(self, cluster: NatsCluster) -> AsyncIterator[SecretBlobs]:
        async with prefixed_buckets(cluster.urls) as (client, prefix):
            yield JetStreamSecretBlobs(client, prefix, replicas=3)
