"""Retention under load: webhook latency while `veba serve` prunes a large log.

    .venv/bin/python -m bench.retention --events 1000000 --rate 500 --seconds 20

Builds a data dir whose log holds --events old events, every one delivered
(written straight into the real schema, after veba's own migrations, in seconds
rather than the hours appends would take), starts `veba serve` on it with a
retention that makes them all prunable at a retention pass about a minute or
two after start, deploys the no-op function (bench/veba/stack.yml) and sends
one structured event per POST /webhook at --rate over one keep-alive
connection, at absolute deadlines. Each request's time is send -> 200.

The prune's end and length come from the appliance's own log line
("retention: pruned N events in S s"); requests are split by when they were
sent: steady state (before the prune), during it, and after it. The WAL's size
is sampled throughout. Not run in CI; prints a summary and writes
bench/results/retention-<time>.json. Figures on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import re
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, SAMPLE_EVENT, pace, percentile
from bench.procs import stop_all
from bench.veba.driver import HOST, STRUCTURED, WEBHOOK, VebaDriver

PASS_EVERY = 60.0  # seconds between the appliance's retention passes (Appliance._prune)
SETUP_ALLOWANCE = 40.0  # serve start, `veba up` and warm-up, before steady state begins
SLOW_MS = 100.0  # a request over this counts as slow
SUBSCRIPTION = "noop"
PRUNED = re.compile(r"^(\S+ \S+) .*retention: pruned (\d+) events in ([\d.]+) s", re.MULTILINE)


def build_log(path: Path, events: int, oldest: float) -> None:
    """`events` events received within a second from `oldest` on, each with one
    delivered delivery: what a busy appliance holds once its retention passes."""
    from veba.eventlog.schema import migrate  # the appliance's own schema

    # One body for all: the prune never reads bodies, only their rows' pages.
    body = json.dumps(json.loads(SAMPLE_EVENT.read_text()), separators=(",", ":")).encode()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")  # a scratch file: rebuilt if the bench dies
        migrate(conn)
        step = 1.0 / max(events, 1)
        conn.execute("BEGIN")
        for start in range(1, events + 1, 50_000):
            seqs = range(start, min(events, start + 49_999) + 1)
            conn.executemany(
                "INSERT INTO events(seq, source, id, type, subject, received, body)"
                " VALUES (?, 'bench-retention', ?, 'com.vmware.event.router/event',"
                " 'VmPoweredOffEvent', ?, ?)",
                ((seq, f"old-{seq}", oldest + seq * step, body) for seq in seqs),
            )
            conn.executemany(
                "INSERT INTO deliveries(id, seq, subscription, status, attempts, available_at,"
                " created, started, finished, last_status)"
                " VALUES (?, ?, ?, 'delivered', 1, ?, ?, ?, ?, 200)",
                ((seq, seq, SUBSCRIPTION, oldest, oldest, oldest, oldest + 0.01) for seq in seqs),
            )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    path.chmod(0o600)


class RetentionDriver(VebaDriver):
    """`veba serve` on a data dir holding a large old log, with a retention that
    makes all of it prunable at the retention pass due about `prune_due`."""

    name = "veba-retention"

    def __init__(self, events: int, seconds: float) -> None:
        super().__init__()
        self.events = events
        self.seconds = seconds
        self.build_seconds = 0.0
        self.prune_due = 0.0

    def _launch(self) -> None:
        self.data_dir.mkdir(mode=0o700)
        oldest = time.time() - 30 * 86400
        started = time.monotonic()
        build_log(self.data_dir / "events.db", self.events, oldest)
        self.build_seconds = time.monotonic() - started
        # Passes come at start and every PASS_EVERY s after. Pass k is the first
        # whose cutoff (its time - retention) is past every old event; passes
        # before it find nothing old. Old events span one second, passes are a
        # minute apart: half a minute of slack either way.
        passes = math.ceil((SETUP_ALLOWANCE + self.seconds) / PASS_EVERY)
        launch = time.time()
        retention = (launch - oldest) + (passes - 0.5) * PASS_EVERY
        self.serve_args = ("--retention", f"{retention:.0f}s")
        self.prune_due = launch + passes * PASS_EVERY
        super()._launch()


@dataclass(slots=True)
class Request:
    sent: float  # time.time() just before the send
    ms: float  # send -> 200 read
    status: int


class Sender(threading.Thread):
    """One structured event per POST, at `rate`, over one keep-alive connection."""

    def __init__(self, port: int, token: str, rate: float) -> None:
        super().__init__(name="retention-sender", daemon=True)
        self._port = port
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": STRUCTURED}
        self._rate = rate
        self.stop = threading.Event()
        self.requests: list[Request] = []
        self.error: BaseException | None = None
        sample = json.loads(SAMPLE_EVENT.read_text())
        sample["id"] = "@ID@"
        self._template = json.dumps(sample, separators=(",", ":"))

    def run(self) -> None:
        conn = http.client.HTTPConnection(HOST, self._port, timeout=60)
        try:
            for _, _lag in pace(10**9, self._rate):
                if self.stop.is_set():
                    return
                body = self._template.replace("@ID@", str(uuid.uuid4())).encode()
                sent = time.time()
                began = time.perf_counter()
                conn.request("POST", WEBHOOK, body=body, headers=self._headers)
                response = conn.getresponse()
                response.read()
                ms = (time.perf_counter() - began) * 1000
                self.requests.append(Request(sent, ms, response.status))
        except BaseException as exc:  # reported by measure(), not lost in a thread
            self.error = exc
        finally:
            conn.close()


def _phase(requests: list[Request], start: float, end: float) -> dict[str, Any]:
    inside = [r for r in requests if start <= r.sent < end]
    ms = [r.ms for r in inside]
    if not ms:
        return {"requests": 0}
    return {
        "requests": len(ms),
        "seconds": round(end - start, 2),
        "achieved_per_s": round(len(ms) / (end - start), 1) if end > start else 0.0,
        "p50_ms": round(percentile(ms, 50), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2),
        "over_100ms": sum(1 for v in ms if v > SLOW_MS),
        "errors": sum(1 for r in inside if r.status != 200),
    }


def _log_time(stamp: str) -> float | None:
    try:  # the appliance's text log: local time, "2026-12-06 02:10:11,123"
        return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
    except ValueError:
        return None


def _tail(path: Path) -> Iterator[str]:
    """What was added to the file since the last next()."""
    offset = 0
    while True:
        try:
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
        except OSError:
            chunk = b""
        offset += len(chunk)
        yield chunk.decode(errors="replace")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def measure(
    events: int = 1_000_000,
    rate: float = 500.0,
    seconds: float = 20.0,
    *,
    after: float = 5.0,
    keep_files: bool = False,
) -> dict[str, Any]:
    """Latency of POST /webhook at `rate` before, during and after the prune of
    `events` old events; at least `seconds` of steady state before it."""
    driver = RetentionDriver(events, seconds)
    failed = True
    try:
        driver.start()
        assert driver.serve is not None and driver.client is not None
        port = driver.client.base_url.port or 80
        token = driver.headers["Authorization"].removeprefix("Bearer ")
        db = driver.data_dir / "events.db"
        wal = db.with_name("events.db-wal")
        db_before = _size(db)
        sender = Sender(port, token, rate)
        sender.start()
        found: tuple[float, int, float] | None = None  # end, pruned, seconds
        wal_samples: list[tuple[float, int]] = []
        deadline = driver.prune_due + PASS_EVERY + max(600.0, events / 500)
        log_tail = _tail(driver.serve.log)
        text = ""
        stop_at = math.inf
        while time.time() < stop_at:
            if time.time() > deadline:
                raise TimeoutError("no retention pass pruned anything in time; see serve.log")
            if sender.error is not None:
                raise RuntimeError(f"sender failed: {sender.error!r}")
            driver.serve.check_alive()
            wal_samples.append((time.time(), _size(wal)))
            if found is None:
                text += next(log_tail)
                match = PRUNED.search(text)
                if match:
                    end = _log_time(match[1]) or time.time()
                    found = (end, int(match[2]), float(match[3]))
                    stop_at = time.time() + after
            time.sleep(0.1)
        sender.stop.set()
        sender.join(30)
        assert found is not None
        end, pruned, prune_seconds = found
        start = end - prune_seconds
        requests = sender.requests
        first = requests[0].sent if requests else start
        during_wal = [size for at, size in wal_samples if start <= at <= end]
        steady_wal = [size for at, size in wal_samples if at < start]
        failed = False
        return {
            "events": events,
            "rate": rate,
            "build_seconds": round(driver.build_seconds, 1),
            "pruned": pruned,
            "prune_seconds": prune_seconds,
            "steady": _phase(requests, first, start),
            "during": _phase(requests, start, end),
            "after": _phase(requests, end, requests[-1].sent + 1e-6 if requests else end),
            # Each request over SLOW_MS: (seconds from the prune's start, ms).
            "slow": [
                (round(r.sent - start, 2), round(r.ms, 1)) for r in requests if r.ms > SLOW_MS
            ],
            "wal_max_mb_steady": round(max(steady_wal, default=0) / 2**20, 1),
            "wal_max_mb_during": round(max(during_wal, default=0) / 2**20, 1),
            "db_mb_before": round(db_before / 2**20, 1),
            "db_mb_after": round(_size(db) / 2**20, 1),
            "load_after": os.getloadavg(),
            "serve_args": list(driver.serve_args),
        }
    finally:
        driver.stop(keep_files=keep_files or failed)
        if failed:
            print(f"retention: logs kept in {driver.work_dir}", file=sys.stderr)


def _summary(result: dict[str, Any]) -> str:
    lines = [
        f"{result['events']:,} old events (built in {result['build_seconds']} s);"
        f" pruned {result['pruned']:,} in {result['prune_seconds']} s;"
        f" WAL max {result['wal_max_mb_steady']} MB before, {result['wal_max_mb_during']} MB"
        " during the prune;"
        f" log {result['db_mb_before']} MB -> {result['db_mb_after']} MB",
        f"POST /webhook at {result['rate']:g}/s, one event each:",
    ]
    for phase in ("steady", "during", "after"):
        p = result[phase]
        if not p.get("requests"):
            lines.append(f"  {phase:>6}: no requests")
            continue
        lines.append(
            f"  {phase:>6}: {p['requests']:>6} requests in {p['seconds']:g} s"
            f" ({p['achieved_per_s']:g}/s)  p50 {p['p50_ms']:.2f} ms  p99 {p['p99_ms']:.2f} ms"
            f"  max {p['max_ms']:.1f} ms  over {SLOW_MS:g} ms: {p['over_100ms']}"
            f"  errors: {p['errors']}"
        )
    if result["slow"]:
        lines.append(
            f"  over {SLOW_MS:g} ms (s from the prune's start, ms): "
            + ", ".join(f"{at:+.1f} s {ms:.0f}" for at, ms in result["slow"][:20])
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.retention", description=__doc__.split("\n")[0]
    )
    p.add_argument("--events", type=int, default=1_000_000, help="old events to prune (1000000)")
    p.add_argument("--rate", type=float, default=500.0, help="webhook requests per second (500)")
    p.add_argument(
        "--seconds", type=float, default=20.0, help="steady state before the prune, at least (20)"
    )
    p.add_argument("--after", type=float, default=5.0, help="seconds sent after the prune (5)")
    p.add_argument("--keep", action="store_true", help="keep the data dir and logs")
    p.add_argument("--out", type=Path, help="JSON result (bench/results/retention-<time>.json)")
    args = p.parse_args(argv)
    try:
        result = measure(
            args.events, args.rate, args.seconds, after=args.after, keep_files=args.keep
        )
    finally:
        stop_all()
    print(_summary(result))
    out = args.out or REPO_ROOT / "bench" / "results" / f"retention-{int(time.time())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
