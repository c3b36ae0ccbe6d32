"""`@idempotent`: run a handler once per idempotency key; a duplicate gets the stored result.

Standard library only: this runs inside function venvs. The record of each key
lives in the function's namespace of the appliance's store (`veba.sdk._store`).
"""

from __future__ import annotations

import base64
import enum
import functools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, overload

from veba.sdk._handler_call import (
    HandlerCall,
    as_text,
    budget_end,
    digest_of,
    find_call,
    function_timeout,
    lookup_key,
    remaining_until,
    scope_name,
)
from veba.sdk._store import (
    REQUEST_TIMEOUT,
    Entry,
    RevisionConflict,
    StoreClient,
    StoreError,
    StoreUnavailable,
    default_client,
)
from veba.sdk.event import Event
from veba.sdk.log import get_logger

__all__ = [
    "DEFAULT_EXPIRES_AFTER",
    "IdempotencyInProgress",
    "IdempotencyKeyReused",
    "Status",
    "idempotent",
]

# The decorated handler keeps its signature: a duplicate gets what the first call returned.
P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_EXPIRES_AFTER = 3600.0  # how long a COMPLETED record answers duplicates
# Added to the in-progress expiry: the pool kills a call at its timeout counted
# from when the call became current, a moment before the handler starts.
_GRACE = 2.0
_POLL_FIRST, _POLL_MAX = 0.02, 0.5


# --- errors and record states ------------------------------------------------------


class IdempotencyKeyReused(ValueError):
    """An idempotency key already stands for a different payload: a bug in the key
    choice, or an event that changed under the same id. Not retried (422)."""

    http_status = 422


class IdempotencyInProgress(RuntimeError):
    """Another call holds this idempotency key and did not finish within this call's
    time; the delivery is retried (503) and finds the result, or takes over."""

    http_status = 503


class Status(enum.StrEnum):
    """The states of an idempotency record.

    IN_PROGRESS: a call holds the key; it expires with that call's timeout, so a
    call that died does not hold it for ever. COMPLETED: the call succeeded; its
    result answers duplicates until ``expires_after``. EXPIRED: past its expiry
    the record is gone for the store, and the next call with the key runs.
    """

    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    EXPIRED = "EXPIRED"


# --- results: stored as JSON, given back as they were ---------------------------------


def _pack(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, tuple):
        return {"$tuple": [_pack(v) for v in value]}
    if isinstance(value, list):
        return [_pack(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("a dict with keys that are not strings")
        packed = {k: _pack(v) for k, v in value.items()}
        return {"$dict": packed} if any(k.startswith("$") for k in value) else packed
    raise TypeError(f"a {type(value).__name__}")


def _unpack(value: Any) -> Any:
    if isinstance(value, list):
        return [_unpack(v) for v in value]
    if isinstance(value, dict):
        if len(value) == 1:
            ((tag, inner),) = value.items()
            if tag == "$bytes":
                return base64.b64decode(inner)
            if tag == "$tuple":
                return tuple(_unpack(v) for v in inner)
            if tag == "$dict":
                return {k: _unpack(v) for k, v in inner.items()}
        return {k: _unpack(v) for k, v in value.items()}
    return value


def _failed(result: Any) -> bool:
    """A result the runtime answers with an error status: not stored, so a retry runs."""
    status: Any = None
    if isinstance(result, dict):
        status = result.get("statusCode")
    elif isinstance(result, tuple) and len(result) in (2, 3):
        status = result[1]
    return isinstance(status, int) and not isinstance(status, bool) and status >= 400


# --- @idempotent ---------------------------------------------------------------------


@overload
def idempotent(fn: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def idempotent(
    fn: None = None,
    /,
    *,
    key: str | Callable[[Event], Any] | None = None,
    expires_after: float | None = DEFAULT_EXPIRES_AFTER,
    payload: str | Callable[[Event], Any] | None = "data",
    name: str | None = None,
    store: StoreClient | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def idempotent(
    fn: Callable[P, R] | None = None,
    /,
    *,
    key: str | Callable[[Event], Any] | None = None,
    expires_after: float | None = DEFAULT_EXPIRES_AFTER,
    payload: str | Callable[[Event], Any] | None = "data",
    name: str | None = None,
    store: StoreClient | None = None,
) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Run the handler once per idempotency key; a duplicate gets the stored result.

    ``key``: a dotted path into the event (``"data.Key"``, ``"id"``) or a function
    of the `Event`; by default the CloudEvent's source and id. ``payload``: what
    must be the same for two calls with one key (a path or function; default the
    event's data; None: no check); a different one raises `IdempotencyKeyReused`.
    ``expires_after``: seconds a COMPLETED record answers duplicates (None: for
    ever). ``name``: the record's scope, by default the decorated function's name.

    A call that finds the key IN_PROGRESS waits (polling with backoff, within its
    own deadline) for the result; if the holder died, its record expires with the
    function's timeout and the waiter takes over. A call that raises, or returns
    an error status, leaves no record, so the retry runs again.
    """

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        scope = scope_name(func, name)

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            call = find_call("idempotent", func, args, kwargs)
            event = call.event
            if key is None:
                ident = as_text([event.source, event.id])
            else:
                ident = as_text(lookup_key(call, key, "idempotent"))
            if payload is None:
                digest = ""
            elif callable(payload):
                digest = digest_of(as_text(payload(event)))
            else:
                digest = digest_of(as_text(event.get(payload)))
            record = _Idempotency(
                client=store or default_client(),
                storage_key=f"idempotent.{scope}.{digest_of(ident)}",
                ident=ident,
                digest=digest,
                call=call,
                expires_after=expires_after,
            )
            result: R = record.run(lambda: func(*args, **kwargs))
            return result

        return wrapper

    return decorate(fn) if fn is not None else decorate


class _Idempotency:
    """One call's dealings with its idempotency record."""

    def __init__(
        self,
        *,
        client: StoreClient,
        storage_key: str,
        ident: str,
        digest: str,
        call: HandlerCall,
        expires_after: float | None,
    ) -> None:
        self.client = client
        self.key = storage_key
        self.ident = ident
        self.digest = digest
        self.call = call
        self.expires_after = expires_after
        self.holder = uuid.uuid4().hex
        self.started = time.time()
        self.end = budget_end(call, self.started)
        self.log = get_logger(call.event, helper="idempotent", key=ident[:200])

    def _record(self, status: Status, **extra: Any) -> dict[str, Any]:
        return {
            "status": status.value,
            "key": self.ident[:256],
            "hash": self.digest,
            "holder": self.holder,
            "event": self.call.event.id,
            **extra,
        }

    def _timeout(self) -> float:
        return min(REQUEST_TIMEOUT, max(remaining_until(self.end), 1.0))

    def run(self, body: Callable[[], Any]) -> Any:
        claimed = self._claim()
        if not isinstance(claimed, Entry):
            return claimed.value  # a duplicate: the stored result
        try:
            result = body()
        except BaseException:
            self._release(claimed)
            raise
        if _failed(result):
            self._release(claimed)
            return result
        try:
            packed = _pack(result)
        except TypeError as exc:
            self._release(claimed)
            raise TypeError(
                f"@idempotent cannot store the result of the handler ({exc}): return"
                " str, bytes, a number, bool, None, or lists/dicts/tuples of those"
            ) from None
        self._complete(claimed, packed)
        return result

    def _claim(self) -> Entry | _Stored:
        """Our IN_PROGRESS record, or the stored result of a completed duplicate."""
        delay = _POLL_FIRST
        expect = 0
        waited = False
        while True:
            now = time.time()
            # Expires when this call must be over, so a holder that died (killed at
            # its timeout, its worker crashed) does not hold the key for ever.
            ttl = function_timeout(self.call, now) + _GRACE
            in_progress = self._record(Status.IN_PROGRESS, started=now, in_progress_until=now + ttl)
            try:
                return self.client.put(
                    self.key,
                    in_progress,
                    ttl=ttl,
                    expect_revision=expect,
                    timeout=self._timeout(),
                )
            except RevisionConflict as conflict:
                current = conflict.current
            # Someone has the key (or had, a moment ago).
            while True:
                if current is None:
                    expect = 0
                    break
                value = current.value if isinstance(current.value, dict) else {}
                if value.get("holder") == self.holder:
                    return current  # our own write, whose answer was lost
                status = _status(current)
                if status is Status.EXPIRED:
                    expect = current.revision  # take over by CAS on what is there
                    break
                if value.get("hash") != self.digest:
                    raise IdempotencyKeyReused(
                        f"idempotency key {self.ident[:200]!r} was used for a different"
                        f" payload (by event {value.get('event')}); this is event"
                        f" {self.call.event.id}"
                    )
                if status is Status.COMPLETED:
                    self.log.info(
                        "duplicate: returning the stored result"
                        + (" after waiting" if waited else ""),
                        first_event=value.get("event"),
                    )
                    return _Stored(_unpack(value.get("result")))
                # IN_PROGRESS elsewhere: wait for it, within this call's own time.
                if not waited:
                    self.log.info("in progress in another call: waiting for its result")
                    waited = True
                left = remaining_until(self.end)
                if left <= 0:
                    raise IdempotencyInProgress(
                        f"idempotency key {self.ident[:200]!r} is in progress in another"
                        f" call (event {value.get('event')}), still running when this"
                        " call ran out of time; the retry will find its result"
                    )
                time.sleep(min(delay, left))
                delay = min(delay * 1.5, _POLL_MAX)
                current = self.client.get(self.key, timeout=self._timeout())

    def _release(self, claimed: Entry) -> None:
        """The call failed: remove our record, so the retry runs again."""
        try:
            self.client.delete(self.key, expect_revision=claimed.revision)
        except RevisionConflict:
            pass  # expired and taken over meanwhile: not ours to remove
        except StoreError as exc:
            # It expires with the function's timeout anyway; the retry waits until then.
            self.log.warning("could not remove the in-progress record", error=str(exc))

    def _complete(self, claimed: Entry, packed: Any) -> None:
        done = self._record(Status.COMPLETED, completed=time.time(), result=packed)
        delay = 0.1
        while True:
            try:
                self.client.put(
                    self.key,
                    done,
                    ttl=self.expires_after,
                    expect_revision=claimed.revision,
                    timeout=self._timeout(),
                )
                return
            except RevisionConflict as conflict:
                current = conflict.current
                value = current.value if current is not None else None
                if isinstance(value, dict) and value.get("holder") == self.holder:
                    return  # the write landed; its answer was lost
                self.log.warning(
                    "the in-progress record expired before the call finished (did it run"
                    " past the function's timeout?); the result was not stored"
                )
                return
            except StoreUnavailable as exc:
                if remaining_until(self.end) < delay + 0.5:
                    raise StoreUnavailable(
                        f"the handler ran, but its result could not be stored: {exc}. The"
                        " delivery fails; its retry runs the handler again once the"
                        " in-progress record expires"
                    ) from exc
                time.sleep(delay)
                delay *= 2


@dataclass(frozen=True, slots=True)
class _Stored:
    value: Any


def _status(entry: Entry) -> Status:
    value = entry.value if isinstance(entry.value, dict) else {}
    if entry.expires_at is not None and entry.expires_at <= time.time():
        return Status.EXPIRED
    if value.get("status") == Status.COMPLETED.value:
        return Status.COMPLETED
    return Status.IN_PROGRESS
