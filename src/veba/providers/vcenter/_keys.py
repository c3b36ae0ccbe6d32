"""vCenter event keys as serial numbers, and the provider's checkpoint.

A Key is an int32 that vCenter increments per event; in the field it has run
past 2**31 - 1 and gone negative. Comparing keys as serial numbers (RFC 1982,
32 bits) keeps "after" meaningful across that wrap, for any two keys less
than 2**31 apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from veba.providers.vcenter._shape import rfc3339

__all__ = ["Checkpoint", "after", "distance"]

_MOD = 1 << 32
_HALF = 1 << 31


def distance(key: int, base: int) -> int:
    """How many keys `key` comes after `base`, modulo 2**32 (0 when equal)."""
    return (key - base) % _MOD


def after(key: int, base: int) -> bool:
    """`key` is newer than `base`, across int32 wrap-around."""
    return 0 < distance(key, base) < _HALF


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The last committed event: its Key, its CreatedTime, and which vCenter said so."""

    key: int
    time: datetime | None
    instance_uuid: str | None = None

    def dumps(self) -> str:
        value: dict[str, object] = {
            "key": self.key,
            "time": rfc3339(self.time) if self.time else None,
        }
        if self.instance_uuid:
            value["uuid"] = self.instance_uuid
        return json.dumps(value, separators=(",", ":"))

    @classmethod
    def loads(cls, text: str) -> Checkpoint:
        """Raises ValueError for anything that is not a checkpoint this provider wrote."""
        try:
            value = json.loads(text)
            key = value["key"]
            if isinstance(key, bool) or not isinstance(key, int):
                raise TypeError("key is not an integer")
            time = value.get("time")
            when = datetime.fromisoformat(time.replace("Z", "+00:00")) if time else None
            uuid = value.get("uuid")
            return cls(key, when, str(uuid) if uuid else None)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"not a vCenter checkpoint: {text!r} ({exc})") from None
