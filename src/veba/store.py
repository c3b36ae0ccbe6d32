"""The functions' key-value store: small, namespaced, with compare-and-set and expiry.

What the SDK's `@idempotent` and `@latest_only` keep between calls, shared by all
workers of a function (and, once the log runs on NATS, by all nodes). Each
function gets one namespace, its own name; it reaches the store over the
appliance's API (`/api/v1/store/...`) with a token the appliance makes for each
pool it starts, which opens that namespace and no other (`StoreTokens`).

The semantics are those of a NATS JetStream KV bucket, so that implementation
can follow the SQLite one (`veba.eventlog.sqlite_store.SQLiteStore`):

- every write gives the entry a new `revision`, larger than any revision the
  store has handed out before (a key deleted and created again does not reuse
  one), and a write may name the revision it expects: `expect_revision=0` means
  "only if there is no entry", `n` means "only if the entry is still at n";
  otherwise it fails with `RevisionMismatch`, which carries what is there now;
- an entry may expire (`ttl` seconds after its write); past that it is gone for
  every reader and writer, as if deleted. (NATS 2.9 has no per-key TTL, so that
  implementation keeps the expiry in the value and treats a stale entry as
  absent, replacing it by CAS on its revision.)
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from veba.settings import parse_listen

__all__ = [
    "MAX_KEY_LENGTH",
    "MAX_VALUE_BYTES",
    "Entry",
    "InvalidStoreRequest",
    "RevisionMismatch",
    "Store",
    "StoreTokens",
    "ValueTooLarge",
    "check_key",
    "check_namespace",
    "check_ttl",
    "encode_value",
    "local_api_url",
]

MAX_KEY_LENGTH = 512
MAX_VALUE_BYTES = 1 << 20  # NATS' default max payload
# NATS KV's key alphabet, so keys carry over unchanged; no leading or trailing dot.
_KEY = re.compile(r"^[-/_=.a-zA-Z0-9]+$")
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class InvalidStoreRequest(ValueError):
    """A malformed key, namespace, ttl or value; the message says which."""


class ValueTooLarge(InvalidStoreRequest):
    """A value over `MAX_VALUE_BYTES` of JSON."""


@dataclass(frozen=True, slots=True)
class Entry:
    namespace: str
    key: str
    value: Any  # any JSON value
    revision: int
    created: float
    updated: float
    expires_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "value": self.value,
            "revision": self.revision,
            "created": self.created,
            "updated": self.updated,
            "expires_at": self.expires_at,
        }


class RevisionMismatch(Exception):
    """A conditional write found another revision; `current` is the live entry, if any."""

    def __init__(self, namespace: str, key: str, expected: int, current: Entry | None) -> None:
        have = f"revision {current.revision}" if current else "no entry"
        super().__init__(f"{namespace}/{key}: expected revision {expected}, found {have}")
        self.expected = expected
        self.current = current


class Store(Protocol):
    """A namespaced key-value store with compare-and-set and expiry."""

    async def get(self, namespace: str, key: str) -> Entry | None:
        """The live entry, or None (never written, deleted, or expired)."""
        ...

    async def put(
        self,
        namespace: str,
        key: str,
        value: Any,
        *,
        ttl: float | None = None,
        expect_revision: int | None = None,
    ) -> Entry:
        """Write `value` (JSON); with `expect_revision` only if the live entry is at
        that revision (0: only if there is none), else `RevisionMismatch`. With
        `ttl` the entry expires that many seconds from now; without, never."""
        ...

    async def delete(self, namespace: str, key: str, *, expect_revision: int | None = None) -> bool:
        """Remove the entry; False if there was no live one. With `expect_revision`
        only if the live entry is at that revision, else `RevisionMismatch`."""
        ...

    async def namespaces(self) -> list[str]:
        """Every namespace with a live entry, sorted (what `veba migrate` copies)."""
        ...

    async def list(self, namespace: str, *, prefix: str = "", limit: int = 1000) -> list[Entry]:
        """Live entries of a namespace in key order."""
        ...

    async def drop(self, namespace: str) -> int:
        """Remove a whole namespace (its function was removed); returns how many entries."""
        ...


def check_namespace(namespace: str) -> str:
    if not _NAMESPACE.match(namespace) or len(namespace) > 63:
        raise InvalidStoreRequest(
            f"namespace {namespace!r}: expected a function name (DNS-1123 label)"
        )
    return namespace


def check_key(key: str) -> str:
    if (
        not key
        or len(key) > MAX_KEY_LENGTH
        or not _KEY.match(key)
        or key[0] == "."
        or key[-1] == "."
        or ".." in key
    ):
        raise InvalidStoreRequest(
            f"key {key[:80]!r}: expected 1 to {MAX_KEY_LENGTH} of the characters"
            " a-z A-Z 0-9 - _ = . /, not starting or ending with '.', no '..'"
        )
    return key


def check_ttl(ttl: float | None) -> float | None:
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl):
        raise InvalidStoreRequest(f"ttl {ttl!r}: expected seconds as a number")
    if ttl <= 0:
        raise InvalidStoreRequest(f"ttl {ttl!r}: must be greater than zero")
    return float(ttl)


def encode_value(value: Any) -> bytes:
    """A value's JSON, refused if it is not JSON or over `MAX_VALUE_BYTES`."""
    try:
        data = orjson.dumps(value)
    except TypeError as exc:
        raise InvalidStoreRequest(f"value is not JSON: {exc}") from None
    if len(data) > MAX_VALUE_BYTES:
        raise ValueTooLarge(
            f"value is {len(data)} bytes of JSON; the store takes at most {MAX_VALUE_BYTES}"
        )
    return data


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class StoreTokens:
    """The per-function store tokens in force: one per running pool, in memory only
    (workers die with the appliance, and a restarted appliance issues new ones).
    Kept as digests, so a lookup does not compare secrets byte by byte."""

    def __init__(self) -> None:
        self._namespaces: dict[str, str] = {}

    def issue(self, namespace: str) -> str:
        token = "vst_" + secrets.token_urlsafe(32)
        self._namespaces[_digest(token)] = check_namespace(namespace)
        return token

    def revoke(self, token: str) -> None:
        self._namespaces.pop(_digest(token), None)

    def namespace(self, token: str) -> str | None:
        """The namespace `token` opens, or None for a token this appliance did not issue."""
        return self._namespaces.get(_digest(token))

    def __len__(self) -> int:
        return len(self._namespaces)


def local_api_url(listen: str, *, tls: bool = False) -> str:
    """How a worker (or a CLI) on this machine reaches the API served on `listen`
    (HOST:PORT), over HTTPS if it serves TLS: a wildcard address is reached on
    loopback."""
    host, port = parse_listen(listen)
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"
