"""State kept in the appliance between calls: `@idempotent`, `@latest_only`, `store()`.

Standard library only: this runs inside function venvs. The state lives in the
appliance's key-value store, reached over its API (``VEBA_API_URL``) with the
token the appliance gives each function's workers (``VEBA_STORE_TOKEN``), which
opens the function's own namespace only. So it holds across the workers of a
function, across restarts, and across nodes once the log runs on NATS.

```python
from veba.sdk import idempotent, latest_only

@idempotent(key="data.Key", expires_after=3600)
def handle(req):                 # python3, python3-http or veba-cloudevent signature
    open_ticket(...)             # runs once per key; a duplicate gets the stored result

@latest_only(key="data.Vm.Vm.Value")
def handle(event, ctx):
    apply_state(event)           # an event older (by vCenter Key) than one seen is dropped
```

When the store cannot be reached the call fails (`StoreUnavailable`, a 503) and
the delivery is retried: these decorators never let a call through unchecked.
"""

from __future__ import annotations

import base64
import contextlib
import enum
import functools
import hashlib
import http.client
import json
import os
import re
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, cast, overload

from veba.sdk._call import deadline as _call_deadline
from veba.sdk.event import Event, MissingField, NotACloudEvent
from veba.sdk.log import get_logger

__all__ = [
    "Entry",
    "IdempotencyInProgress",
    "IdempotencyKeyReused",
    "RevisionConflict",
    "Status",
    "StoreClient",
    "StoreDenied",
    "StoreError",
    "StoreUnavailable",
    "idempotent",
    "latest_only",
    "store",
]

F = TypeVar("F", bound=Callable[..., Any])
P = ParamSpec("P")

DEFAULT_EXPIRES_AFTER = 3600.0  # how long a COMPLETED record answers duplicates
_DEFAULT_TIMEOUT = 30.0  # the function's timeout when the appliance did not say
# Added to the in-progress expiry: the pool kills a call at its timeout counted
# from when the call became current, a moment before the handler starts.
_GRACE = 2.0
_REQUEST_TIMEOUT = 10.0
_POLL_FIRST, _POLL_MAX = 0.02, 0.5
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


# --- errors ----------------------------------------------------------------------------


class StoreError(RuntimeError):
    """The store refused a request or answered in a way the SDK does not understand."""

    http_status = 500


class StoreUnavailable(StoreError):
    """The store could not be reached (or is not configured): the call fails, and
    the delivery is retried."""

    http_status = 503


class StoreDenied(StoreError):
    """The store refused the token: 401 (unknown token) or 403 (another function's namespace)."""


class RevisionConflict(StoreError):
    """A conditional write found another revision; `current` is the entry there now."""

    http_status = 409

    def __init__(self, message: str, current: Entry | None) -> None:
        super().__init__(message)
        self.current = current


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


# --- the store client ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    value: Any
    revision: int
    expires_at: float | None = None

    @classmethod
    def from_json(cls, doc: Any) -> Entry:
        if not isinstance(doc, dict) or "revision" not in doc:
            raise StoreError(f"the store answered with something that is not an entry: {doc!r}")
        expires = doc.get("expires_at")
        return cls(str(doc.get("key")), doc.get("value"), int(doc["revision"]), expires)


class StoreClient:
    """The function's namespace of the appliance's store, over HTTP (keep-alive).

    Defaults come from the worker's environment: ``VEBA_API_URL``,
    ``VEBA_STORE_TOKEN`` and ``VEBA_FUNCTION_NAME`` (the namespace). Safe to share
    between threads: each thread keeps its own connection.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        namespace: str | None = None,
        *,
        timeout: float = _REQUEST_TIMEOUT,
    ) -> None:
        url = url or os.environ.get("VEBA_API_URL")
        token = token or os.environ.get("VEBA_STORE_TOKEN")
        namespace = namespace or os.environ.get("VEBA_FUNCTION_NAME")
        missing = [
            name
            for name, value in (
                ("VEBA_API_URL", url),
                ("VEBA_STORE_TOKEN", token),
                ("VEBA_FUNCTION_NAME", namespace),
            )
            if not value
        ]
        if missing:
            raise StoreUnavailable(
                f"no store configured: {', '.join(missing)} not set (the appliance sets"
                " them for its workers; outside one, pass a StoreClient explicitly)"
            )
        assert url and token and namespace
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise StoreUnavailable(f"VEBA_API_URL {url!r}: expected http(s)://HOST:PORT")
        self.url = url.rstrip("/")
        self.namespace = namespace
        self.timeout = timeout
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port
        self._base = parts.path.rstrip("/") + "/api/v1/store/" + urllib.parse.quote(namespace)
        self._headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"StoreClient({self.url!r}, namespace={self.namespace!r})"

    # -- the key-value calls ----------------------------------------------------------

    def get(self, key: str, *, timeout: float | None = None) -> Entry | None:
        """The live entry, or None."""
        status, doc = self._request("GET", key, None, timeout)
        if status == 404:
            return None
        return Entry.from_json(doc)

    def put(
        self,
        key: str,
        value: Any,
        *,
        ttl: float | None = None,
        expect_revision: int | None = None,
        timeout: float | None = None,
    ) -> Entry:
        """Write ``value`` (JSON). With ``expect_revision`` only if the entry is still
        at that revision (0: only if there is none), else `RevisionConflict`."""
        body: dict[str, Any] = {"value": value}
        if ttl is not None:
            body["ttl"] = ttl
        if expect_revision is not None:
            body["expect_revision"] = expect_revision
        status, doc = self._request("PUT", key, body, timeout)
        if status == 404:
            raise StoreError(f"the store at {self.url} has no route for {key!r}")
        return Entry.from_json(doc)

    def create(
        self, key: str, value: Any, *, ttl: float | None = None, timeout: float | None = None
    ) -> Entry:
        """Write ``value`` only if ``key`` has no live entry, else `RevisionConflict`."""
        return self.put(key, value, ttl=ttl, expect_revision=0, timeout=timeout)

    def delete(
        self, key: str, *, expect_revision: int | None = None, timeout: float | None = None
    ) -> bool:
        """Remove the entry; False if there was none."""
        query = "" if expect_revision is None else f"?expect_revision={expect_revision}"
        _, doc = self._request("DELETE", key, None, timeout, query)
        return bool(isinstance(doc, dict) and doc.get("deleted"))

    def list(self, prefix: str = "", *, limit: int = 1000) -> list[Entry]:
        """Live entries in key order."""
        query = "?" + urllib.parse.urlencode({"prefix": prefix, "limit": limit})
        _, doc = self._request("GET", None, None, None, query)
        entries = doc.get("entries") if isinstance(doc, dict) else None
        return [Entry.from_json(e) for e in entries or []]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- HTTP ---------------------------------------------------------------------------

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn, True
        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=self.timeout)
        self._local.conn = conn
        return conn, False

    def _request(
        self,
        method: str,
        key: str | None,
        body: Any,
        timeout: float | None,
        query: str = "",
    ) -> tuple[int, Any]:
        path = self._base
        if key is not None:
            path += "/" + urllib.parse.quote(key, safe="/=")
        path += query
        data = None if body is None else json.dumps(body, allow_nan=False).encode()
        wait = self.timeout if timeout is None else max(0.2, min(timeout, self.timeout))
        where = f"{method} {self.url}{path.split('?')[0]}"
        for attempt in (1, 2):
            conn, reused = self._connection()
            conn.timeout = wait
            if conn.sock is not None:
                conn.sock.settimeout(wait)
            try:
                conn.request(method, path, body=data, headers=self._headers)
                response = conn.getresponse()
                payload = response.read()
            except (ConnectionResetError, BrokenPipeError, http.client.BadStatusLine) as exc:
                self.close()
                if reused and attempt == 1:
                    continue  # the server closed an idle keep-alive connection: once more
                raise StoreUnavailable(f"store unreachable ({where}): {exc!r}") from exc
            except (OSError, http.client.HTTPException) as exc:  # refused, timed out, ...
                self.close()
                raise StoreUnavailable(f"store unreachable ({where}): {exc!r}") from exc
            if response.will_close:
                self.close()
            return self._answer(response.status, payload, where)
        raise AssertionError("unreachable")

    def _answer(self, status: int, payload: bytes, where: str) -> tuple[int, Any]:
        try:
            doc = json.loads(payload) if payload else None
        except ValueError:
            doc = None
        detail = ""
        if isinstance(doc, dict):
            detail = str(doc.get("error") or doc.get("detail") or "")
        if status < 300 or status == 404:
            return status, doc
        if status == 409:
            current = doc.get("current") if isinstance(doc, dict) else None
            raise RevisionConflict(
                detail or f"revision conflict ({where})",
                None if current is None else Entry.from_json(current),
            )
        if status in (401, 403):
            raise StoreDenied(f"store refused the token ({where}): {status} {detail}")
        if status >= 500:
            raise StoreUnavailable(f"store failed ({where}): {status} {detail}")
        raise StoreError(f"store rejected the request ({where}): {status} {detail}")


_clients: dict[tuple[str | None, ...], StoreClient] = {}
_clients_lock = threading.Lock()


def store() -> StoreClient:
    """This function's store client, from the worker's environment (one per process)."""
    return _default_client()


def _default_client() -> StoreClient:
    config = tuple(
        os.environ.get(name) for name in ("VEBA_API_URL", "VEBA_STORE_TOKEN", "VEBA_FUNCTION_NAME")
    )
    with _clients_lock:
        client = _clients.get(config)
        if client is None:
            client = _clients[config] = StoreClient()
        return client


# --- finding the event among a handler's arguments ------------------------------------


@dataclass(frozen=True, slots=True)
class _Call:
    event: Event
    shape: str  # "plain" (python3), "http" (python3-http), "native", "other"
    deadline: float | None  # when this attempt times out (time.time()), if known


def _shape(value: Any) -> str:
    if isinstance(value, str | bytes | bytearray | memoryview):
        return "plain"
    if isinstance(getattr(value, "body", None), bytes | bytearray) and hasattr(value, "headers"):
        return "http"
    if isinstance(getattr(value, "attributes", None), dict) and hasattr(value, "data"):
        return "native"
    return "other"


def _find_call(helper: str, fn: Callable[..., Any], args: Any, kwargs: Any) -> _Call:
    event: Event | None = None
    shape = "other"
    found_deadline: float | None = None
    for value in (*args, *kwargs.values()):
        if event is None:
            try:
                event = Event(value)
                shape = _shape(value)
                continue
            except (NotACloudEvent, TypeError):
                pass
        given = getattr(value, "deadline", None)  # the veba-cloudevent ctx
        if isinstance(given, int | float) and not isinstance(given, bool):
            found_deadline = float(given)
    if event is None:
        raise NotACloudEvent(
            f"@{helper} on {fn.__qualname__}(): none of its arguments is a CloudEvent"
            " (expected the request text, the python3-http event, or the CloudEvent)"
        )
    running = _call_deadline()
    return _Call(event, shape, running if running is not None else found_deadline)


def _function_timeout(call: _Call, now: float) -> float:
    """An upper bound of how long this call may still run: the function's timeout
    (set by the appliance), else what is left of the attempt, else 30 s."""
    raw = os.environ.get("VEBA_FUNCTION_TIMEOUT")
    try:
        timeout = float(raw) if raw else None
    except ValueError:
        timeout = None
    if timeout is not None and timeout > 0:
        return timeout
    if call.deadline is not None:
        return max(call.deadline - now, 0.0)
    return _DEFAULT_TIMEOUT


def _budget_end(call: _Call, now: float) -> float:
    """Until when this call may wait for another: its deadline less a margin, so it
    answers (and the delivery is retried) before it is killed."""
    end = call.deadline if call.deadline is not None else now + _function_timeout(call, now)
    margin = min(1.0, max(end - now, 0.0) * 0.1)
    return end - margin


def _lookup(call: _Call, key: str | Callable[[Event], Any], helper: str) -> Any:
    if callable(key):
        value = key(call.event)
        if value is None:
            raise MissingField(
                f"key of @{helper}", call.event.id, call.event.subject, "the key function gave None"
            )
        return value
    return call.event.require(key)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:40]


def _name(fn: Callable[..., Any], name: str | None) -> str:
    scope = name or str(getattr(fn, "__qualname__", "handler"))
    return _UNSAFE.sub("_", scope)[:100] or "handler"


def _remaining(end: float) -> float:
    return max(end - time.time(), 0.0)


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
def idempotent(fn: F, /) -> F: ...


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
) -> Callable[[F], F]: ...


def idempotent(
    fn: F | None = None,
    /,
    *,
    key: str | Callable[[Event], Any] | None = None,
    expires_after: float | None = DEFAULT_EXPIRES_AFTER,
    payload: str | Callable[[Event], Any] | None = "data",
    name: str | None = None,
    store: StoreClient | None = None,
) -> F | Callable[[F], F]:
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

    def decorate(func: F) -> F:
        scope = _name(func, name)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            call = _find_call("idempotent", func, args, kwargs)
            event = call.event
            if key is None:
                ident = _text([event.source, event.id])
            else:
                ident = _text(_lookup(call, key, "idempotent"))
            if payload is None:
                digest = ""
            elif callable(payload):
                digest = _digest(_text(payload(event)))
            else:
                digest = _digest(_text(event.get(payload)))
            record = _Idempotency(
                client=store or _default_client(),
                storage_key=f"idempotent.{scope}.{_digest(ident)}",
                ident=ident,
                digest=digest,
                call=call,
                expires_after=expires_after,
            )
            return record.run(lambda: func(*args, **kwargs))

        return cast(F, wrapper)

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
        call: _Call,
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
        self.end = _budget_end(call, self.started)
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
        return min(_REQUEST_TIMEOUT, max(_remaining(self.end), 1.0))

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
            ttl = _function_timeout(self.call, now) + _GRACE
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
                left = _remaining(self.end)
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
                if _remaining(self.end) < delay + 0.5:
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


# --- @latest_only --------------------------------------------------------------------


def latest_only(
    key: str | Callable[[Event], Any],
    *,
    order_by: str = "data.Key",
    name: str | None = None,
    store: StoreClient | None = None,
    on_skip: Callable[[str], Any] | None = None,
) -> Callable[[Callable[P, Any]], Callable[P, Any]]:
    """Drop an event that is not newer than the last one seen for its key.

    ``key``: what the events are about, a dotted path or a function of the `Event`
    (``"data.Vm.Vm.Value"``: one watermark per VM, per event source). ``order_by``:
    the number that orders them (vCenter's event ``Key``). The watermark is moved
    by compare-and-set, so concurrent workers never move it back, and before the
    handler runs, so an older event arriving meanwhile is dropped too. A
    redelivery of the very event that set the watermark (a failed attempt) runs
    again. A dropped event returns, by signature: python3 ``{"skipped": true,
    "reason": ...}``; python3-http that as the body of a 200 with header
    ``X-Veba-Skipped``; veba-cloudevent the same as (body, 200, headers); any
    other function None. ``on_skip(reason)`` returns something else instead.
    """

    def decorate(func: Callable[P, Any]) -> Callable[P, Any]:
        scope = _name(func, name)

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            call = _find_call("latest_only", func, args, kwargs)
            event = call.event
            subject = _text(_lookup(call, key, "latest_only"))
            order = _order(call, order_by)
            client = store or _default_client()
            storage_key = f"latest.{scope}.{_digest(event.source or '', subject)}"
            reason = _advance(client, storage_key, call, subject, order)
            if reason is None:
                return func(*args, **kwargs)
            get_logger(event, helper="latest_only").info(
                "skipped: " + reason, key=subject[:200], order=order
            )
            if on_skip is not None:
                return on_skip(reason)
            return _skipped(call.shape, reason)

        return wrapper

    return decorate


def _order(call: _Call, path: str) -> float:
    value = call.event.require(path)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MissingField(path, call.event.id, call.event.subject, "it is not a number")
    return value


def _advance(
    client: StoreClient, storage_key: str, call: _Call, subject: str, order: float
) -> str | None:
    """Move the watermark to ``order``; None to run the call, else why it is dropped."""
    event = call.event
    end = _budget_end(call, time.time())
    timeout = min(_REQUEST_TIMEOUT, max(_remaining(end), 1.0))
    current = client.get(storage_key, timeout=timeout)
    while True:
        if current is not None and isinstance(current.value, dict):
            mark = current.value.get("order")
            seen = current.value.get("event")
            if isinstance(mark, int | float):
                if order < mark or (order == mark and seen != event.id):
                    return (
                        f"{_order_text(order)} is not newer than {_order_text(mark)}"
                        f" (event {seen}) for {subject[:200]}"
                    )
                if order == mark:
                    return None  # a redelivery of the event that set the watermark
        watermark = {
            "order": order,
            "event": event.id,
            "key": subject[:256],
            "source": event.source,
            "subject": event.subject,
            "seen": time.time(),
        }
        try:
            client.put(
                storage_key,
                watermark,
                expect_revision=current.revision if current is not None else 0,
                timeout=timeout,
            )
            return None
        except RevisionConflict as conflict:
            current = conflict.current  # another worker moved it: judge again
            if _remaining(end) <= 0:
                raise StoreUnavailable(
                    f"could not move the watermark of {subject[:200]} before the deadline"
                ) from conflict


def _order_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _skipped(shape: str, reason: str) -> Any:
    note = {"skipped": True, "reason": reason}
    headers = {"X-Veba-Skipped": "latest_only"}
    if shape == "http":
        return {"statusCode": 200, "body": note, "headers": headers}
    if shape == "native":
        return note, 200, headers
    if shape == "plain":
        return note
    return None
