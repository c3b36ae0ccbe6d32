"""A function's secrets: one file each in the folder the appliance gives it.

veba sets ``VEBA_SECRETS_DIR`` (and OpenFaaS's ``secret_mount_path``) for every
worker; only the secrets the function declares under ``secrets:`` in stack.yml
are there. Outside veba, OpenFaaS's ``/var/openfaas/secrets`` is read.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

__all__ = [
    "SecretFormatError",
    "SecretNotFound",
    "secret",
    "secret_bytes",
    "secret_json",
    "secret_names",
    "secret_toml",
    "secrets_dir",
]

OPENFAAS_SECRETS = "/var/openfaas/secrets"


class SecretNotFound(LookupError):
    """The function has no such secret: it is not declared in stack.yml (or not created)."""

    def __init__(self, name: str, directory: Path | None) -> None:
        self.name = name
        function = os.environ.get("VEBA_FUNCTION_NAME")
        field = f"functions.{function}.secrets" if function else "the function's secrets:"
        have = secret_names(directory) if directory is not None else []
        declared = (
            f"this function has: {', '.join(have)}" if have else "this function declares none"
        )
        super().__init__(
            f"secret {name!r} is not available to "
            + (f"function {function!r}" if function else "this function")
            + f": declare it under `secrets:` in stack.yml ({field}) and create it with "
            f"`veba secret create {name} --from-file FILE`; {declared}"
        )

    def __str__(self) -> str:
        return str(self.args[0])


class SecretFormatError(ValueError):
    """A secret is not valid TOML or JSON (the message never shows its content)."""


def secrets_dir() -> Path | None:
    """The function's secrets folder, or None when there is none."""
    for var in ("VEBA_SECRETS_DIR", "secret_mount_path"):
        value = os.environ.get(var)
        if value:
            return Path(value)
    default = Path(OPENFAAS_SECRETS)
    return default if default.is_dir() else None


def secret_names(directory: Path | None = None) -> list[str]:
    """The names of the secrets this function can read."""
    folder = directory if directory is not None else secrets_dir()
    if folder is None:
        return []
    try:
        return sorted(
            e.name for e in os.scandir(folder) if e.is_file() and not e.name.startswith(".")
        )
    except OSError:
        return []


def secret_bytes(name: str) -> bytes:
    """The content of the secret ``name``, as is."""
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        raise ValueError(f"invalid secret name {name!r}")
    folder = secrets_dir()
    if folder is None:
        raise SecretNotFound(name, None)
    try:
        return (folder / name).read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise SecretNotFound(name, folder) from None


def secret(name: str) -> str:
    """The secret ``name`` as text, without surrounding whitespace (a trailing newline)."""
    return secret_bytes(name).decode("utf-8").strip()


def secret_toml(name: str) -> dict[str, Any]:
    """The secret ``name`` parsed as TOML (VEBA's ``vcconfig`` style)."""
    try:
        return tomllib.loads(secret_bytes(name).decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SecretFormatError(f"secret {name!r} is not valid TOML: {exc}") from None


def secret_json(name: str) -> Any:
    """The secret ``name`` parsed as JSON."""
    try:
        return json.loads(secret_bytes(name))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SecretFormatError(f"secret {name!r} is not valid JSON: {exc}") from None
