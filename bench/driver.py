"""The measurement, written once; each system supplies how to start, send and stop."""

from __future__ import annotations

import abc
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    Event,
    StartLog,
    bulk_send,
    make_events,
    no_gc,
    paced_send,
    percentile,
)

WARMUP_EVENTS = 200


TASK_EVENTS = 100  # events a sender thread takes from the pool at a time
PER_EVENT_THREADS = 16  # sender threads of every one-event-per-send row, veba's and the peers'


@dataclass(frozen=True, slots=True)
class SendMode:
    """One way of handing events over: a row of the throughput tables."""

    key: str  # what the bench and --only call it, e.g. "light"
    label: str  # the row's name in the report
    per_request: int  # events per request or message: 1 means one event per send
    threads: int  # sender threads in the bench process
    client: str  # the client as the report's Method describes it


@dataclass(frozen=True, slots=True)
class Throughput:
    events: int
    seconds: float  # first send -> last handler start
    events_per_s: float
    send_seconds: float  # first send -> last send accepted
    duplicates: int
    mode: str = ""  # SendMode.key
    # CPU seconds of the whole bench process (every sender thread) while it sent,
    # per event: what the client costs the application that sends.
    sender_cpu_us: float = 0.0


@dataclass(frozen=True, slots=True)
class Latency:
    events: int
    offered_rate: float
    achieved_rate: float
    sender_max_lag_ms: float
    p50_ms: float
    p99_ms: float
    max_ms: float


class Driver(abc.ABC):
    """One system under test. start(), then throughput()/latency() any number of times, stop()."""

    name = ""
    # How throughput() sends unless told otherwise (and how the warm-up sends).
    default_mode = SendMode("bulk", "", 100, 4, "")

    def __init__(self) -> None:
        self.work_dir = Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-"))
        self.out_dir = self.work_dir / "starts"
        self.out_dir.mkdir()
        # Under a root appliance veba's function runs as a user of its own: it must
        # reach this folder and write its start files in it.
        self.work_dir.chmod(0o755)
        self.out_dir.chmod(0o777)
        self.starts = StartLog(self.out_dir)
        self.notes: list[str] = []  # caveats for the report
        self._next_key = 0

    # --- what a system provides ---

    @abc.abstractmethod
    def _launch(self) -> None:
        """Start the system's processes; return once they accept work."""

    @abc.abstractmethod
    def _shutdown(self) -> None:
        """Stop every process _launch started."""

    @abc.abstractmethod
    def _sender(self, mode: SendMode) -> Callable[[Sequence[Event]], None]:
        """Throughput path: a function several threads call at once with up to
        TASK_EVENTS events each, sending them as ``mode`` says."""

    def _senders_done(self) -> None:  # noqa: B027 - optional hook
        """Close whatever the senders of the last throughput() opened (outside the timing)."""

    def send_modes(self) -> list[SendMode]:
        """The throughput rows this system has."""
        return [self.default_mode]

    @abc.abstractmethod
    def _submit_one(self, event: Event) -> None:
        """Latency path: send one event now; return once the system has accepted it."""

    def _confirm_acked(self, timeout: float) -> None:  # noqa: B027 - optional hook
        """Raise if the system does not report all sent events acknowledged in time."""

    def _alive(self) -> None:  # noqa: B027 - optional hook
        """Raise if a process of the system has died."""

    # --- the measurement ---

    def start(self) -> None:
        self._launch()
        self._warm_up()

    def stop(self, *, keep_files: bool = False) -> None:
        """Stop the system; its logs and start files go too unless keep_files."""
        try:
            self._shutdown()
        finally:
            if not keep_files:
                shutil.rmtree(self.work_dir, ignore_errors=True)

    def _events(self, n: int) -> list[Event]:
        events = make_events(n, self._next_key)
        self._next_key += n
        return events

    def _warm_up(self) -> None:
        events = self._events(WARMUP_EVENTS)
        try:
            bulk_send(events, self._sender(self.default_mode), chunk=TASK_EVENTS, threads=1)
        finally:
            self._senders_done()
        self._wait_started([e.id for e in events], timeout=120)
        self._confirm_acked(timeout=60)

    def _wait_started(self, ids: list[str], timeout: float) -> None:
        """Until a handler has started each of `ids` (one start log here)."""
        self.starts.wait_for(ids, timeout=timeout, alive=self._alive)

    def throughput(self, n: int, mode: SendMode | None = None) -> Throughput:
        mode = mode or self.default_mode
        events = self._events(n)
        dupes_before = self.starts.duplicates
        send = self._sender(mode)
        try:
            with no_gc():
                # Only the senders run in this process now; the main thread waits.
                cpu0 = time.process_time()
                t0 = bulk_send(events, send, chunk=TASK_EVENTS, threads=mode.threads)
                sent = time.time()
                cpu = time.process_time() - cpu0
        finally:
            self._senders_done()
        found = self.starts.wait_for(
            [e.id for e in events], timeout=max(120.0, n / 50), alive=self._alive
        )
        seconds = max(found.values()) - t0
        self._confirm_acked(timeout=60)
        return Throughput(
            events=n,
            seconds=seconds,
            events_per_s=n / seconds,
            send_seconds=sent - t0,
            duplicates=self.starts.duplicates - dupes_before,
            mode=mode.key,
            sender_cpu_us=cpu / n * 1e6,
        )

    def latency(self, rate: float, seconds: float, *, in_flight: int = 1) -> Latency:
        """Events at ``rate`` for ``seconds``, up to ``in_flight`` sends outstanding."""
        events = self._events(round(rate * seconds))
        with no_gc():
            report = paced_send(events, rate, self._submit_one, in_flight=in_flight)
        found = self.starts.wait_for(
            list(report.send_times), timeout=max(120.0, seconds * 4), alive=self._alive
        )
        self._confirm_acked(timeout=60)
        lat_ms = [(found[i] - t) * 1000 for i, t in report.send_times.items()]
        return Latency(
            events=len(events),
            offered_rate=rate,
            achieved_rate=report.achieved_rate,
            sender_max_lag_ms=report.max_lag_ms,
            p50_ms=percentile(lat_ms, 50),
            p99_ms=percentile(lat_ms, 99),
            max_ms=max(lat_ms),
        )
