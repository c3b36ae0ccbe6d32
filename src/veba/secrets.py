"""Function secrets, encrypted at rest.

Each secret is one Fernet-encrypted file under `<data dir>/secrets/`; the key
is `<data dir>/secret.key` (mode 0600). Decrypted values exist only in the
appliance's memory and in the memory-backed directory a running function reads.

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

from cryptography.fernet import Fernet, InvalidToken

from veba.settings import _write_private

__all__ = ["SecretError", "SecretStore", "valid_secret_key", "valid_secret_name"]

_NAME = re.compile(r"^[a-zA-Z0-9]([-._a-zA-Z0-9]*[a-zA-Z0-9])?$")
# Kubernetes' rule for the keys of a secret (they become file names).
_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
# Plaintext of a secret with several keys starts with this; no real single value does.
_KEYS_MAGIC = b"\x00veba-secret-keys\x00"


class SecretError(ValueError):
    """A secret that cannot be stored or read; the message says which and why."""


def valid_secret_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name)) and len(name) <= 253


def valid_secret_key(key: str) -> bool:
    return bool(_KEY.fullmatch(key)) and key not in (".", "..") and len(key) <= 253


class SecretStore:
    def __init__(self, data_dir: Path) -> None:
        self._dir = data_dir / "secrets"
        key_path = data_dir / "secret.key"
        if not key_path.exists():
            _write_private(key_path, Fernet.generate_key())
        self._fernet = Fernet(key_path.read_bytes().strip())

    def _path(self, name: str) -> Path:
        if not valid_secret_name(name):
            raise SecretError(
                f"secret name {name!r} is not valid: use letters, digits, '-', '.', '_'"
            )
        return self._dir / f"{name}.secret"

    def names(self) -> list[str]:
        if not self._dir.exists():
            return []
        return sorted(p.name.removesuffix(".secret") for p in self._dir.glob("*.secret"))

    def exists(self, name: str) -> bool:
        return self._path(name).exists()

    def put(self, name: str, value: bytes, *, replace: bool = False) -> bool:
        """Store a single-value secret; returns True if it replaced an existing one."""
        if value.startswith(_KEYS_MAGIC):
            raise SecretError(f"secret {name!r}: the value starts with a reserved marker")
        return self._write(name, value, replace)

    def put_keys(self, name: str, keys: Mapping[str, bytes], *, replace: bool = False) -> bool:
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
        return self._write(name, _KEYS_MAGIC + json.dumps(doc).encode(), replace)

    def _write(self, name: str, plaintext: bytes, replace: bool) -> bool:
        path = self._path(name)
        existed = path.exists()
        if existed and not replace:
            raise SecretError(f"secret {name!r} already exists; use --replace to change it")
        _write_private(path, self._fernet.encrypt(plaintext))
        return existed

    def _read(self, name: str) -> bytes:
        path = self._path(name)
        try:
            return self._fernet.decrypt(path.read_bytes())
        except FileNotFoundError:
            raise SecretError(f"secret {name!r} does not exist") from None
        except InvalidToken:
            raise SecretError(
                f"secret {name!r} cannot be decrypted with this appliance's key"
            ) from None

    def files(self, name: str) -> dict[str, bytes]:
        """What a function declaring `name` sees: file name -> content.

        ``{name: value}`` for a single-value secret, one entry per key otherwise.
        """
        plaintext = self._read(name)
        if not plaintext.startswith(_KEYS_MAGIC):
            return {name: plaintext}
        doc = json.loads(plaintext[len(_KEYS_MAGIC) :])
        return {str(k): b64decode(v) for k, v in doc.items()}

    def keys(self, name: str) -> list[str] | None:
        """The keys of a secret with several, None for a single-value secret."""
        plaintext = self._read(name)
        if not plaintext.startswith(_KEYS_MAGIC):
            return None
        return sorted(json.loads(plaintext[len(_KEYS_MAGIC) :]))

    def get(self, name: str, key: str | None = None) -> bytes:
        """A single-value secret, or one key of a secret with several."""
        files = self.files(name)
        wanted = name if key is None else key
        if wanted in files and (key is not None or len(files) == 1):
            return files[wanted]
        if key is None:
            raise SecretError(
                f"secret {name!r} has the keys {', '.join(sorted(files))}; name one"
            )
        raise SecretError(
            f"secret {name!r} has no key {key!r}; its keys are {', '.join(sorted(files))}"
        )

    def remove(self, name: str) -> None:
        try:
            self._path(name).unlink()
        except FileNotFoundError:
            raise SecretError(f"secret {name!r} does not exist") from None
