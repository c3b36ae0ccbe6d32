"""Secrets: read from the folder veba (or OpenFaaS) gives the function; clear when absent."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from veba.sdk import (
    SecretFormatError,
    SecretNotFound,
    secret,
    secret_bytes,
    secret_json,
    secret_names,
    secret_toml,
    secrets_dir,
)

VCCONFIG = """[vcenter]
server = "vcsa.lab.local"
user = "administrator@vsphere.local"
password = "VMware1!-s3cret"
insecure = true
"""


def test_text_bytes_toml_and_json(secrets_dir: Callable[..., Path]) -> None:
    folder = secrets_dir(token="abc123\n", raw=b"\x00\xff", vcconfig=VCCONFIG, cfg='{"a": [1]}')
    assert secrets_dir is not None
    assert secret("token") == "abc123"
    assert secret_bytes("token") == b"abc123\n"
    assert secret_bytes("raw") == b"\x00\xff"
    assert secret_toml("vcconfig")["vcenter"]["insecure"] is True
    assert secret_json("cfg") == {"a": [1]}
    assert secret_names() == ["cfg", "raw", "token", "vcconfig"]
    assert secret_names(folder) == secret_names()


def test_an_undeclared_secret_says_what_to_declare(secrets_dir: Callable[..., Path]) -> None:
    secrets_dir(token="abc123")
    with pytest.raises(SecretNotFound) as missing:
        secret("vcconfig")
    text = str(missing.value)
    assert "secret 'vcconfig'" in text and "function 'tagger'" in text
    assert "secrets:" in text and "functions.tagger.secrets" in text and "stack.yml" in text
    assert "veba secret create vcconfig" in text
    assert "this function has: token" in text
    assert missing.value.name == "vcconfig"
    assert isinstance(missing.value, LookupError)


def test_no_secrets_folder_at_all(
    secrets_dir: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("veba.sdk.secrets.OPENFAAS_SECRETS", "/nonexistent/veba")
    assert secrets_dir is not None
    from veba.sdk import secrets_dir as where

    assert where() is None
    assert secret_names() == []
    with pytest.raises(SecretNotFound, match="declare it under `secrets:`"):
        secret("token")


def test_openfaas_variable_is_read_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VEBA_SECRETS_DIR", raising=False)
    (tmp_path / "token").write_text("from-openfaas")
    monkeypatch.setenv("secret_mount_path", str(tmp_path))
    assert secrets_dir() == tmp_path
    assert secret("token") == "from-openfaas"


def test_bad_names_and_formats_never_show_the_content(secrets_dir: Callable[..., Path]) -> None:
    secrets_dir(broken="password = hunter2-oops\n[", notjson="hunter2-oops")
    for bad in ("", "../etc/passwd", "a/b", ".", ".."):
        with pytest.raises(ValueError, match="invalid secret name"):
            secret_bytes(bad)
    with pytest.raises(SecretFormatError, match="'broken' is not valid TOML") as toml:
        secret_toml("broken")
    with pytest.raises(SecretFormatError, match="'notjson' is not valid JSON") as js:
        secret_json("notjson")
    assert "hunter2" not in str(toml.value) and "hunter2" not in str(js.value)
