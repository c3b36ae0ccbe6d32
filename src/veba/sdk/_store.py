"""The function's namespace of the appliance's key-value store, over its HTTP API.

Standard library only: this runs inside function venvs. `store()` is the client
the worker's environment configures (``VEBA_API_URL``, ``VEBA_STORE_TOKEN``,
``VEBA_FUNCTION_NAME``); `StoreClient` is one built explicitly. The state
decorators (`veba.sdk.state`) keep their records through it.

(Not ``veba/sdk/store.py``: that submodule would shadow the function
``veba.sdk.store`` as an attribute of the package once imported.)
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import threading
import urllib.parse
from dataclasses import dataclass
from typing import Any

__all__ = [
    "REQUEST_TIMEOUT",
    "Entry",
    "RevisionConflict",
    "StoreClient",
    "StoreDenied",
    "StoreError",
    "StoreUnavailable",
    "default_client",
    "store",
]

REQUEST_TIMEOUT = 10.0  # the time limit of one request, by default


def _tls_context() -> ssl.SSLContext:
    """For an appliance serving HTTPS (`veba serve --tls-cert`): its workers reach
    the API on loopback, where no certificate name fits, so they trust exactly
    the appliance's own certificate (``VEBA_API_CERT``, PEM) instead of checking
    names against the usual CAs. Anything else gets the default checks."""
    pinned = os.environ.get("VEBA_API_CERT")
    if not pinned:
        return ssl.create_default_context()
    context = ssl.create_default_context(cadata=pinned)
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # a leaf as the trust anchor
    return context


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
        timeout: float = REQUEST_TIMEOUT,
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
        if self._scheme == "https":
            conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout, context=_tls_context()
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
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
    return default_client()


def default_client() -> StoreClient:
    """The same client as `store()`: the decorators call it by this name, as their
    ``store=`` parameter hides that one."""
    config = tuple(
        os.environ.get(name) for name in ("VEBA_API_URL", "VEBA_STORE_TOKEN", "VEBA_FUNCTION_NAME")
    )
    with _clients_lock:
        client = _clients.get(config)
        if client is None:
            client = _clients[config] = StoreClient()
        return client
