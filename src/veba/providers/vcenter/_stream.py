"""The blocking loop that follows one vCenter's events: wake, catch up, publish.

It runs in a thread of its own (pyVmomi blocks) and owns the position: the
Key and CreatedTime of the last event whose commit `publish` confirmed. Every
(re)connect resumes from there with a catch-up read, so a session lost,
a network cut or a vCenter restart loses nothing; keys already committed are
never published again, and if one were, its deterministic id would make the
log drop it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from veba.events import Event, vsphere_event
from veba.providers.vcenter._keys import Checkpoint, after, distance
from veba.providers.vcenter._shape import event_class, event_kind, rfc3339, to_govmomi

__all__ = ["PublishBatch", "Session", "Stream", "StreamOptions"]

log = logging.getLogger("veba.providers.vcenter")

PublishBatch = Callable[[Sequence[Event], str], None]  # events, checkpoint; returns once durable


class Session(Protocol):
    """What the stream needs from a vCenter login (see `PyVmomiSession`)."""

    def connect(self) -> Any: ...  # -> Connection
    def close(self) -> None: ...
    def interrupt(self) -> None: ...
    def open_wake(self) -> list[Any]: ...
    def wait(self, max_wait: float) -> tuple[list[Any], bool]: ...
    def history(self, since: datetime | None) -> list[Any]: ...
    def latest(self) -> list[Any]: ...


@dataclass(frozen=True)
class StreamOptions:
    max_wait: float = 10.0  # seconds without progress before asking vCenter (stall check)
    backoff_first: float = 0.2
    backoff_max: float = 30.0
    batch: int = 1000  # events per commit


@dataclass(slots=True)
class _Item:
    key: int
    time: datetime
    raw: Any


def _items(raw: Sequence[Any]) -> list[_Item]:
    return [_Item(int(e.key), e.createdTime, e) for e in raw]


def _newest(items: Sequence[_Item]) -> _Item:
    """The newest of a set of events (keys may have wrapped; times may tie)."""
    base = min(items, key=lambda it: it.time).key
    return max(items, key=lambda it: distance(it.key, base))


def describe(exc: BaseException) -> str:
    """One line for status and logs (a vSphere fault's repr runs to many lines)."""
    vsphere = getattr(type(exc), "_wsdlName", None)  # a vSphere fault: its msg, not its repr
    name = str(vsphere or type(exc).__name__)
    text = str((getattr(exc, "msg", None) if vsphere else str(exc)) or "").strip()
    return f"{name}: {text.splitlines()[0]}" if text else name


class _Stopped(Exception):
    pass


class Stream:
    def __init__(
        self,
        session_factory: Callable[[], Session],
        *,
        source: str,
        publish: PublishBatch,
        checkpoint: Checkpoint | None,
        options: StreamOptions | None = None,
    ) -> None:
        self._new_session = session_factory
        self.source = source
        self._publish = publish
        self.options = options or StreamOptions()
        self._stop = threading.Event()
        self._session: Session | None = None
        self._conn: Any = None
        # The position: what the last confirmed commit covers.
        self.last_key: int | None = checkpoint.key if checkpoint else None
        self.last_time: datetime | None = checkpoint.time if checkpoint else None
        self.instance_uuid: str | None = checkpoint.instance_uuid if checkpoint else None
        # What status shows.
        self.state = "starting"  # connecting | catching-up | following | backoff | stopped
        self.connected = False
        self.api_version: str | None = None
        self.latest_key: int | None = self.last_key
        self.latest_time: datetime | None = self.last_time
        self.events = 0
        self.reconnects = 0
        self.catch_ups = 0
        self.last_catch_up: dict[str, float] | None = None  # events, seconds (read + commit)
        self.stalls = 0
        self.key_gaps = 0
        self.last_gap: tuple[int, int] | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_stall_at: float | None = None
        self.connected_at: float | None = None

    # -- control -----------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to end (it logs out on its way)."""
        self._stop.set()
        session = self._session
        if session is not None:
            session.interrupt()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        backoff = self.options.backoff_first
        while not self._stop.is_set():
            session = self._new_session()
            self._session = session
            self.state = "connecting"
            try:
                self._conn = session.connect()
                if self._stop.is_set():
                    break
                self.api_version = self._conn.api_version
                self.connected = True
                self.connected_at = time.monotonic()
                self._follow(session)
            except _Stopped:
                break
            except Exception as exc:
                if self._stop.is_set():
                    break
                self._failed("vCenter", exc)
            finally:
                self.connected = False
                self._session = None
                session.close()
            if self._stop.is_set():
                break
            if self.connected_at is not None and time.monotonic() - self.connected_at > 60:
                backoff = self.options.backoff_first  # it ran a while: a fresh failure
            self.reconnects += 1
            self.state = "backoff"
            delay = backoff * random.uniform(0.8, 1.2)
            backoff = min(backoff * 2, self.options.backoff_max)
            if self._stop.wait(delay):
                break
        self.state = "stopped"

    def _failed(self, where: str, exc: BaseException) -> None:
        self.connected = False
        self.last_error = f"{where}: {describe(exc)}"
        self.last_error_at = time.time()
        log.warning("%s: %s", self.source, self.last_error)

    # -- following -----------------------------------------------------------------

    def _follow(self, session: Session) -> None:
        self.state = "catching-up"
        self._resume(session, _items(session.open_wake()))
        self.state = "following"
        self.last_error = None
        # Without progress for a whole `max_wait` (quiet, or only old events
        # reported), ask vCenter directly whether it has moved on.
        check_at = time.monotonic() + self.options.max_wait
        while not self._stop.is_set():
            raw, _ = session.wait(max(check_at - time.monotonic(), 0.0))
            if self._stop.is_set():
                return
            before = self.last_key
            if raw:
                self._take(session, _items(raw))
            now = time.monotonic()
            if self.last_key != before:
                check_at = now + self.options.max_wait
            elif now >= check_at:
                check_at = now + self.options.max_wait
                if self._stalled(session):
                    self.state = "catching-up"
                    self._take(session, _items(session.open_wake()), catch_up=True)
                    self.state = "following"

    def _resume(self, session: Session, page: list[_Item]) -> None:
        """Right after login: start, or pick up from the checkpoint."""
        uuid = self._conn.instance_uuid
        if self.last_key is None:
            # First start: begin at vCenter's newest event, as VEBA does, and make
            # that position durable so a crash before the first event loses nothing.
            newest = _newest(page) if page else None
            self.instance_uuid = uuid
            self._commit([], newest.key if newest else None, newest.time if newest else None)
            if newest is not None:
                self.latest_key, self.latest_time = newest.key, newest.time
            log.info("%s: starting at key %s", self.source, self.last_key)
            return
        if self.instance_uuid and uuid != self.instance_uuid:
            log.warning(
                "%s: instance UUID changed from %s to %s (a different or rebuilt vCenter);"
                " delivering its events from %s on",
                self.source,
                self.instance_uuid,
                uuid,
                self.last_time,
            )
            self._rebase(session, page)
            return
        self.instance_uuid = uuid
        self._take(session, page, catch_up=True)

    def _new(self, items: Sequence[_Item]) -> list[_Item]:
        """Events after the position, once each, oldest first."""
        last = self.last_key
        fresh: dict[int, _Item] = {}
        for item in items:
            if last is None or after(item.key, last):
                fresh.setdefault(item.key, item)
        if not fresh:
            return []
        base = last if last is not None else min(fresh.values(), key=lambda it: it.time).key - 1
        return sorted(fresh.values(), key=lambda it: distance(it.key, base))

    def _take(self, session: Session, page: list[_Item], *, catch_up: bool = False) -> None:
        self._saw(page)
        new = self._new(page)
        started = time.monotonic()
        caught_up = catch_up or bool(self._holes(new))
        if caught_up:
            history = _items(session.history(self.last_time))
            self.catch_ups += 1
            self._saw(history)
            if not new and not self._new(history) and self._keys_went_back(history):
                self._rebase(session, page + history, history_read=True)
                return
            new = self._new(page + history)
            holes = self._holes(new)
            if holes:
                # Not there even in the history: vCenter skipped keys (or this
                # simulator's 1,000-event window has moved past them). Go on.
                self.key_gaps += len(holes)
                self.last_gap = holes[-1]
                log.info("%s: key gap(s), (last key, next key): %s", self.source, holes)
        self._publish_items(new)
        if caught_up:
            seconds = time.monotonic() - started
            self.last_catch_up = {
                "events": len(new),
                "seconds": round(seconds, 4),
                "at": time.time(),
            }
            if len(new) > 100:
                log.info("%s: caught up %d events in %.2f s", self.source, len(new), seconds)

    def _holes(self, new: Sequence[_Item]) -> list[tuple[int, int]]:
        """Where consecutive new keys (from the position on) are not one apart."""
        if self.last_key is None:
            return []
        holes = []
        previous = self.last_key
        for item in new:
            if distance(item.key, previous) != 1:
                holes.append((previous, item.key))
            previous = item.key
        return holes

    def _keys_went_back(self, history: Sequence[_Item]) -> bool:
        """Events newer than the position, none with a newer key: keys were reset."""
        if self.last_time is None:
            return False
        return any(item.time > self.last_time for item in history)

    def _rebase(self, session: Session, page: list[_Item], *, history_read: bool = False) -> None:
        """Keys no longer continue ours: go by CreatedTime instead, then by key again."""
        items = page if history_read else page + _items(session.history(self.last_time))
        since = self.last_time
        fresh = [it for it in items if since is None or it.time > since]
        unique = {it.key: it for it in fresh}
        ordered = sorted(unique.values(), key=lambda it: (it.time, it.key))
        self.instance_uuid = self._conn.instance_uuid
        if items:
            # The newest key seen so far belongs to the old numbering: measured
            # against the new keys it would show a lag that is not there.
            seen = _newest(items)
            self.latest_key, self.latest_time = seen.key, seen.time
        log.warning(
            "%s: keys restarted; %d event(s) newer than the checkpoint", self.source, len(ordered)
        )
        if ordered:
            self._publish_items(ordered)
        else:
            newest = _newest(items) if items else None
            self._commit([], newest.key if newest else self.last_key, self.last_time)

    def _saw(self, items: Sequence[_Item]) -> None:
        if not items:
            return
        newest = _newest(items)
        if self.latest_key is None or after(newest.key, self.latest_key):
            self.latest_key, self.latest_time = newest.key, newest.time

    def _stalled(self, session: Session) -> bool:
        """Idle for a whole wait: ask vCenter directly whether it has moved on."""
        latest = _items(session.latest())
        self._saw(latest)
        if not latest or self.last_key is None:
            return False
        newest = _newest(latest)
        if not after(newest.key, self.last_key):
            return False
        self.stalls += 1
        self.last_stall_at = time.time()
        self.last_error = (
            f"stalled: vCenter is at key {newest.key}, the collector reported nothing"
            f" after {self.last_key}; recreated it"
        )
        self.last_error_at = self.last_stall_at
        log.warning("%s: %s", self.source, self.last_error)
        return True

    # -- publishing ------------------------------------------------------------------

    def _publish_items(self, items: Sequence[_Item]) -> None:
        conn = self._conn
        size = self.options.batch
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            events = [
                vsphere_event(
                    to_govmomi(it.raw, conn.stub_version),
                    event_class=event_class(it.raw),
                    source=self.source,
                    instance_uuid=conn.instance_uuid,
                    kind=event_kind(it.raw),  # type: ignore[arg-type]
                    api_version=conn.api_version,
                )
                for it in chunk
            ]
            self._commit(events, chunk[-1].key, chunk[-1].time)

    def _commit(self, events: Sequence[Event], key: int | None, when: datetime | None) -> None:
        """Publish and wait for durability; retry the sink (not vCenter) until it takes them."""
        value = Checkpoint(key, when, self.instance_uuid).dumps() if key is not None else None
        backoff = self.options.backoff_first
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                if value is not None or events:
                    self._publish(events, value or "")
                break
            except Exception as exc:
                if self._stop.is_set():
                    raise _Stopped from exc
                self._failed("publishing", exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.options.backoff_max)
        self.last_key, self.last_time = key, when
        self.events += len(events)
        if self.last_error and self.last_error.startswith("publishing"):
            self.last_error = None

    # -- status ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        lag = None
        if self.latest_key is not None and self.last_key is not None:
            lag = distance(self.latest_key, self.last_key)
            lag = 0 if lag >= 1 << 31 else lag
        lag_seconds = None
        if self.latest_time is not None and self.last_time is not None:
            lag_seconds = max((self.latest_time - self.last_time).total_seconds(), 0.0)
        return {
            "state": self.state,
            "connected": self.connected,
            "instance_uuid": self.instance_uuid,
            "api_version": self.api_version,
            "last_key": self.last_key,
            "last_event_time": rfc3339(self.last_time) if self.last_time else None,
            "latest_key": self.latest_key,
            "lag": lag,
            "lag_seconds": lag_seconds,
            "events": self.events,
            "reconnects": self.reconnects,
            "catch_ups": self.catch_ups,
            "last_catch_up": self.last_catch_up,
            "stalls": self.stalls,
            "last_stall_at": self.last_stall_at,
            "key_gaps": self.key_gaps,
            "last_gap": list(self.last_gap) if self.last_gap else None,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
        }
