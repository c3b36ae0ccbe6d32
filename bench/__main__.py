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
from bench.procs import rss_mb, stop_all
from bench.prune import measure_prune
from bench.report import FanoutResult, NodesResult, PruneResult, Setup, SystemResult, render

SYSTEMS = ("veba", "dramatiq", "celery")
EXTRAS = ("fanout", "prune", "nodes")  # --only names of the measurements that are not a system's
KEPT = "<!-- sub-benchmarks: kept when `python -m bench` rewrites this file -->"


def make_driver(name: str, redis_url: str) -> Driver:
    if name == "veba":
        from bench.veba.driver import VebaDriver

        return VebaDriver()
    from bench.peers.drivers import CeleryDriver, DramatiqDriver

    return {"dramatiq": DramatiqDriver, "celery": CeleryDriver}[name](redis_url)


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("function counts must be at least 1")
    return sizes


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer events and one run: a smoke test")
    p.add_argument(
        "--only",
        action="append",
        choices=SYSTEMS + EXTRAS,
        help="measure only this (repeatable): a system, fanout, prune or nodes",
    )
    p.add_argument("--runs", type=int, help="runs of each measurement; the median is reported "
                   "(3; 1 with --quick)")  # fmt: skip
    p.add_argument(
        "--events", type=int, help="throughput events per row (10000; 2000 with --quick)"
    )
    p.add_argument("--rate", type=float, default=500.0, help="offered rate for latency, events/s")
    p.add_argument("--seconds", type=float, help="latency duration (10; 3 with --quick)")
    p.add_argument("--fanout", type=_sizes, default=(1, 5, 20), help="function counts, e.g. 1,5,20")
    p.add_argument(
        "--fanout-events", type=int, help="events per fan-out run (2000; 300 with --quick)"
    )
    p.add_argument(
        "--prune-events",
        type=int,
        help="events pruned by the retention measurement (1000000; 0, skipped, with --quick: it "
        "waits a minute or more for the appliance's retention pass)",
    )
    p.add_argument("--redis-db", type=int, default=9, help="Redis DB number the bench owns")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md")
    args = p.parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 3)
    args.events = args.events or (2_000 if args.quick else 10_000)
    args.seconds = args.seconds or (3.0 if args.quick else 10.0)
    args.fanout_events = args.fanout_events or (300 if args.quick else 2_000)
    if args.prune_events is None:
        args.prune_events = 0 if args.quick else 1_000_000
    if args.runs < 1 or args.events < 1 or args.rate <= 0 or args.seconds <= 0:
        p.error("--runs, --events, --rate and --seconds must be positive")
    if args.fanout_events < 1 or args.prune_events < 0:
        p.error("--fanout-events must be positive and --prune-events not negative")
    return args


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally: processes get stopped


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    signal.signal(signal.SIGTERM, _terminate)
    redis_url = f"redis://127.0.0.1:6379/{args.redis_db}"
    chosen = set(args.only or SYSTEMS + EXTRAS)
    systems = [s for s in SYSTEMS if s in chosen]
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
        fanout_events=args.fanout_events,
        fanout_sizes=args.fanout if "fanout" in chosen else (),
        prune_events=args.prune_events if "prune" in chosen else 0,
        nodes="nodes" in chosen,
    )
    results = {name: SystemResult(name) for name in systems}
    fanouts = [FanoutResult(n) for n in setup.fanout_sizes]
    prune: PruneResult | None = None
    nodes: list[NodesResult] = []
    if setup.nodes:
        from bench.nodes import measure_row, node_rows

        nodes = node_rows()
    began = time.monotonic()
    try:
        for run in range(1, args.runs + 1):
            for name in systems:
                result = results[name]
                if result.error is None:
                    measure(name, run, args, redis_url, result)
            for fan in fanouts:
                if fan.error is None:
                    measure_fanout(fan, run, args)
            for row in nodes:
                if row.error is None:
                    measure_row(row, run, args.runs, args.rate, args.seconds, args.events, log)
        if setup.prune_events:
            prune = measure_prune(args.prune_events, args.rate)
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
    args.out.write_text(render(setup, ordered, fanouts, prune, nodes) + kept)
    raw = BENCH_DIR / "results" / f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    raw.parent.mkdir(exist_ok=True)
    raw.write_text(
        json.dumps(
            {
                "setup": dataclasses.asdict(setup),
                "results": [dataclasses.asdict(r) for r in ordered],
                "fanout": [dataclasses.asdict(f) for f in fanouts],
                "prune": dataclasses.asdict(prune) if prune else None,
                "nodes": [dataclasses.asdict(row) for row in nodes],
            },
            indent=2,
            default=str,
        )
    )
    log(f"wrote {args.out} and {raw.relative_to(REPO_ROOT)}")
    failed = False
    for r in ordered:
        if r.error:
            failed = True
            log(f"{r.name}: NOT MEASURED: {r.error.splitlines()[0]}")
            continue
        rows = ", ".join(
            f"{m.key} {r.events_per_s(m.key):,.0f}/s ({r.cpu_us(m.key):,.0f} µs CPU/event)"
            for m in r.modes
            if r.runs_of(m.key)
        )
        log(f"{r.name}: {rows}; p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms at {args.rate:g}/s")
    for f in fanouts:
        if f.error:
            failed = True
            log(f"fan-out {f.functions}: NOT MEASURED: {f.error.splitlines()[0]}")
        else:
            log(f"fan-out {f.functions}: {f.deliveries_per_s:,.0f} deliveries/s")
    for row in nodes:
        if row.error:
            failed = True
            log(f"nodes {row.name}: NOT MEASURED: {row.error.splitlines()[0]}")
        else:
            log(
                f"nodes {row.name}: batch {_num(row.events_per_s('batch'))}/s, per event "
                f"{_num(row.events_per_s('light'))}/s, p99 {_num(row.p99_ms, '.2f')} ms, "
                f"shares {row.shares}"
            )
    if prune is not None:
        log(f"prune: {prune.figures if prune.figures is not None else prune.error}")
        failed = failed or prune.figures is None
    return 1 if failed else 0


def _num(value: float | None, fmt: str = ",.0f") -> str:
    return "—" if value is None else format(value, fmt)


def measure(
    name: str, run: int, args: argparse.Namespace, redis_url: str, result: SystemResult
) -> None:
    """One run of one system: start fresh, latency, throughput, stop. Errors are recorded."""
    failed = False
    driver: Driver | None = None
    try:
        driver = make_driver(name, redis_url)
        modes = driver.send_modes()
        result.modes = modes
        log(f"{name} run {run}/{args.runs}: starting")
        load = os.getloadavg()[0]
        driver.start()
        log(f"{name} run {run}: latency, {args.rate:g}/s for {args.seconds:g} s")
        lat = driver.latency(args.rate, args.seconds)
        log(
            f"{name} run {run}: p50 {lat.p50_ms:.2f} ms, p99 {lat.p99_ms:.2f} ms "
            f"(achieved {lat.achieved_rate:.1f}/s)"
        )
        # A different mode goes first each run: the appliance's state (its log grows)
        # must not always favour the same one.
        shift = (run - 1) % len(modes)
        throughputs = []
        for mode in modes[shift:] + modes[:shift]:
            log(f"{name} run {run}: throughput, {args.events:,} events, {mode.key}")
            tp = driver.throughput(args.events, mode)
            log(
                f"{name} run {run}: {mode.key} {tp.events_per_s:,.0f} events/s in "
                f"{tp.seconds:.2f} s, sender CPU {tp.sender_cpu_us:,.0f} µs/event"
            )
            throughputs.append(tp)
        rss, serve_rss = _rss(driver)
        result.load.append(load)
        result.latency.append(lat)
        result.throughput.extend(throughputs)
        if rss is not None:
            result.rss_mb.append(rss)
            result.serve_rss_mb.append(serve_rss)
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


def _rss(driver: Driver) -> tuple[dict[str, list[float]] | None, float]:
    """Each function's workers' RSS and veba serve's own, for a veba driver."""
    from bench.veba.driver import VebaDriver

    if not isinstance(driver, VebaDriver) or driver.serve is None:
        return None, 0.0
    return driver.worker_rss_mb(), rss_mb(driver.serve.pid)


def measure_fanout(result: FanoutResult, run: int, args: argparse.Namespace) -> None:
    """One run of one fan-out size on a fresh appliance. Errors are recorded."""
    from bench.veba.driver import FanoutDriver

    failed = False
    driver: FanoutDriver | None = None
    label = f"fan-out {result.functions}"
    try:
        driver = FanoutDriver(result.functions)
        log(f"{label} run {run}/{args.runs}: starting")
        load = os.getloadavg()[0]
        driver.start()
        log(f"{label} run {run}: {args.fanout_events:,} events")
        fan = driver.fanout(args.fanout_events)
        log(
            f"{label} run {run}: {fan.deliveries_per_s:,.0f} deliveries/s "
            f"({fan.deliveries:,} in {fan.seconds:.2f} s)"
        )
        rss, serve_rss = _rss(driver)
        result.load.append(load)
        result.runs.append(fan)
        if rss is not None:
            result.rss_mb.append(rss)
            result.serve_rss_mb.append(serve_rss)
        result.notes.extend(driver.notes)
    except Exception as exc:
        failed = True
        result.error = f"{type(exc).__name__}: {exc}"
        log(f"{label} run {run} FAILED:\n{traceback.format_exc()}")
    finally:
        if driver is not None:
            driver.stop(keep_files=failed)
            if failed:
                log(f"{label}: logs and start files kept in {driver.work_dir}")


if __name__ == "__main__":
    sys.exit(main())
