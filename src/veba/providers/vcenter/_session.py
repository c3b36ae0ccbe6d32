"""One login to one vCenter with pyVmomi, and the event reads the stream needs.

Everything here blocks; the stream calls it from its own thread.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from veba import __version__
from veba.providers.vcenter._vmomi import Disconnect, SmartConnect, vim
from veba.providers.vcenter._wake import Wake

__all__ = ["HISTORY_PAGE", "Connection", "PyVmomiSession", "VCenterEndpoint"]

HISTORY_PAGE = 1000  # the largest page a collector has (and all this simulator keeps)
_USER_AGENT = f"veba/{__version__} (vCenter event provider; pyVmomi)"


@dataclass(frozen=True)
class VCenterEndpoint:
    """Where and how to reach one vCenter. The password is read at each login."""

    url: str  # the SDK URL: https://vcenter.example.com/sdk
    username: str
    password: Callable[[], str] = field(repr=False)
    insecure: bool = False
    ca_files: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"vCenter address {self.url!r}: expected https://HOST[:PORT]/sdk")
        if parts.username or parts.password:
            raise ValueError(
                f"vCenter address {parts.hostname}: put credentials in the config, not the URL"
            )

    @property
    def source(self) -> str:
        """The CloudEvent source: the SDK URL as configured, `/sdk` path included."""
        parts = urlsplit(self.url)
        path = parts.path.rstrip("/") or "/sdk"
        return f"{parts.scheme}://{parts.netloc}{path}"

    @property
    def netloc(self) -> str:
        return urlsplit(self.url).netloc

    def ssl_context(self) -> ssl.SSLContext | None:
        if urlsplit(self.url).scheme != "https":
            return None
        if self.insecure:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        if not self.ca_files:
            return ssl.create_default_context()
        # As VEBA does: custom root CAs replace the system's.
        context = ssl.create_default_context(cafile=self.ca_files[0])
        for path in self.ca_files[1:]:
            context.load_verify_locations(cafile=path)
        return context


@dataclass(frozen=True)
class Connection:
    instance_uuid: str
    api_version: str  # about.apiVersion, VEBA's `vsphereapiversion`
    stub_version: str  # pyVmomi's negotiated version, for the data shape


class PyVmomiSession:
    """A login, the wake-up on a collector's `latestPage`, and history reads.

    `wait` returns the events of every page change the waiters reported (see
    `Wake`). `history` is the catch-up: a fresh collector read with
    ReadNextEvents to its end, from a time on (this simulator ignores the time
    and returns its last 1,000 events, newest first; the stream dedupes on Key).
    """

    def __init__(
        self,
        endpoint: VCenterEndpoint,
        *,
        page_size: int = 10,
        waiters: int = 2,
        request_timeout: float = 60.0,
    ) -> None:
        self.endpoint = endpoint
        self.page_size = page_size
        self.waiters = waiters
        self.request_timeout = request_timeout
        self._si: Any = None
        self._content: Any = None
        self._collector: Any = None
        self._wake: Wake | None = None
        self._lock = threading.Lock()

    # -- session -----------------------------------------------------------------

    def connect(self) -> Connection:
        parts = urlsplit(self.endpoint.url)
        https = parts.scheme == "https"
        si = SmartConnect(
            protocol=parts.scheme,
            host=parts.hostname or "",
            port=parts.port or (443 if https else 80),
            path=parts.path.rstrip("/") or "/sdk",
            user=self.endpoint.username,
            pwd=self.endpoint.password(),
            sslContext=self.endpoint.ssl_context(),
            disableSslCertValidation=https and self.endpoint.insecure,
            # The socket timeout: longer than the longest wait, so that only a
            # dead connection trips it.
            httpConnectionTimeout=int(self.request_timeout),
            customHeaders={"User-Agent": _USER_AGENT},
        )
        with self._lock:
            self._si = si
        self._content = si.RetrieveContent()
        about = self._content.about
        return Connection(str(about.instanceUuid), str(about.apiVersion), str(si._stub.version))

    def close(self) -> None:
        """Destroy what we created and log out; never raises."""
        with self._lock:
            si, wake, collector = self._si, self._wake, self._collector
            self._si = self._wake = self._collector = None
        if wake is not None:
            wake.close()
        if collector is not None:
            with contextlib.suppress(Exception):
                collector.DestroyCollector()
        if si is not None:
            with contextlib.suppress(Exception):
                Disconnect(si)

    def interrupt(self) -> None:
        """Make a `wait` in another thread return now."""
        with self._lock:
            wake = self._wake
        if wake is not None:
            wake.interrupt()

    # -- reads ---------------------------------------------------------------------

    def _filter(self, page: int, since: datetime | None) -> Any:
        spec = vim.event.EventFilterSpec(
            entity=vim.event.EventFilterSpec.ByEntity(
                entity=self._content.rootFolder, recursion="all"
            ),
            maxCount=page,  # this simulator sizes the page from it; vCenter ignores it
        )
        if since is not None:
            spec.time = vim.event.EventFilterSpec.ByTime(beginTime=since)
        return spec

    def open_wake(self) -> list[Any]:
        """(Re)create the wake-up collector and its waiters; returns its page as it is now."""
        with self._lock:
            wake, collector = self._wake, self._collector
            self._wake = self._collector = None
        if wake is not None:
            wake.close()
        if collector is not None:
            with contextlib.suppress(Exception):
                collector.DestroyCollector()
        collector = self._content.eventManager.CreateCollectorForEvents(
            self._filter(self.page_size, None)
        )
        collector.SetCollectorPageSize(self.page_size)
        wake = Wake(self._content, collector, waiters=self.waiters)
        with self._lock:
            self._collector, self._wake = collector, wake
        return wake.start()

    def wait(self, max_wait: float) -> tuple[list[Any], bool]:
        """Block until the page changes or `max_wait` s pass: (events, timed out)."""
        wake = self._wake
        if wake is None:
            raise RuntimeError("open_wake first")
        return wake.get(max_wait)

    def history(self, since: datetime | None) -> list[Any]:
        """Every event the collector has from `since` on, in whatever order it gives them."""
        collector = self._content.eventManager.CreateCollectorForEvents(
            self._filter(HISTORY_PAGE, since)
        )
        try:
            out: list[Any] = []
            while True:
                batch: Sequence[Any] = collector.ReadNextEvents(HISTORY_PAGE)
                if not batch:
                    return out
                out.extend(batch)
        finally:
            with contextlib.suppress(Exception):
                collector.DestroyCollector()

    def event_descriptions(self) -> list[dict[str, Any]]:
        """The EventManager's `description.eventInfo`: every event type this vCenter
        knows (its EventEx and ExtendedEvent ids too), as plain dicts."""
        names = ("category", "description", "longDescription", "fullFormat")
        out = []
        for item in self._content.eventManager.description.eventInfo or ():
            key = item.key  # a vmodl type name, which pyVmomi reads as the class
            key = getattr(key, "_wsdlName", None) or str(key)
            out.append({"key": key, **{name: getattr(item, name, None) for name in names}})
        return out

    def latest(self) -> list[Any]:
        """The newest page of a fresh collector: what vCenter has now, for the stall check."""
        collector = self._content.eventManager.CreateCollectorForEvents(self._filter(1, None))
        try:
            return list(collector.latestPage or ())
        finally:
            with contextlib.suppress(Exception):
                collector.DestroyCollector()
