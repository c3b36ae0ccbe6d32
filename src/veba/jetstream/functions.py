"""`FunctionRecords` in JetStream, shared by every node: definitions and paused
flags in the KV bucket `<prefix>_functions`, packed code in the object store
`<prefix>_code`.

KV keys: `<name>.definition` (the definition's JSON) and `<name>.paused`
(present while paused), so a pause and a deploy never overwrite each other.
Objects: `<name>/<code hash>`, the archive the deploy sent. A save puts the
code first and the definition after it, then deletes the code the previous
definition named: a node that reads a definition finds its code. (Two nodes
deploying one function at once may leave the loser's archive behind; the
next save or removal of that function does not see it.)
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping
from typing import Any

import orjson
from nats.aio.client import Client
from nats.js.client import JetStreamContext
from nats.js.errors import ObjectNotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from veba.functionrecords import FunctionRecord
from veba.jetstream._buckets import (
    Lazy,
    at_revision,
    bucket_name,
    jetstream_of,
    key_value,
    object_store,
    written_keys,
)

__all__ = ["JetStreamFunctionRecords"]

_DEFINITION = "definition"
_PAUSED = "paused"


class JetStreamFunctionRecords:
    """Function records in `<prefix>_functions` (KV) and `<prefix>_code` (objects)."""

    def __init__(
        self, nats: Client | JetStreamContext, prefix: str = "veba", *, replicas: int = 1
    ) -> None:
        self._js = js = jetstream_of(nats)
        self.bucket = bucket_name(prefix, "functions")
        self.code_bucket = bucket_name(prefix, "code")
        self._kv = Lazy(lambda: key_value(js, self.bucket, replicas=replicas))
        self._objects = Lazy(lambda: object_store(js, self.code_bucket, replicas=replicas))

    def __repr__(self) -> str:
        return f"JetStreamFunctionRecords({self.bucket!r}, {self.code_bucket!r})"

    async def save(self, name: str, definition: Mapping[str, Any], code: bytes) -> FunctionRecord:
        kv, objects = await self._kv.get(), await self._objects.get()
        before = await self._definition(kv, name)
        code_hash = str(definition["code_hash"])
        await objects.put(f"{name}/{code_hash}", code)
        await kv.put(f"{name}.{_DEFINITION}", orjson.dumps(dict(definition)))
        old_hash = None if before is None else str(before.get("code_hash", ""))
        if old_hash is not None and old_hash != code_hash:
            await _delete_object(objects, f"{name}/{old_hash}")
        return FunctionRecord(dict(definition), await self._paused(kv, name))

    async def get(self, name: str) -> FunctionRecord | None:
        kv = await self._kv.get()
        definition = await self._definition(kv, name)
        if definition is None:
            return None
        return FunctionRecord(definition, await self._paused(kv, name))

    async def all(self) -> dict[str, FunctionRecord]:
        # Each written key read on its own (see `written_keys`: a node that
        # follows these records must never read "no functions" by mistake).
        kv = await self._kv.get()
        definitions: dict[str, dict[str, Any]] = {}
        paused: set[str] = set()
        for key in await written_keys(self._js, self.bucket):
            _, entry = await at_revision(kv, key)
            if entry is None:  # deleted
                continue
            name, _, what = key.rpartition(".")
            if what == _DEFINITION and entry.value:
                definitions[name] = orjson.loads(entry.value)
            elif what == _PAUSED:
                paused.add(name)
        return {n: FunctionRecord(d, n in paused) for n, d in sorted(definitions.items())}

    async def code(self, name: str, code_hash: str) -> bytes | None:
        objects = await self._objects.get()
        into = io.BytesIO()  # chunk by chunk, not bytes joined again for each one
        try:
            await objects.get(f"{name}/{code_hash}", writeinto=into)
        except ObjectNotFoundError:
            return None
        return into.getvalue()

    async def set_paused(self, name: str, paused: bool) -> bool:
        kv = await self._kv.get()
        if await self._definition(kv, name) is None:
            return False
        if paused:
            await kv.put(f"{name}.{_PAUSED}", b"1")
        elif await self._paused(kv, name):
            await kv.delete(f"{name}.{_PAUSED}")
        return True

    async def remove(self, name: str) -> bool:
        kv, objects = await self._kv.get(), await self._objects.get()
        definition = await self._definition(kv, name)
        if definition is None:
            return False
        await kv.delete(f"{name}.{_DEFINITION}")
        if await self._paused(kv, name):
            await kv.delete(f"{name}.{_PAUSED}")
        await _delete_object(objects, f"{name}/{definition.get('code_hash', '')}")
        return True

    @staticmethod
    async def _definition(kv: KeyValue, name: str) -> dict[str, Any] | None:
        _, entry = await at_revision(kv, f"{name}.{_DEFINITION}")
        if entry is None or not entry.value:
            return None
        found: dict[str, Any] = orjson.loads(entry.value)
        return found

    @staticmethod
    async def _paused(kv: KeyValue, name: str) -> bool:
        _, entry = await at_revision(kv, f"{name}.{_PAUSED}")
        return entry is not None


async def _delete_object(objects: ObjectStore, name: str) -> None:
    with contextlib.suppress(ObjectNotFoundError):
        await objects.delete(name)
