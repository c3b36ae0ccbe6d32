"""The results as docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from importlib import metadata

from bench.common import median
from bench.driver import Latency, Throughput

LABELS = {
    "veba": "veba",
    "dramatiq": "Dramatiq + Redis",
    "celery": "Celery + Redis",
}


@dataclass
class SystemResult:
    name: str
    throughput: list[Throughput] = field(default_factory=list)
    latency: list[Latency] = field(default_factory=list)
    load: list[float] = field(default_factory=list)  # 1-min load average before each run
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def events_per_s(self) -> float | None:
        return median(t.events_per_s for t in self.throughput) if self.throughput else None

    @property
    def p50_ms(self) -> float | None:
        return median(lat.p50_ms for lat in self.latency) if self.latency else None

    @property
    def p99_ms(self) -> float | None:
        return median(lat.p99_ms for lat in self.latency) if self.latency else None


@dataclass
class Setup:
    command: str
    date: str
    runs: int
    events: int
    rate: float
    seconds: float
    event_bytes: int
    redis_version: str
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    duration_s: float = 0.0


def machine() -> dict[str, str]:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
        mem = f"{kib / 1024 / 1024:.1f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": model,
        "memory": mem,
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
    }


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _num(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def _ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def render(setup: Setup, results: list[SystemResult]) -> str:
    m = machine()
    by_name = {r.name: r for r in results}
    load = " / ".join(f"{x:.2f}" for x in setup.load_before)
    load_after = " / ".join(f"{x:.2f}" for x in setup.load_after)
    out = [
        "# Benchmarks",
        "",
        "Written by the bench; rerun it rather than editing this file:",
        "",
        "```",
        setup.command,
        "```",
        "",
        f"- Date: {setup.date} (the whole run took {setup.duration_s / 60:.1f} min)",
        f"- Machine: nproc {m['nproc']}, {m['cpu']}, {m['memory']}, {m['os']}; "
        "shared with other work, so expect noise between runs",
        f"- Load average (1/5/15 min) before: {load}; after: {load_after}",
        f"- {m['python']}; Redis {setup.redis_version} on 127.0.0.1",
        f"- pyveba {_version('pyveba')}, dramatiq {_version('dramatiq')}, "
        f"celery {_version('celery')}, kombu {_version('kombu')}, redis-py {_version('redis')}, "
        f"httpx {_version('httpx')}",
        "",
        f"## Results (median of {setup.runs} runs)",
        "",
        f"Throughput: {setup.events:,} events, first send to the last handler start; "
        "**veba's figure is batch** (100 events per POST), the peers send one message per "
        "event, so it is not a per-event comparison (issue 11 adds that). "
        f"Latency: {setup.rate:g} events/s offered for {setup.seconds:g} s "
        f"({round(setup.rate * setup.seconds):,} events), send to handler start.",
        "",
        "| System | Throughput (events/s) | p50 latency (ms) | p99 latency (ms) |",
        "|---|---:|---:|---:|",
    ]
    for r in results:
        if r.error and not r.throughput:
            out.append(f"| {LABELS[r.name]} | not measured | — | — |")
        else:
            out.append(
                f"| {LABELS[r.name]} | {_num(r.events_per_s, ',.0f')} | "
                f"{_num(r.p50_ms, '.2f')} | {_num(r.p99_ms, '.2f')} |"
            )
    veba = by_name.get("veba")
    peers = [by_name[p] for p in ("dramatiq", "celery") if p in by_name]
    if veba is not None and peers:
        out += [
            "",
            "Ratios (throughput: above 1 means veba is faster; latency: below 1 means "
            "veba is faster):",
            "",
            "| | Throughput | p50 latency | p99 latency |",
            "|---|---:|---:|---:|",
        ]
        for peer in peers:
            out.append(
                f"| veba / {LABELS[peer.name].split(' ')[0]} | "
                f"{_ratio(veba.events_per_s, peer.events_per_s)} | "
                f"{_ratio(veba.p50_ms, peer.p50_ms)} | {_ratio(veba.p99_ms, peer.p99_ms)} |"
            )
    failures = [r for r in results if r.error]
    if failures:
        out += ["", "## Not measured", ""]
        for r in failures:
            done = f" (after {len(r.throughput)} complete runs)" if r.throughput else ""
            out += [f"**{LABELS[r.name]}**{done}:", "", "```", r.error.strip(), "```", ""]
    notes = [(r.name, n) for r in results for n in dict.fromkeys(r.notes)]
    if notes:
        out += ["", "## Notes from the run", ""]
        out += [f"- {LABELS[name]}: {note}" for name, note in notes]
    out += [
        "",
        "## Every run",
        "",
        "Load before: the machine's 1-minute load average as the run started (2 CPUs). "
        "Throughput columns: events/s, seconds from first send to last handler start, how "
        "long the senders took to hand everything over (close to the total: ingest, not "
        "the workers, set the pace), and events a handler saw twice. Latency columns: the "
        "rate actually sent, the sender's worst lateness against its schedule (large "
        "values mean the sending process itself was held up), and the latencies.",
        "",
        *_runs_table(results),
        "",
        *_method(setup),
        "",
    ]
    return "\n".join(out)


def _runs_table(results: list[SystemResult]) -> list[str]:
    rows = [
        "| System | Run | Load before | Events/s | Seconds | Sending took (s) | Redelivered "
        "| Achieved rate (/s) | Sender max lag (ms) | p50 (ms) | p99 (ms) | max (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        runs = zip(r.throughput, r.latency, r.load, strict=False)
        for i, (t, lat, load) in enumerate(runs, start=1):
            rows.append(
                f"| {LABELS[r.name]} | {i} | {load:.2f} | {t.events_per_s:,.0f} | {t.seconds:.2f} | "
                f"{t.send_seconds:.2f} | {t.duplicates} | {lat.achieved_rate:.1f} | "
                f"{lat.sender_max_lag_ms:.1f} | {lat.p50_ms:.2f} | {lat.p99_ms:.2f} | "
                f"{lat.max_ms:.1f} |"
            )
    return rows


def _method(setup: Setup) -> list[str]:
    return [
        "## Method",
        "",
        f"- **Events.** Copies of a VEBA `VmPoweredOffEvent` CloudEvent "
        f"(`bench/sample_event.json`, {setup.event_bytes} bytes as compact JSON), each with "
        "a fresh UUIDv4 `id` and its own `data.Key`. Each sender encodes the events "
        "while timed: Dramatiq and Celery inside their message (the event is the task's "
        "one argument), veba as the HTTP body.",
        "- **Order.** For each of the runs, each system in turn is started fresh (fresh "
        "Redis DB or fresh data directory), warmed with 200 events that must all reach "
        "the handler, measured for latency, then for throughput, and stopped; only one "
        "system runs at a time. Reported figures are the median over the runs.",
        "- **Recording.** Every handler's first statement is `bench.recorder.StartRecorder."
        'record(event_id)`, which appends `"<id> <time.time()>"` to a per-process buffer, '
        "written to `starts-<system>-<pid>.txt` every 50 lines or 50 ms, and by a "
        "background thread every 100 ms. The bench follows these files; a run ends when "
        "every one of its ids is there.",
        "- **Throughput.** All events are handed over as fast as possible by 4 sender "
        "threads in the bench process, 100 events per chunk: Dramatiq `actor.send()` "
        "and Celery `task.delay()` once per event (one Redis round trip each, no "
        "pipelining), veba one `POST /webhook` of an `application/cloudevents-batch+json` "
        "array of 100 per chunk (so 4 requests in flight). Time runs from just before the "
        "first send to the latest recorded handler start. After each run the bench waits "
        "until the broker holds no unacknowledged message (Dramatiq: `dramatiq:bench.msgs` "
        "empty; Celery: the queue and kombu's `unacked` hash empty; veba: "
        "`delivered` from `GET /api/v1/functions/noop` at least the number sent), "
        "outside the timed span.",
        "- **Latency.** One thread sends at absolute deadlines t0 + i/rate (late sends go "
        "at once until the schedule is met, so no drift). It records `time.time()` just "
        "before sending each event and sends it inline with the system's own client: "
        "`actor.send()`, `task.delay()`, or one structured-mode `POST /webhook` "
        "(`application/cloudevents+json`) over a keep-alive httpx connection, waiting for "
        "the 200. A send that blocks delays the next ones, which then go at once; the "
        "achieved rate and the sender's worst lateness are in the table of every run. "
        "Latency is the handler's recorded start minus "
        "that send time, both `time.time()` on the same machine; p50 and p99 are "
        "nearest-rank over all events of a run.",
        "- **The bench process** turns its garbage collector off while it sends (as "
        "`timeit` does), so a collection in the sender is not charged to a system.",
        "- **Dramatiq**: `dramatiq bench.peers.dramatiq_app -p 2 -t 8`, `RedisBroker`, "
        "default middleware, a no-op actor. Its Redis consumer polls: after an empty "
        "fetch it sleeps 5 ms * 2^misses with jitter, up to the 1 s worker timeout, so a "
        "message that arrives while the consumers sleep waits for one to wake.",
        "- **Celery**: `celery -A bench.peers.celery_app worker -P prefork -c 2 -Q bench "
        "--without-gossip --without-mingle --without-heartbeat`, Redis broker, "
        "`acks_late=True`, `worker_prefetch_multiplier` at its default (4), results ignored.",
        "- **veba**: `veba serve --data-dir DIR --listen 127.0.0.1:PORT --simulator-rate 0`, "
        "then `veba up -f bench/veba/stack.yml`: one `veba-cloudevent` function, "
        '`topic: "*"`, `com.openfaas.scale.min: 2` (two warm worker processes), '
        "`delivery.maxInflight: 64`.",
        "- **Redis** is the one already running on 127.0.0.1:6379; the bench uses its own "
        "DB number (9 unless `--redis-db`) and flushes only that DB, before and after each "
        "peer's turn. Raw results are also written to `bench/results/` (not committed).",
    ]
