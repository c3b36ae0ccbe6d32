"""What every driver shares: events, pacing, statistics, and reading start times."""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import math
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
SAMPLE_EVENT = BENCH_DIR / "sample_event.json"


# --- events -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    # The structured-mode CloudEvent as JSON-ready data. Every sender encodes it
    # while timed: Dramatiq and Celery inside their message, veba as the HTTP body.
    obj: dict[str, object]


def make_events(n: int, first_key: int = 0) -> list[Event]:
    """n VEBA-shaped CloudEvents (the VmPoweredOffEvent sample) with fresh UUIDs."""
    sample = json.loads(SAMPLE_EVENT.read_text())
    events = []
    for i in range(n):
        obj = copy.deepcopy(sample)
        key = first_key + i
        obj["id"] = str(uuid.uuid4())
        obj["data"]["Key"] = key
        obj["data"]["ChainId"] = key
        obj["data"]["Vm"]["Name"] = f"bench-{key % 1000:03d}"
        events.append(Event(obj["id"], obj))
    return events


def event_size(event: Event) -> int:
    """Bytes of the event as compact JSON."""
    return len(json.dumps(event.obj, separators=(",", ":")).encode())


def chunked(items: Sequence[Event], size: int) -> list[Sequence[Event]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# --- sending ----------------------------------------------------------------


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """The bench's own garbage collector off while it sends, as timeit does.

    A full collection in the sending process takes ~15 ms here and would land on
    whichever event was being sent, whatever the system under test.
    """
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def bulk_send(
    events: Sequence[Event],
    send_chunk: Callable[[Sequence[Event]], None],
    *,
    chunk: int,
    threads: int,
) -> float:
    """Send every event as fast as possible; return time.time() before the first send."""
    chunks = chunked(events, chunk)
    pool = ThreadPoolExecutor(threads, thread_name_prefix="bench-send")
    try:
        t0 = time.time()
        futures = [pool.submit(send_chunk, c) for c in chunks]
        for future in futures:
            future.result()  # re-raises a sender's exception
    finally:
        # On an error or Ctrl-C, chunks not yet started are dropped, not sent.
        pool.shutdown(wait=True, cancel_futures=True)
    return t0


@dataclass(frozen=True, slots=True)
class PacedReport:
    send_times: dict[str, float]
    seconds: float
    achieved_rate: float
    max_lag_ms: float  # worst lateness of a send against its deadline


def pace(count: int, rate: float) -> Iterator[tuple[int, float]]:
    """Yield (i, lateness in s) at absolute deadlines t0 + i/rate.

    Deadlines don't drift with the time spent sending: a late send is followed by
    the next ones at once until the schedule is met again.
    """
    period = 1.0 / rate
    t0 = time.perf_counter()
    for i in range(count):
        deadline = t0 + i * period
        now = time.perf_counter()
        if now < deadline:
            time.sleep(deadline - now)
            now = time.perf_counter()
        yield i, max(0.0, now - deadline)


def paced_send(
    events: Sequence[Event],
    rate: float,
    submit: Callable[[Event], object],
    *,
    in_flight: int = 1,
) -> PacedReport:
    """Hand each event to ``submit`` on schedule, recording time.time() just before.

    With ``in_flight`` > 1 each send runs on a pool of that many threads, so up to
    that many requests are outstanding at once (an open loop: a slow answer does
    not hold back the next send, and a send queued behind busy threads counts its
    wait from its scheduled time). The rate achieved is then counted to the last
    answer.
    """
    send_times: dict[str, float] = {}
    max_lag = 0.0
    pool = (
        ThreadPoolExecutor(in_flight, thread_name_prefix="bench-paced") if in_flight > 1 else None
    )
    futures = []
    start = time.perf_counter()
    try:
        for i, lag in pace(len(events), rate):
            event = events[i]
            send_times[event.id] = time.time()
            if pool is None:
                submit(event)
            else:
                futures.append(pool.submit(submit, event))
            max_lag = max(max_lag, lag)
        for future in futures:
            future.result()  # re-raises a send's exception
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    seconds = time.perf_counter() - start
    achieved = (len(events) - 1) / seconds if seconds > 0 and len(events) > 1 else 0.0
    return PacedReport(send_times, seconds, achieved, max_lag * 1000)


# --- statistics ---------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 100]."""
    if not values:
        raise ValueError("percentile of nothing")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Iterable[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        raise ValueError("median of nothing")
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


# --- reading handler start times ----------------------------------------------


class StartLog:
    """Follows the ``starts-*.txt`` files that bench.recorder writes in a directory.

    Reads only what was appended since the last poll. An event seen twice
    (at-least-once redelivery) keeps its first start time and counts as a duplicate.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.starts: dict[str, float] = {}
        self.duplicates = 0
        self._offsets: dict[Path, int] = {}
        self._partial: dict[Path, bytes] = {}

    def poll(self) -> None:
        for path in sorted(self.directory.glob("starts-*.txt")):
            offset = self._offsets.get(path, 0)
            with path.open("rb") as f:
                f.seek(offset)
                data = f.read()
            if not data:
                continue
            self._offsets[path] = offset + len(data)
            data = self._partial.pop(path, b"") + data
            lines = data.split(b"\n")
            if lines[-1]:
                self._partial[path] = lines[-1]
            for line in lines[:-1]:
                event_id, _, stamp = line.decode().partition(" ")
                t = float(stamp)
                seen = self.starts.get(event_id)
                if seen is None:
                    self.starts[event_id] = t
                else:
                    self.duplicates += 1
                    self.starts[event_id] = min(seen, t)

    def wait_for(
        self, ids: Iterable[str], timeout: float, *, alive: Callable[[], None] | None = None
    ) -> dict[str, float]:
        """Start times of ids, once all are recorded; TimeoutError after ``timeout`` s.

        ``alive`` is called while waiting and should raise if the system died.
        """
        missing = set(ids)
        found: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        interval = 0.005
        while True:
            self.poll()
            for event_id in [i for i in missing if i in self.starts]:
                found[event_id] = self.starts[event_id]
                missing.discard(event_id)
            if not missing:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(missing)} of {len(found) + len(missing)} events never reached "
                    f"the handler within {timeout:.0f} s (start files in {self.directory})"
                )
            if alive is not None:
                alive()
            time.sleep(interval)
            interval = min(interval * 2, 0.05)


def env_with(**extra: str) -> dict[str, str]:
    """The current environment, bench importable, plus extra variables."""
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
    env.update(extra)
    return env
