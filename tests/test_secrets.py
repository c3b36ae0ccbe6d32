"""The secret store: single values and Kubernetes-style secrets with several keys."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from veba.secrets import SecretError, SecretStore


def test_single_value_is_one_file_named_after_the_secret(tmp_path: Path) -> None:
    store = SecretStore(tmp_path)
    store.put("vcconfig", b"[vcenter]\nserver = 'vc'\n")
    assert store.files("vcconfig") == {"vcconfig": b"[vcenter]\nserver = 'vc'\n"}
    assert store.get("vcconfig") == b"[vcenter]\nserver = 'vc'\n"
    assert store.keys("vcconfig") is None


def test_several_keys_are_one_file_each(tmp_path: Path) -> None:
    store = SecretStore(tmp_path)
    keys = {"vc-host": b"vc01.lab", "vc-user": b"administrator", "vc-password": b"p\\a\"ss"}
    store.put_keys("vc-credentials", keys)
    assert store.files("vc-credentials") == keys
    assert store.keys("vc-credentials") == ["vc-host", "vc-password", "vc-user"]
    assert store.get("vc-credentials", "vc-user") == b"administrator"
    with pytest.raises(SecretError, match="has the keys vc-host, vc-password, vc-user"):
        store.get("vc-credentials")
    with pytest.raises(SecretError, match="has no key 'nope'"):
        store.get("vc-credentials", "nope")


def test_values_are_encrypted_at_rest_and_private(tmp_path: Path) -> None:
    store = SecretStore(tmp_path)
    store.put_keys("creds", {"password": b"hunter2-distinctive"})
    store.put("token", b"tok-distinctive")
    for path in (tmp_path / "secrets").iterdir():
        assert b"distinctive" not in path.read_bytes()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("key", ["", ".", "..", "a/b", "a b", "x\n"])
def test_bad_keys_are_refused_with_the_key_named(tmp_path: Path, key: str) -> None:
    with pytest.raises(SecretError, match="is not valid"):
        SecretStore(tmp_path).put_keys("creds", {key: b"v"})
    assert not SecretStore(tmp_path).names()


def test_replacing_needs_replace_and_may_change_kind(tmp_path: Path) -> None:
    store = SecretStore(tmp_path)
    store.put("creds", b"one")
    with pytest.raises(SecretError, match="already exists"):
        store.put_keys("creds", {"a": b"1"})
    assert store.put_keys("creds", {"a": b"1", "b": b"2"}, replace=True) is True
    assert store.files("creds") == {"a": b"1", "b": b"2"}
