"""The vCenter stream's position logic against a scripted vCenter: resume, gaps,
wrap-around, lost sessions, stalls, a rebuilt vCenter, a failing sink.

The scripted vCenter behaves like govmomi's simulator where it matters: its
history read returns its last events in no useful order and ignores the time
filter, the wake-up reports each change with the page as it was then, and a
session can be lost at any request.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pyVmomi import vim

from veba.events import Event, event_id
from veba.providers.vcenter import Checkpoint, Stream, StreamOptions
from veba.providers.vcenter._session import Connection

INT32_MAX = 2**31 - 1
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class FakeVCenter:
    def __init__(self, *, first_key: int = 0, uuid: str = "vc-1", window: int = 1000) -> None:
        self.uuid = uuid
        self.window = window
        self.events: list[Any] = []
        self.next_key = first_key
        self.cond = threading.Condition()
        self.fail_next: list[BaseException] = []  # raised by the next requests, in order
        self.wake_broken = False  # the collector stops reporting changes
        self.wake_stale = False  # ... or keeps reporting its old page
        self.logins = 0
        self.history_reads = 0

    def post(self, count: int = 1, *, skip: int = 0) -> list[int]:
        keys = []
        with self.cond:
            for _ in range(count):
                self.next_key += 1 + skip
                if self.next_key > INT32_MAX:
                    self.next_key -= 2**32
                key = self.next_key
                created = T0 + timedelta(milliseconds=len(self.events))
                self.events.append(
                    vim.event.VmPoweredOnEvent(
                        key=key,
                        chainId=key,
                        createdTime=created,
                        userName="admin",
                        vm=vim.event.VmEventArgument(name="vm", vm=vim.VirtualMachine("vm-1")),
                    )
                )
                keys.append(key)
            self.cond.notify_all()
        return keys

    def session(self) -> FakeSession:
        return FakeSession(self)


class FakeSession:
    def __init__(self, vc: FakeVCenter) -> None:
        self.vc = vc
        self.seen = 0  # events the wake-up has reported
        self.interrupted = False
        self.open = False

    def _request(self) -> None:
        if not self.open:
            raise vim.fault.NotAuthenticated(msg="not logged in")
        if self.vc.fail_next:
            error = self.vc.fail_next.pop(0)
            if isinstance(error, vim.fault.NotAuthenticated):
                self.open = False
            raise error

    def connect(self) -> Connection:
        if self.vc.fail_next and isinstance(self.vc.fail_next[0], ConnectionError):
            raise self.vc.fail_next.pop(0)
        self.open = True
        self.vc.logins += 1
        return Connection(self.vc.uuid, "6.5", "vim.version.version11")

    def close(self) -> None:
        self.open = False

    def interrupt(self) -> None:
        with self.vc.cond:
            self.interrupted = True
            self.vc.cond.notify_all()

    def open_wake(self) -> list[Any]:
        self._request()
        with self.vc.cond:
            self.seen = len(self.vc.events)
            return list(self.vc.events[-1:])  # page size 1

    def wait(self, max_wait: float) -> tuple[list[Any], bool]:
        self._request()
        deadline = time.monotonic() + max_wait
        with self.vc.cond:
            while True:
                if self.interrupted:
                    return [], False
                if self.vc.wake_stale and self.seen:
                    self.vc.cond.wait(0.005)
                    return [self.vc.events[self.seen - 1]], False
                if not self.vc.wake_broken and len(self.vc.events) > self.seen:
                    # one page (of one event) per change, as the simulator reports them
                    new = self.vc.events[self.seen :]
                    self.seen = len(self.vc.events)
                    return new, False
                left = deadline - time.monotonic()
                if left <= 0:
                    return [], True
                self.vc.cond.wait(left)

    def history(self, since: datetime | None) -> list[Any]:
        self._request()
        self.vc.history_reads += 1
        with self.vc.cond:
            return list(reversed(self.vc.events[-self.vc.window :]))  # newest first

    def latest(self) -> list[Any]:
        self._request()
        with self.vc.cond:
            return list(self.vc.events[-1:])


@dataclass
class Sink:
    batches: list[tuple[list[Event], str]]
    fail: int = 0  # fail this many publishes first

    def __call__(self, events: Sequence[Event], checkpoint: str) -> None:
        if self.fail:
            self.fail -= 1
            raise OSError("disk full")
        self.batches.append((list(events), checkpoint))

    @property
    def keys(self) -> list[int]:
        return [e.data["Key"] for events, _ in self.batches for e in events]

    @property
    def checkpoint(self) -> Checkpoint:
        return Checkpoint.loads(self.batches[-1][1])


OPTIONS = StreamOptions(max_wait=0.1, backoff_first=0.01, backoff_max=0.05)


@pytest.fixture
def run() -> Iterator[Callable[..., tuple[Stream, Sink]]]:
    streams: list[tuple[Stream, threading.Thread]] = []

    def start(
        vc: FakeVCenter, checkpoint: Checkpoint | None = None, sink: Sink | None = None
    ) -> tuple[Stream, Sink]:
        sink = sink or Sink([])
        stream = Stream(
            vc.session, source="https://vc/sdk", publish=sink, checkpoint=checkpoint,
            options=OPTIONS,
        )  # fmt: skip
        thread = threading.Thread(target=stream.run, daemon=True)
        thread.start()
        streams.append((stream, thread))
        until(lambda: stream.state == "following")
        return stream, sink

    yield start
    for stream, thread in streams:
        stream.stop()
        thread.join(timeout=5)
        assert not thread.is_alive()


def until(check: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.002)


def test_first_start_begins_at_the_newest_event_and_commits_that(run) -> None:
    vc = FakeVCenter()
    vc.post(5)
    stream, sink = run(vc)
    assert sink.batches == [([], sink.batches[0][1])]  # the position, no events
    assert sink.checkpoint.key == 5 and sink.checkpoint.instance_uuid == "vc-1"
    vc.post(3)
    until(lambda: sink.keys == [6, 7, 8])
    assert json.loads(sink.batches[-1][1]) == {
        "key": 8,
        "time": "2026-03-01T12:00:00.007Z",
        "uuid": "vc-1",
    }
    event = sink.batches[-1][0][-1]
    assert event.id == event_id("vc-1", 8) and event.source == "https://vc/sdk"
    assert event.subject == "VmPoweredOnEvent" and event.attributes["vsphereapiversion"] == "6.5"
    until(lambda: stream.status()["lag"] == 0 and stream.status()["events"] == 3)


def test_resume_delivers_what_happened_while_down_once(run) -> None:
    vc = FakeVCenter()
    vc.post(30)
    checkpoint = Checkpoint(10, T0 + timedelta(milliseconds=9), "vc-1")
    stream, sink = run(vc, checkpoint)
    assert sink.keys == list(range(11, 31))
    assert stream.catch_ups == 1 and stream.key_gaps == 0
    vc.post(2)
    until(lambda: sink.keys[-1] == 32)
    assert sink.keys == list(range(11, 33))


def test_keys_wrap_around_to_negative_without_a_stall(run) -> None:
    vc = FakeVCenter(first_key=INT32_MAX - 3)
    vc.post(1)
    stream, sink = run(vc)
    keys = vc.post(6)
    assert keys == [INT32_MAX - 1, INT32_MAX, -(2**31), -(2**31) + 1, -(2**31) + 2, -(2**31) + 3]
    until(lambda: len(sink.keys) == 6)
    assert sink.keys == keys
    assert sink.checkpoint.key == -(2**31) + 3
    until(lambda: stream.status()["lag"] == 0)
    assert stream.key_gaps == 0


def test_a_key_gap_is_noted_and_passed(run) -> None:
    vc = FakeVCenter()
    vc.post(3)
    stream, sink = run(vc)
    vc.post(1)
    vc.post(1, skip=5)  # vCenter skipped keys 5..9
    vc.post(1)
    until(lambda: sink.keys == [4, 10, 11])
    assert stream.key_gaps == 1 and stream.status()["last_gap"] == [4, 10]


def test_a_lost_session_logs_in_again_and_loses_nothing(run) -> None:
    vc = FakeVCenter()
    vc.post(2)
    stream, sink = run(vc)
    vc.fail_next = [vim.fault.NotAuthenticated(msg="The session is not authenticated.")]
    vc.post(5)
    until(lambda: sink.keys == [3, 4, 5, 6, 7])
    until(lambda: vc.logins == 2 and stream.state == "following")
    assert stream.reconnects == 1
    vc.fail_next = [ConnectionRefusedError(111, "Connection refused")] * 3
    vc.post(1)
    until(lambda: sink.keys[-1] == 8)
    until(lambda: stream.state == "following")
    assert sink.keys == [3, 4, 5, 6, 7, 8]
    assert stream.status()["connected"] and stream.status()["last_error"] is None


def test_a_stalled_collector_is_recreated_and_shows_in_status(run) -> None:
    vc = FakeVCenter()
    vc.post(1)
    stream, sink = run(vc)
    vc.wake_broken = True
    vc.post(3)
    until(lambda: stream.stalls >= 1)
    vc.wake_broken = False
    until(lambda: sink.keys == [2, 3, 4])
    status = stream.status()
    assert status["stalls"] >= 1 and "stalled" in (status["last_error"] or "stalled")


def test_a_rebuilt_vcenter_is_followed_by_time(run) -> None:
    old = FakeVCenter(uuid="vc-old")
    old.post(50)
    checkpoint = Checkpoint(50, T0 + timedelta(milliseconds=49), "vc-old")
    new = FakeVCenter(uuid="vc-new")  # keys start again at 1, times go on
    new.events = []
    new.post(60)  # its times: T0 .. T0+59ms; those after the checkpoint are news
    stream, sink = run(new, checkpoint)
    assert sink.keys == list(range(51, 61))
    assert {e.id for events, _ in sink.batches for e in events} == {
        event_id("vc-new", k) for k in range(51, 61)
    }
    assert stream.instance_uuid == "vc-new"


def test_after_a_key_restart_status_shows_no_lag_that_is_not_there(run) -> None:
    old_key = 500  # the old vCenter had come far; the rebuilt one counts from 1 again
    checkpoint = Checkpoint(old_key, T0 + timedelta(milliseconds=49), "vc-old")
    new = FakeVCenter(uuid="vc-new")
    new.events = []
    new.post(60)
    stream, sink = run(new, checkpoint)
    assert sink.keys == list(range(51, 61))
    status = stream.status()
    assert status["latest_key"] == 60 and status["lag"] == 0
    new.post(3)
    until(lambda: sink.keys[-1] == 63)
    until(lambda: stream.status()["lag"] == 0 and stream.status()["latest_key"] == 63)


def test_a_failing_sink_is_retried_without_losing_or_repeating(run) -> None:
    vc = FakeVCenter()
    vc.post(1)
    _, sink = run(vc, sink=Sink([]))
    sink.fail = 3
    vc.post(4)
    until(lambda: sink.keys == [2, 3, 4, 5])
    assert vc.logins == 1  # the sink's trouble is not vCenter's


def test_a_big_backlog_goes_in_batches(run) -> None:
    vc = FakeVCenter()
    vc.post(2500)
    checkpoint = Checkpoint(0, None, "vc-1")
    stream, sink = run(vc, checkpoint)
    # the simulator keeps 1,000: the rest is a gap it cannot fill
    assert sink.keys == list(range(1501, 2501))
    assert all(len(events) <= OPTIONS.batch for events, _ in sink.batches)
    assert stream.key_gaps == 1


def test_a_collector_that_repeats_an_old_page_counts_as_stalled(run) -> None:
    vc = FakeVCenter()
    vc.post(1)
    stream, sink = run(vc)
    vc.wake_stale = True
    vc.post(2)
    until(lambda: stream.stalls >= 1)
    vc.wake_stale = False
    until(lambda: sink.keys == [2, 3])
