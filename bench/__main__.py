"""Run the benchmarks and write docs/benchmarks.md: ``python -m bench [--quick]``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import signal
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import redis

from bench.common import BENCH_DIR, REPO_ROOT, event_size, make_events
from bench.driver import Driver
from bench.procs import stop_all
from bench.report import Setup, SystemResult, render

SYSTEMS = ("veba", "dramatiq", "celery")
KEPT = "<!-- sub-benchmarks: kept when `python -m bench` rewrites this file -->"


def make_driver(name: str, redis_url: str) -> Driver:
    if name == "veba":
        from bench.veba.driver import VebaDriver

        return VebaDriver()
    from bench.peers.drivers import CeleryDriver, DramatiqDriver

    return {"dramatiq": DramatiqDriver, "celery": CeleryDriver}[name](redis_url)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer events: a smoke test")
    p.add_argument(
        "--only", action="append", choices=SYSTEMS, help="measure only this system (repeatable)"
    )
    p.add_argument("--runs", type=int, default=3, help="runs per system; the median is reported")
    p.add_argument("--events", type=int, help="throughput events (20000; 2000 with --quick)")
    p.add_argument("--rate", type=float, default=500.0, help="offered rate for latency, events/s")
    p.add_argument("--seconds", type=float, help="latency duration (10; 3 with --quick)")
    p.add_argument("--redis-db", type=int, default=9, help="Redis DB number the bench owns")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md")
    args = p.parse_args(argv)
    args.events = args.events or (2_000 if args.quick else 20_000)
    args.seconds = args.seconds or (3.0 if args.quick else 10.0)
    if args.runs < 1 or args.events < 1 or args.rate <= 0 or args.seconds <= 0:
        p.error("--runs, --events, --rate and --seconds must be positive")
    return args


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally: processes get stopped


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    signal.signal(signal.SIGTERM, _terminate)
    redis_url = f"redis://127.0.0.1:6379/{args.redis_db}"
    systems = [s for s in SYSTEMS if not args.only or s in args.only]
    try:
        redis_version = redis.Redis.from_url(redis_url).info("server")["redis_version"]
    except redis.RedisError as exc:
        redis_version = f"unreachable ({exc})"
    command = ".venv/bin/python -m bench" + "".join(
        f" {shlex.quote(a)}" for a in (sys.argv[1:] if argv is None else argv)
    )
    setup = Setup(
        command=command,
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        runs=args.runs,
        events=args.events,
        rate=args.rate,
        seconds=args.seconds,
        event_bytes=event_size(make_events(1)[0]),
        redis_version=redis_version,
        load_before=os.getloadavg(),
    )
    results = {name: SystemResult(name) for name in systems}
    began = time.monotonic()
    try:
        for run in range(1, args.runs + 1):
            for name in systems:
                result = results[name]
                if result.error is None:
                    measure(name, run, args, redis_url, result)
    finally:
        stop_all()
    setup.load_after = os.getloadavg()
    setup.duration_s = time.monotonic() - began

    ordered = [results[name] for name in systems]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # Sections that sub-benchmarks (python -m bench.dashboard) keep below KEPT stay.
    kept = ""
    if args.out.exists() and KEPT in (old := args.out.read_text()):
        kept = "\n" + old[old.index(KEPT) :]
    args.out.write_text(render(setup, ordered) + kept)
    raw = BENCH_DIR / "results" / f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    raw.parent.mkdir(exist_ok=True)
    raw.write_text(
        json.dumps(
            {
                "setup": dataclasses.asdict(setup),
                "results": [dataclasses.asdict(r) for r in ordered],
            },
            indent=2,
        )
    )
    log(f"wrote {args.out} and {raw.relative_to(REPO_ROOT)}")
    for r in ordered:
        if r.error:
            log(f"{r.name}: NOT MEASURED: {r.error.splitlines()[0]}")
        else:
            log(
                f"{r.name}: {r.events_per_s:,.0f} events/s, "
                f"p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms at {args.rate:g}/s"
            )
    return 1 if any(r.error for r in ordered) else 0


def measure(
    name: str, run: int, args: argparse.Namespace, redis_url: str, result: SystemResult
) -> None:
    """One run of one system: start fresh, latency, throughput, stop. Errors are recorded."""
    failed = False
    driver: Driver | None = None
    try:
        driver = make_driver(name, redis_url)
        log(f"{name} run {run}/{args.runs}: starting")
        load = os.getloadavg()[0]
        driver.start()
        log(f"{name} run {run}: latency, {args.rate:g}/s for {args.seconds:g} s")
        lat = driver.latency(args.rate, args.seconds)
        log(
            f"{name} run {run}: p50 {lat.p50_ms:.2f} ms, p99 {lat.p99_ms:.2f} ms "
            f"(achieved {lat.achieved_rate:.1f}/s)"
        )
        log(f"{name} run {run}: throughput, {args.events:,} events")
        tp = driver.throughput(args.events)
        log(f"{name} run {run}: {tp.events_per_s:,.0f} events/s in {tp.seconds:.2f} s")
        result.load.append(load)
        result.latency.append(lat)
        result.throughput.append(tp)
        result.notes.extend(driver.notes)
    except Exception as exc:  # one system failing must not lose the others' results
        failed = True
        result.error = f"{type(exc).__name__}: {exc}"
        log(f"{name} run {run} FAILED:\n{traceback.format_exc()}")
    finally:
        if driver is not None:
            driver.stop(keep_files=failed)
            if failed:
                log(f"{name}: logs and start files kept in {driver.work_dir}")


if __name__ == "__main__":
    sys.exit(main())
