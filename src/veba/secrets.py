"""Function secrets, encrypted at rest.

Each secret is one Fernet-encrypted file under `<data dir>/secrets/`; the key
is `<data dir>/secret.key` (mode 0600). Decrypted values exist only in the
appliance's memory and in the memory-backed directory a running function reads.
"""

from __future__ import annotations

import re
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from veba.settings import _write_private

__all__ = ["SecretError", "SecretStore", "valid_secret_name"]

_NAME = re.compile(r"^[a-zA-Z0-9]([-._a-zA-Z0-9]*[a-zA-Z0-9])?$")


class SecretError(ValueError):
    """A secret that cannot be stored or read; the message says which and why."""


def valid_secret_name(name: str) -> bool:
    return bool(_NAME.match(name)) and len(name) <= 253


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
        """Store a secret; returns True if it replaced an existing one."""
        path = self._path(name)
        existed = path.exists()
        if existed and not replace:
            raise SecretError(f"secret {name!r} already exists; use --replace to change it")
        _write_private(path, self._fernet.encrypt(value))
        return existed

    def get(self, name: str) -> bytes:
        path = self._path(name)
        try:
            return self._fernet.decrypt(path.read_bytes())
        except FileNotFoundError:
            raise SecretError(f"secret {name!r} does not exist") from None
        except InvalidToken:
            raise SecretError(
                f"secret {name!r} cannot be decrypted with this appliance's key"
            ) from None

    def remove(self, name: str) -> None:
        try:
            self._path(name).unlink()
        except FileNotFoundError:
            raise SecretError(f"secret {name!r} does not exist") from None
