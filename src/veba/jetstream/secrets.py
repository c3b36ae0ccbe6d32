"""`SecretBlobs` on a JetStream KV bucket, `<prefix>_secrets`: the ciphertext
`SecretStore` made, one key per secret, shared by every node.

The bucket holds nothing but Fernet tokens: encryption stays in the appliance,
and each node decrypts with its own copy of `secret.key`. A secret's name is its
key with each `.` written `=` (`vc.password` is `vc=password`): a name may hold
`..`, which as a subject would have an empty token, and `=` is in no name.
"""

from __future__ import annotations

from nats.aio.client import Client
from nats.errors import MaxPayloadError
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, KeyWrongLastSequenceError

from veba.jetstream._buckets import (
    Lazy,
    at_revision,
    bucket_name,
    jetstream_of,
    key_value,
    lost_race,
    written_keys,
)
from veba.secrets import SecretError, SecretExists

__all__ = ["JetStreamSecretBlobs"]


def _key(name: str) -> str:
    return name.replace(".", "=")


def _name(key: str) -> str:
    return key.replace("=", ".")


class JetStreamSecretBlobs:
    """Encrypted secrets in the KV bucket `<prefix>_secrets`."""

    def __init__(
        self, nats: Client | JetStreamContext, prefix: str = "veba", *, replicas: int = 1
    ) -> None:
        self._js = jetstream_of(nats)
        self.bucket = bucket_name(prefix, "secrets")
        self._kv = Lazy(lambda: key_value(self._js, self.bucket, replicas=replicas))

    def __repr__(self) -> str:
        return f"JetStreamSecretBlobs({self.bucket!r})"

    async def names(self) -> list[str]:
        kv = await self._kv.get()
        live = []
        for key in await written_keys(self._js, self.bucket):  # not a watch: see there
            if (await at_revision(kv, key))[1] is not None:
                live.append(_name(key))
        return sorted(live)

    async def read(self, name: str) -> bytes | None:
        _, entry = await at_revision(await self._kv.get(), _key(name))
        return None if entry is None else entry.value

    async def version(self, name: str) -> str | None:
        revision, entry = await at_revision(await self._kv.get(), _key(name))
        return None if entry is None else str(revision)

    async def write(self, name: str, blob: bytes, *, replace: bool) -> bool:
        kv = await self._kv.get()
        while True:
            last, current = await at_revision(kv, _key(name))
            if current is not None and not replace:
                raise SecretExists(name)
            try:
                await kv.update(_key(name), blob, last=last)
            except KeyWrongLastSequenceError:
                continue  # another node wrote it meanwhile: decide again
            except MaxPayloadError:
                raise SecretError(
                    f"secret {name!r} is too large for the NATS server ({len(blob)} bytes"
                    " encrypted; its max_payload is the limit)"
                ) from None
            return current is not None

    async def remove(self, name: str) -> bool:
        kv = await self._kv.get()
        while True:
            last, current = await at_revision(kv, _key(name))
            if current is None:
                return False
            try:
                await kv.delete(_key(name), last=last)
            except APIError as exc:
                if lost_race(exc):
                    continue
                raise
            return True
