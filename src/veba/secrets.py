"""Function secrets, encrypted by the appliance, kept wherever its blobs live.

`SecretStore` encrypts (Fernet) and decrypts; a `SecretBlobs` keeps the
ciphertext and nothing else, so a backend shared between nodes (NATS:
`veba.jetstream.secrets`) never holds a value in the clear. The key is
`<data dir>/secret.key` (mode 0600) on each node: nodes that share secrets
share that file, copied by the operator, never through the backend. Decrypted
values exist only in the appliance's memory and in the memory-backed directory
a running function reads; no error, log line or repr carries one.

`FileSecretBlobs`, the default, keeps each secret as one file,
`<data dir>/secrets/<name>.secret`.

A secret holds either one value (``veba secret create vcconfig --from-file
vcconfig.toml``: the function sees one file named ``vcconfig``) or several keys,
as a Kubernetes secret made with repeated ``--from-literal``/``--from-file`` does
(the function sees one file per key, named by the key, where OpenFaaS would
mount them). `files` gives what a function sees of either kind.
"""

from __future__ import annotations

import json
import re
from base64 import b64decode, b64encode
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from cryptography.fernet import Fernet, InvalidToken

from veba.settings import write_private

__all__ = [
    "FileSecretBlobs",
    "SecretBlobs",
    "SecretError",
    "SecretExists",
    "SecretStore",
    "valid_secret_key",
    "valid_secret_name",
]

_NAME = re.compile(r"^[a-zA-Z0-9]([-._a-zA-Z0-9]*[a-zA-Z0-9])?$")
# Kubernetes' rule for the keys of a secret (they become file names).
_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
# Plaintext of a secret with several keys starts with this; no real single value does.
_KEYS_MAGIC = b"\x00veba-secret-keys\x00"


class SecretError(ValueError):
    """A secret that cannot be stored or read; the message says which and why
    (never what it holds)."""


class SecretExists(SecretError):
    """A secret made anew (not replaced) under a name that is taken."""

    def __init__(self, name: str) -> None:
        super().__init__(f"secret {name!r} already exists; use --replace to change it")


class SecretBlobs(Protocol):
    """Where the encrypted secrets live: opaque blobs by name. Names reach it
    checked (`valid_secret_name`); blobs are ciphertext, never anything else."""

    async def names(self) -> list[str]:
        """Every stored name, sorted."""
        ...

    async def read(self, name: str) -> bytes | None:
        """The blob, or None if there is none."""
        ...

    async def write(self, name: str, blob: bytes, *, replace: bool) -> bool:
        """Keep `blob` under `name`; True if it replaced one. Without `replace` a
        name already taken raises `SecretExists` and changes nothing."""
        ...

    async def remove(self, name: str) -> bool:
        """False if there was nothing under `name`."""
        ...

    async def version(self, name: str) -> str | None:
        """A mark that changes whenever `name` is written (None if there is none):
        how a node tells that another node replaced a secret its functions read."""
        ...


class FileSecretBlobs:
    """One file per secret, `<folder>/<name>.secret`, owner-only, written atomically."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __repr__(self) -> str:
        return f"FileSecretBlobs({str(self.folder)!r})"

    def _path(self, name: str) -> Path:
        return self.folder / f"{name}.secret"

    async def names(self) -> list[str]:
        if not self.folder.exists():
            return []
        return sorted(p.name.removesuffix(".secret") for p in self.folder.glob("*.secret"))

    async def read(self, name: str) -> bytes | None:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            return None

    async def write(self, name: str, blob: bytes, *, replace: bool) -> bool:
        path = self._path(name)
        existed = path.exists()
        if existed and not replace:
            raise SecretExists(name)
        write_private(path, blob)
        return existed

    async def remove(self, name: str) -> bool:
        try:
            self._path(name).unlink()
        except FileNotFoundError:
            return False
        return True

    async def version(self, name: str) -> str | None:
        # Written by rename: every write is a new inode, even within one clock tick.
        try:
            st = self._path(name).stat()
        except FileNotFoundError:
            return None
        return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"


def valid_secret_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name)) and len(name) <= 253


def valid_secret_key(key: str) -> bool:
    return bool(_KEY.fullmatch(key)) and key not in (".", "..") and len(key) <= 253


class SecretStore:
    """The appliance's secrets: encrypted here, kept by `blobs` (files under
    `<data dir>/secrets/` unless another backend is given)."""

    def __init__(self, data_dir: Path, blobs: SecretBlobs | None = None) -> None:
        self.blobs: SecretBlobs = blobs or FileSecretBlobs(data_dir / "secrets")
        key_path = data_dir / "secret.key"
        if not key_path.exists():
            write_private(key_path, Fernet.generate_key())
        self._fernet = Fernet(key_path.read_bytes().strip())

    def __repr__(self) -> str:
        return f"SecretStore({self.blobs!r})"

    @staticmethod
    def _checked(name: str) -> str:
        if not valid_secret_name(name):
            raise SecretError(
                f"secret name {name!r} is not valid: use letters, digits, '-', '.', '_'"
            )
        return name

    async def names(self) -> list[str]:
        return await self.blobs.names()

    async def exists(self, name: str) -> bool:
        return await self.blobs.read(self._checked(name)) is not None

    async def version(self, name: str) -> str | None:
        """Changes whenever the secret is written, on any node (None: no such secret)."""
        return await self.blobs.version(self._checked(name))

    async def put(self, name: str, value: bytes, *, replace: bool = False) -> bool:
        """Store a single-value secret; returns True if it replaced an existing one."""
        if value.startswith(_KEYS_MAGIC):
            raise SecretError(f"secret {name!r}: the value starts with a reserved marker")
        return await self._write(name, value, replace)

    async def put_keys(
        self, name: str, keys: Mapping[str, bytes], *, replace: bool = False
    ) -> bool:
        """Store a secret with several keys (one file each for a function)."""
        if not keys:
            raise SecretError(f"secret {name!r}: give at least one key")
        for key in keys:
            if not valid_secret_key(key):
                raise SecretError(
                    f"secret {name!r}: key {key!r} is not valid: use letters, digits,"
                    " '-', '.', '_' (it becomes a file name)"
                )
        doc = {k: b64encode(v).decode("ascii") for k, v in keys.items()}
        return await self._write(name, _KEYS_MAGIC + json.dumps(doc).encode(), replace)

    async def _write(self, name: str, plaintext: bytes, replace: bool) -> bool:
        blob = self._fernet.encrypt(plaintext)
        return await self.blobs.write(self._checked(name), blob, replace=replace)

    async def _read(self, name: str) -> bytes:
        blob = await self.blobs.read(self._checked(name))
        if blob is None:
            raise SecretError(f"secret {name!r} does not exist")
        try:
            return self._fernet.decrypt(blob)
        except InvalidToken:
            raise SecretError(
                f"secret {name!r} cannot be decrypted with this appliance's key"
            ) from None

    async def files(self, name: str) -> dict[str, bytes]:
        """What a function declaring `name` sees: file name -> content.

        ``{name: value}`` for a single-value secret, one entry per key otherwise.
        """
        plaintext = await self._read(name)
        if not plaintext.startswith(_KEYS_MAGIC):
            return {name: plaintext}
        doc = json.loads(plaintext[len(_KEYS_MAGIC) :])
        return {str(k): b64decode(v) for k, v in doc.items()}

    async def keys(self, name: str) -> list[str] | None:
        """The keys of a secret with several, None for a single-value secret."""
        plaintext = await self._read(name)
        if not plaintext.startswith(_KEYS_MAGIC):
            return None
        return sorted(json.loads(plaintext[len(_KEYS_MAGIC) :]))

    async def get(self, name: str, key: str | None = None) -> bytes:
        """A single-value secret, or one key of a secret with several."""
        files = await self.files(name)
        wanted = name if key is None else key
        if wanted in files and (key is not None or len(files) == 1):
            return files[wanted]
        if key is None:
            raise SecretError(f"secret {name!r} has the keys {', '.join(sorted(files))}; name one")
        raise SecretError(
            f"secret {name!r} has no key {key!r}; its keys are {', '.join(sorted(files))}"
        )

    async def remove(self, name: str) -> None:
        if not await self.blobs.remove(self._checked(name)):
            raise SecretError(f"secret {name!r} does not exist")
