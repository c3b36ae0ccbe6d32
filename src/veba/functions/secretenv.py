"""Environment variables from secrets, as Kubernetes sets them for a container.

* ``envFrom: [{secretRef: {name}, prefix}]``: every key of the secret becomes a
  variable (``prefix + key``); a single-value secret is one key, its name.
* ``env: [{name, valueFrom: {secretKeyRef: {name, key}}}]``: one key, one variable.

Variables from ``env`` win over those from ``envFrom`` (the caller merges them in
that order). A missing secret or key fails unless the reference is ``optional``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from veba.secrets import SecretError, SecretStore

__all__ = ["SecretEnvError", "required_secrets", "secret_environment"]


class SecretEnvError(ValueError):
    """A secret reference that cannot be resolved; the message names the reference."""


def _value(secret: str, key: str, raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    if "\0" in text:
        raise SecretEnvError(
            f"secret {secret!r} key {key!r} holds a NUL byte, which an environment variable cannot"
        )
    return text


async def secret_environment(
    store: SecretStore,
    env_from: Iterable[Mapping[str, Any]],
    secret_env: Mapping[str, Mapping[str, Any]],
) -> dict[str, str]:
    """The variables the references give, ``env_from`` first, then ``secret_env``."""
    env: dict[str, str] = {}
    for ref in env_from:
        secret = str(ref["secret"])
        if ref.get("optional") and not await store.exists(secret):
            continue
        try:
            files = await store.files(secret)
        except SecretError as exc:
            raise SecretEnvError(f"envFrom: {exc}") from None
        prefix = str(ref.get("prefix") or "")
        for key, raw in files.items():
            env[prefix + key] = _value(secret, key, raw)
    for variable, ref in secret_env.items():
        secret, key = str(ref["secret"]), str(ref["key"])
        if ref.get("optional") and not await store.exists(secret):
            continue
        try:
            files = await store.files(secret)
        except SecretError as exc:
            raise SecretEnvError(f"env {variable}: {exc}") from None
        if key not in files:
            if ref.get("optional"):
                continue
            raise SecretEnvError(
                f"env {variable}: secret {secret!r} has no key {key!r};"
                f" its keys are {', '.join(sorted(files))}"
            )
        env[variable] = _value(secret, key, files[key])
    return env


def required_secrets(
    env_from: Iterable[Mapping[str, Any]], secret_env: Mapping[str, Mapping[str, Any]]
) -> list[tuple[str, str]]:
    """(field path, secret) of each reference not marked optional, paths as in the
    container spec: ``envFrom[0].secretRef.name``, ``env.TOKEN.valueFrom.secretKeyRef.name``."""
    refs = [
        (f"envFrom[{i}].secretRef.name", str(r["secret"]))
        for i, r in enumerate(env_from)
        if not r.get("optional")
    ]
    refs += [
        (f"env.{variable}.valueFrom.secretKeyRef.name", str(r["secret"]))
        for variable, r in secret_env.items()
        if not r.get("optional")
    ]
    return refs
