"""The results as docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from importlib import metadata

from bench.common import median
from bench.driver import Latency, SendMode, Throughput
from bench.veba.driver import FanoutRun

LABELS = {
    "veba": "veba",
    "dramatiq": "Dramatiq + Redis",
    "celery": "Celery + Redis",
}


@dataclass
class SystemResult:
    name: str
    modes: list[SendMode] = field(default_factory=list)  # its throughput rows
    throughput: list[Throughput] = field(default_factory=list)  # every mode, every run
    latency: list[Latency] = field(default_factory=list)
    load: list[float] = field(default_factory=list)  # 1-min load average before each run
    # Per run: function -> RSS (MB) of each of its worker processes, after the run.
    rss_mb: list[dict[str, list[float]]] = field(default_factory=list)
    serve_rss_mb: list[float] = field(default_factory=list)  # veba serve itself
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def runs_of(self, mode: str) -> list[Throughput]:
        return [t for t in self.throughput if t.mode == mode]

    def events_per_s(self, mode: str) -> float | None:
        runs = self.runs_of(mode)
        return median(t.events_per_s for t in runs) if runs else None

    def cpu_us(self, mode: str) -> float | None:
        runs = self.runs_of(mode)
        return median(t.sender_cpu_us for t in runs) if runs else None

    def send_seconds(self, mode: str) -> float | None:
        runs = self.runs_of(mode)
        return median(t.send_seconds for t in runs) if runs else None

    @property
    def p50_ms(self) -> float | None:
        return median(lat.p50_ms for lat in self.latency) if self.latency else None

    @property
    def p99_ms(self) -> float | None:
        return median(lat.p99_ms for lat in self.latency) if self.latency else None

    @property
    def achieved_rate(self) -> float | None:
        return median(lat.achieved_rate for lat in self.latency) if self.latency else None


@dataclass
class NodesResult(SystemResult):
    """One row of the nodes section: the floor, or veba on N nodes."""

    label: str = ""
    nodes: int = 1
    # Per run: handler starts recorded by each node's workers (warm-up, latency and
    # throughput together).
    deliveries: list[list[int]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # each run, start to stop

    @property
    def shares(self) -> list[float] | None:
        """Each node's median share of the deliveries over the runs."""
        runs = [d for d in self.deliveries if sum(d)]
        if not runs:
            return None
        return [median(d[i] / sum(d) for d in runs) for i in range(len(runs[0]))]


@dataclass
class FanoutResult:
    functions: int
    runs: list[FanoutRun] = field(default_factory=list)
    load: list[float] = field(default_factory=list)
    rss_mb: list[dict[str, list[float]]] = field(default_factory=list)
    serve_rss_mb: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def deliveries_per_s(self) -> float | None:
        return median(r.deliveries_per_s for r in self.runs) if self.runs else None


@dataclass
class PruneResult:
    events: int
    rate: float
    figures: dict[str, object] | None = None  # what bench.retention.measure returned
    error: str | None = None  # or why there are none
    seconds: float = 0.0


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
    fanout_events: int = 0
    fanout_sizes: tuple[int, ...] = ()
    prune_events: int = 0
    nodes: bool = False  # the nodes section (issue 12) was measured
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


def _met(ok: bool | None) -> str:
    return "—" if ok is None else ("met" if ok else "**not met**")


# The targets of issue 11, shown beside the figures.
TARGET_LIGHT = 1.5  # veba one event per POST (http.client) / Dramatiq send(); goal 2x
TARGET_LIGHT_GOAL = 2.0
TARGET_HTTPX = 1.0
TARGET_BATCH = 3.0
TARGET_P99_MS = 5.0
TARGET_RATE = 500.0  # events/s at which p99 is held to TARGET_P99_MS
TARGET_FANOUT = 15_000.0  # deliveries/s with 20 functions
TARGET_FANOUT_FUNCTIONS = 20
TARGET_RSS_MB = 20.0
TARGET_PRUNE_EVENTS = 1_000_000  # a prune this large, at TARGET_RATE, holds:
TARGET_PRUNE_P99_MS = 10.0
TARGET_PRUNE_MAX_MS = 100.0  # no request over this

RERUN = ".venv/bin/python -m bench"


@dataclass
class _Figures:
    """The medians the report quotes more than once."""

    light: float | None
    httpx: float | None
    batch: float | None
    dramatiq: float | None
    p99_ms: float | None
    achieved_rate: float | None  # what the latency sender managed of the offered rate
    fanout: FanoutResult | None
    rss: tuple[str, float] | None  # (which stack, median MB per function)
    prune: PruneResult | None = None


def _per_function_mb(samples: list[dict[str, list[float]]]) -> list[float]:
    """Every function's RSS (its workers summed), over every run."""
    return [sum(workers) for sample in samples for workers in sample.values()]


def _figures(
    results: list[SystemResult], fanouts: list[FanoutResult], prune: PruneResult | None = None
) -> _Figures:
    by_name = {r.name: r for r in results}
    veba, dramatiq = by_name.get("veba"), by_name.get("dramatiq")
    fan = {f.functions: f for f in fanouts if f.runs}
    biggest = fan[max(fan)] if fan else None
    rss: tuple[str, float] | None = None
    if biggest is not None and biggest.rss_mb:
        rss = (
            f"fan-out stack, {biggest.functions} functions",
            median(_per_function_mb(biggest.rss_mb)),
        )
    elif veba is not None and veba.rss_mb:
        rss = ("the `noop` stack", median(_per_function_mb(veba.rss_mb)))
    return _Figures(
        light=veba.events_per_s("light") if veba else None,
        httpx=veba.events_per_s("httpx") if veba else None,
        batch=veba.events_per_s("batch") if veba else None,
        dramatiq=dramatiq.events_per_s("send") if dramatiq else None,
        p99_ms=veba.p99_ms if veba else None,
        achieved_rate=veba.achieved_rate if veba else None,
        fanout=fan.get(TARGET_FANOUT_FUNCTIONS) or biggest,
        rss=rss,
        prune=prune if prune is not None and prune.figures else None,
    )


def _at_least(value: float | None, target: float) -> bool | None:
    return None if value is None else value >= target


def _quotient(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _headline(f: _Figures, rate: float) -> list[str]:
    light = _quotient(f.light, f.dramatiq)
    httpx_ = _quotient(f.httpx, f.dramatiq)
    batch = _quotient(f.batch, f.dramatiq)
    fan = f.fanout.deliveries_per_s if f.fanout else None
    fan_label = f"Fan-out, {f.fanout.functions} functions (deliveries/s)" if f.fanout else "Fan-out"
    # A sender that fell behind the offered rate measured a lighter load: say so.
    achieved = ""
    if f.achieved_rate is not None and f.achieved_rate < rate * 0.98:
        achieved = f" (only {f.achieved_rate:,.0f}/s achieved)"
    light_met = _met(_at_least(light, TARGET_LIGHT))
    if light is not None and light >= TARGET_LIGHT_GOAL:
        light_met = "met, goal too"
    rows = [
        "| Measure | Figure | Target (issue 11) | |",
        "|---|---:|---|---|",
        f"| **Per event**: veba `http.client` / Dramatiq `send()` | **{_ratio(f.light, f.dramatiq)}** "
        f"({_num(f.light, ',.0f')} vs {_num(f.dramatiq, ',.0f')} events/s) "
        f"| ≥{TARGET_LIGHT:g}x (goal {TARGET_LIGHT_GOAL:g}x) | {light_met} |",
        f"| **Per event**: veba httpx / Dramatiq `send()` | **{_ratio(f.httpx, f.dramatiq)}** "
        f"({_num(f.httpx, ',.0f')} vs {_num(f.dramatiq, ',.0f')} events/s) "
        f"| ≥{TARGET_HTTPX:g}x | {_met(_at_least(httpx_, TARGET_HTTPX))} |",
        f"| Batch: veba 100 events/POST / Dramatiq `send()` per event | {_ratio(f.batch, f.dramatiq)} "
        f"({_num(f.batch, ',.0f')} events/s) | ≥{TARGET_BATCH:g}x "
        f"| {_met(_at_least(batch, TARGET_BATCH))} |",
        f"| {fan_label} | {_num(fan, ',.0f')} | ≥{TARGET_FANOUT:,.0f} with "
        f"{TARGET_FANOUT_FUNCTIONS} functions | "
        f"{_met(_at_least(fan, TARGET_FANOUT) if f.fanout and f.fanout.functions >= TARGET_FANOUT_FUNCTIONS else None)} |",
        f"| veba p99 latency at {rate:g} events/s offered, 1 event/request (ms) "
        f"| {_num(f.p99_ms, '.2f')}{achieved} | ≤{TARGET_P99_MS:g} ms at {TARGET_RATE:g}/s | "
        f"{_met(None if f.p99_ms is None or rate != TARGET_RATE else f.p99_ms <= TARGET_P99_MS)} |",
        f"| RSS per warm function (MB){f' — {f.rss[0]}' if f.rss else ''} "
        f"| {_num(f.rss[1] if f.rss else None, '.1f')} | ≤{TARGET_RSS_MB:g} MB | "
        f"{_met(None if f.rss is None else f.rss[1] <= TARGET_RSS_MB)} |",
        *_prune_headline(f.prune),
    ]
    return rows


def _prune_headline(prune: PruneResult | None) -> list[str]:
    """The retention target's rows: webhook latency while a large prune runs."""
    during = prune.figures.get("during") if prune and prune.figures else None
    if prune is None or not isinstance(during, dict):
        return []
    p99, worst, slow = (_number(during.get(k)) for k in ("p99_ms", "max_ms", "over_100ms"))
    # Judged only at the size and rate the target names; a smaller run is shown.
    judged = prune.events >= TARGET_PRUNE_EVENTS and prune.rate == TARGET_RATE
    what = f"during a prune of {prune.events:,} events at {prune.rate:g}/s"
    return [
        f"| veba p99 latency {what} (ms) | {_num(p99, '.2f')} | ≤{TARGET_PRUNE_P99_MS:g} ms "
        f"| {_met(p99 <= TARGET_PRUNE_P99_MS if judged and p99 is not None else None)} |",
        f"| Requests over {TARGET_PRUNE_MAX_MS:g} ms {what} (the worst, ms) "
        f"| {_num(slow, ',.0f')} ({_num(worst, '.1f')}) | none "
        f"| {_met(slow == 0 if judged and slow is not None else None)} |",
    ]


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def render(
    setup: Setup,
    results: list[SystemResult],
    fanouts: list[FanoutResult] | None = None,
    prune: PruneResult | None = None,
    nodes: list[NodesResult] | None = None,
) -> str:
    fanouts = fanouts or []
    nodes = nodes or []
    m = machine()
    by_name = {r.name: r for r in results}
    figures = _figures(results, fanouts, prune)
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
        f"## Headline (median of {setup.runs} run{'s' if setup.runs != 1 else ''})",
        "",
        "The first two rows compare like with like: one event per request or message, "
        f"each system's client in {_threads(results)} sender threads of the bench process. "
        "Ratios above 1 mean veba is faster.",
        "",
        *_headline(figures, setup.rate),
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
        *_per_event(setup, results),
        "",
        *_batch(setup, by_name),
        "",
        *_fanout(setup, fanouts),
        "",
        *_latency(setup, results),
        "",
        *_prune(setup, prune),
        "",
        *_nodes(setup, nodes),
        "",
        *_rss(results, fanouts),
    ]
    failures: list[tuple[str, str, int]] = [
        (LABELS[r.name], r.error, len(r.latency)) for r in results if r.error
    ]
    failures += [
        (f"fan-out, {f.functions} functions", f.error, len(f.runs)) for f in fanouts if f.error
    ]
    failures += [(n.label, n.error, len(n.latency)) for n in nodes if n.error]
    if failures:
        out += ["", "## Not measured", ""]
        for label, error, done in failures:
            after = f" (after {done} complete runs)" if done else ""
            out += [f"**{label}**{after}:", "", "```", error.strip(), "```", ""]
    notes = [(LABELS[r.name], n) for r in results for n in dict.fromkeys(r.notes)]
    notes += [
        (f"fan-out, {f.functions} functions", n) for f in fanouts for n in dict.fromkeys(f.notes)
    ]
    notes += [(n.label, note) for n in nodes for note in dict.fromkeys(n.notes)]
    if notes:
        out += ["", "## Notes from the run", ""]
        out += [f"- {label}: {note}" for label, note in notes]
    out += [
        "",
        "## Every run",
        "",
        "Load before: the machine's 1-minute load average as the run started (2 CPUs). "
        "Seconds: first send to last handler start; sending took: until the last send was "
        "accepted (close to the total: ingest, not the workers, set the pace); redelivered: "
        "events a handler saw twice.",
        "",
        *_runs_table(results, fanouts),
        "",
        *_method(setup),
        "",
    ]
    return "\n".join(out)


def _threads(results: list[SystemResult]) -> str:
    counts = sorted({m.threads for r in results for m in r.modes if m.per_request == 1})
    return "/".join(str(c) for c in counts) or "the"


def _per_event(setup: Setup, results: list[SystemResult]) -> list[str]:
    by_name = {r.name: r for r in results}
    dramatiq = by_name["dramatiq"].events_per_s("send") if "dramatiq" in by_name else None
    out = [
        "## Throughput, one event per request",
        "",
        f"`{RERUN} --only veba --only dramatiq --only celery`. {setup.events:,} events "
        "handed over as fast as the client allows, one event per HTTP request or broker "
        "message; time from the first send to the last handler start. Sender CPU: CPU "
        "seconds the bench process (all its sender threads; nothing else runs in it while "
        "they send) spent during the sending span, per event: the client's cost to the "
        "application that sends.",
        "",
        "| Sender | Threads | Events/s | / Dramatiq | Sender CPU (µs/event) | Sending took (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for mode in r.modes:
            if mode.per_request != 1:
                continue
            if not r.runs_of(mode.key):
                out.append(f"| {mode.label} | {mode.threads} | not measured | — | — | — |")
                continue
            eps = r.events_per_s(mode.key)
            out.append(
                f"| {mode.label} | {mode.threads} | {_num(eps, ',.0f')} | "
                f"{_ratio(eps, dramatiq)} | {_num(r.cpu_us(mode.key), ',.0f')} | "
                f"{_num(r.send_seconds(mode.key), '.2f')} |"
            )
    out += ["", "How each row sends:", ""]
    out += [
        f"- **{mode.label}**: {mode.client}."
        for r in results
        for mode in r.modes
        if mode.per_request == 1
    ]
    return out


def _batch(setup: Setup, by_name: dict[str, SystemResult]) -> list[str]:
    veba = by_name.get("veba")
    batch = next((m for m in veba.modes if m.per_request > 1), None) if veba else None
    out = ["## Throughput, batch (veba only)", ""]
    if veba is None or batch is None:
        return [*out, "Not measured in this run (`--only veba` measures it)."]
    eps = veba.events_per_s(batch.key)
    out += [
        f"`{RERUN} --only veba --only dramatiq`. The same {setup.events:,} events, "
        f"**{batch.per_request} events per POST** from {batch.threads} threads: "
        f"{batch.client}. This is what a batching producer gets; the peers' rows are one "
        "message per event, so the ratio is not per event.",
        "",
        "| Sender | Events/s | Sender CPU (µs/event) | vs Dramatiq `send()` | "
        "vs Celery `delay()` |",
        "|---|---:|---:|---:|---:|",
        f"| {batch.label} | {_num(eps, ',.0f')} | {_num(veba.cpu_us(batch.key), ',.0f')} | "
        f"{_ratio(eps, by_name['dramatiq'].events_per_s('send') if 'dramatiq' in by_name else None)} | "
        f"{_ratio(eps, by_name['celery'].events_per_s('delay') if 'celery' in by_name else None)} |",
    ]
    return out


def _fanout(setup: Setup, fanouts: list[FanoutResult]) -> list[str]:
    out = ["## Fan-out", ""]
    if not fanouts:
        return [*out, "Not measured in this run (`--only fanout` measures it)."]
    sizes = ",".join(str(f.functions) for f in fanouts)
    out += [
        f"`{RERUN} --only fanout --fanout {sizes}`. One appliance per size, with N no-op "
        'functions, each `topic: "*"` (subscribed to every event) and `scale.min: 1` (its '
        f"own warm worker process), `maxInflight: 64`. {setup.fanout_events:,} events sent "
        "**in batches of 100 per POST** from 4 threads (fan-out measures dispatch, not "
        "ingest); deliveries = events x functions; time from the first send to the last "
        "handler start of any function. After each run every function's `delivered` "
        "(`GET /api/v1/functions/<name>`) must reach the events sent.",
        "",
        "| Functions | Events | Deliveries | Deliveries/s | Seconds | Sending took (s) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for f in fanouts:
        if not f.runs:
            out.append(f"| {f.functions} | not measured | — | — | — | — |")
            continue
        last = f.runs[-1]
        out.append(
            f"| {f.functions} | {last.events:,} | {last.deliveries:,} | "
            f"{_num(f.deliveries_per_s, ',.0f')} | "
            f"{median(r.seconds for r in f.runs):.2f} | "
            f"{median(r.send_seconds for r in f.runs):.2f} |"
        )
    return out


def _latency(setup: Setup, results: list[SystemResult]) -> list[str]:
    out = [
        "## Latency",
        "",
        f"`{RERUN} --rate {setup.rate:g}`. {setup.rate:g} events/s offered for "
        f"{setup.seconds:g} s ({round(setup.rate * setup.seconds):,} events), one event per "
        "request or message from one thread, send to handler start. veba: structured-mode "
        "POST over a keep-alive httpx connection.",
        "",
        "| System | Achieved rate (/s) | p50 (ms) | p99 (ms) | / Dramatiq p99 |",
        "|---|---:|---:|---:|---:|",
    ]
    by_name = {r.name: r for r in results}
    peer_p99 = by_name["dramatiq"].p99_ms if "dramatiq" in by_name else None
    for r in results:
        out.append(
            f"| {LABELS[r.name]} | {_num(r.achieved_rate, ',.0f')} | {_num(r.p50_ms, '.2f')} | "
            f"{_num(r.p99_ms, '.2f')} | "
            f"{_ratio(r.p99_ms, peer_p99)} |"
        )
    return out


def _prune(setup: Setup, prune: PruneResult | None) -> list[str]:
    out = ["## Latency during a prune (retention)", ""]
    if prune is None:
        return [*out, "Not measured in this run (`--only prune --prune-events N` measures it)."]
    took = f" (took {prune.seconds:.0f} s)" if prune.figures is not None else ""
    out += [
        f"`{RERUN} --only prune --prune-events {prune.events}`: `bench.retention.measure("
        f"events={prune.events}, rate={prune.rate:g})`, with the figures it returns: latency "
        f"in steady state and while the appliance prunes {prune.events:,} events{took}. "
        "See `bench/retention.py` for its method.",
        "",
    ]
    if prune.figures is None:
        return [*out, f"Not measured: {prune.error or 'no figures'}"]
    return [*out, *_figure_table(prune.figures)]


# The targets of issue 12.
TARGET_FLOOR_SHARE = 2 / 3  # one NATS node's events/s over the plain nats-py floor's
TARGET_NODES_P99_MS = 10.0


def _shares(row: NodesResult) -> str:
    shares = row.shares
    if shares is None:
        return "—"
    return " / ".join(f"{share:.0%}" for share in shares)


def _nodes(setup: Setup, nodes: list[NodesResult]) -> list[str]:
    out = ["## Nodes on NATS JetStream", ""]
    if not nodes:
        return [*out, f"Not measured in this run (`{RERUN} --only nodes` measures it)."]
    by_name = {n.name: n for n in nodes}
    floor = by_name.get("floor")
    one, three = by_name.get("nats-1"), by_name.get("nats-3")
    out += [
        f"`{RERUN} --only nodes`. Each row on a fresh appliance and a NATS NAME of its "
        "own (its streams and buckets deleted afterwards), the rows one after the other "
        f"on the same machine and NATS server, median of {setup.runs} run"
        f"{'s' * (setup.runs != 1)}. **Floor**: a plain nats-py JetStream pull consumer "
        "(`fetch(100)`, `ack()` each) whose no-op handler runs in the consumer's own "
        "process; the bench publishes to its stream with `js.publish()` and waits for "
        "each acknowledgement (durable, as veba's 200). **veba**: `veba serve` nodes, "
        "`--event-log nats://127.0.0.1:4222/NAME` (one node on its SQLite log for "
        "comparison), the bench's no-op function (`scale.min: 2`) deployed through the "
        "first node before the others start, so each function runs in worker processes "
        "of its own on every node; the bench's senders spread their requests over the "
        "nodes round-robin (a batch, or a thread's 100 events, to the next node).",
        "",
        "Like with like: the **batch** column is veba's 100 events per POST against "
        "the floor's 100 publishes in flight (4 sender threads each); the **per event** "
        "column is one event per request against one publish at a time (16 threads "
        f"each); p99 is one event per request or publish at {setup.rate:g}/s offered "
        f"for {setup.seconds:g} s, round-robin over the nodes, as an open loop: each send "
        "is made at its scheduled time by one of 8 threads, so up to 8 are outstanding "
        "and a slow answer does not hold back the next send (a send that waits for a "
        "free thread counts its wait). When a row cannot keep up with the rate its "
        "latency grows with the backlog, and the achieved rate (counted to the last "
        "answer) falls below the offered one. Every figure is first send to "
        "handler start, recorded the same way (bench.recorder). The floor has no HTTP "
        "ingest, no routing and no process hop to a function's worker; veba has all "
        "three. Each node's share: the handler starts recorded by that node's workers "
        "(a worker is a descendant of its node's `veba serve`) over the run's "
        "deliveries, warm-up and latency included.",
        "",
        f"| Row | Batch events/s | / floor | Per event events/s | / floor | p50 (ms) "
        f"| p99 at {setup.rate:g}/s (ms) | Achieved (/s) | Each node's share |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    floor_batch = floor.events_per_s("batch") if floor else None
    floor_light = floor.events_per_s("light") if floor else None
    for n in nodes:
        if not n.latency:
            out.append(f"| {n.label} | not measured | — | — | — | — | — | — | — |")
            continue
        batch, light = n.events_per_s("batch"), n.events_per_s("light")
        out.append(
            f"| {n.label} | {_num(batch, ',.0f')} | {_ratio(batch, floor_batch)} | "
            f"{_num(light, ',.0f')} | {_ratio(light, floor_light)} | "
            f"{_num(n.p50_ms, '.2f')} | {_num(n.p99_ms, '.2f')} | "
            f"{_num(n.achieved_rate, ',.0f')} | {_shares(n)} |"
        )
    one_batch = one.events_per_s("batch") if one else None
    three_batch = three.events_per_s("batch") if three else None
    one_light = one.events_per_s("light") if one else None
    three_light = three.events_per_s("light") if three else None
    floor_ratio = _quotient(one_batch, floor_batch)
    nats_p99 = [n.p99_ms for n in nodes if n.name.startswith("nats-") and n.p99_ms is not None]
    worst = max(nats_p99) if nats_p99 else None
    at_rate = setup.rate == TARGET_RATE
    out += [
        "",
        "| Target (issue 12) | Figure | |",
        "|---|---:|---|",
        f"| 1 NATS node ≥ {TARGET_FLOOR_SHARE:.2f} of the floor (batch) "
        f"| {_num(floor_ratio, '.2f')} | {_met(_at_least(floor_ratio, TARGET_FLOOR_SHARE))} |",
        f"| 3 nodes never below 1 node (batch, medians) | {_ratio(three_batch, one_batch)} "
        f"| {_met(_at_least(_quotient(three_batch, one_batch), 1.0))} |",
        f"| 3 nodes never below 1 node (per event, medians) | {_ratio(three_light, one_light)} "
        f"| {_met(_at_least(_quotient(three_light, one_light), 1.0))} |",
        f"| p99 ≤ {TARGET_NODES_P99_MS:g} ms at {TARGET_RATE:g}/s, worst NATS row (ms) "
        f"| {_num(worst, '.2f')} | "
        f"{_met(None if worst is None or not at_rate else worst <= TARGET_NODES_P99_MS)} |",
        "",
        "Every run (deliveries: handler starts by node, in node order):",
        "",
        "| Row | Run | Load before | Batch events/s | Per event events/s | p99 (ms) "
        "| Deliveries by node | Took (s) |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for n in nodes:
        batches, lights = n.runs_of("batch"), n.runs_of("light")
        for i, lat in enumerate(n.latency):
            load = n.load[i] if i < len(n.load) else float("nan")
            by_node = (
                " / ".join(f"{d:,}" for d in n.deliveries[i]) if i < len(n.deliveries) else "—"
            )
            took = n.seconds[i] if i < len(n.seconds) else None
            out.append(
                f"| {n.label} | {i + 1} | {load:.2f} | "
                f"{_num(batches[i].events_per_s if i < len(batches) else None, ',.0f')} | "
                f"{_num(lights[i].events_per_s if i < len(lights) else None, ',.0f')} | "
                f"{lat.p99_ms:.2f} | {by_node} | {_num(took, '.0f')} |"
            )
    return out


def _cell(value: object) -> str:
    if isinstance(value, list | tuple):
        # A few numbers (a load average) inline; longer lists (e.g. every slow
        # request) by their length: the raw JSON in bench/results/ has them whole.
        if len(value) <= 4 and all(isinstance(v, int | float) for v in value):
            return " / ".join(_cell(v) for v in value)
        return f"{len(value)} (listed in the raw JSON)"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:,.2f}" if isinstance(value, float) else f"{value:,}"


def _figure_table(figures: dict[str, object]) -> list[str]:
    """The retention module's dict as tables: a row per phase (a dict of numbers),
    then the scalar figures as name/value rows."""
    phases = {k: v for k, v in figures.items() if isinstance(v, dict)}
    scalars = {k: v for k, v in figures.items() if not isinstance(v, dict)}
    out: list[str] = []
    if phases:
        columns = list(dict.fromkeys(c for v in phases.values() for c in v))
        out += [
            "| Phase | " + " | ".join(str(c) for c in columns) + " |",
            "|---|" + "---:|" * len(columns),
        ]
        for phase, values in phases.items():
            cells = " | ".join(_cell(values.get(c, "—")) for c in columns)
            out.append(f"| {phase} | {cells} |")
    if scalars:
        if out:
            out.append("")
        out += ["| Figure | Value |", "|---|---:|"]
        out += [f"| {k} | {_cell(v)} |" for k, v in scalars.items()]
    return out


def _rss(results: list[SystemResult], fanouts: list[FanoutResult]) -> list[str]:
    out = [
        "## Memory: RSS per warm function",
        "",
        f"Measured by every run above (`{RERUN} --only fanout` or `--only veba`). After a "
        "run's measurements, the bench finds each function's worker processes among the "
        "descendants of `veba serve` (by `VEBA_FUNCTION_NAME` in `/proc/PID/environ`) and "
        "reads `VmRSS` from `/proc/PID/status`. A function's RSS is the sum over its "
        "workers (shared pages count in each); the median is over functions and runs.",
        "",
        "| Stack | Functions | Workers per function | RSS per function, median (MB) "
        "| min to max (MB) | `veba serve` RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    stacks: list[tuple[str, list[dict[str, list[float]]], list[float]]] = []
    by_name = {r.name: r for r in results}
    if "veba" in by_name and by_name["veba"].rss_mb:
        stacks.append(
            ("`noop` (`scale.min: 2`)", by_name["veba"].rss_mb, by_name["veba"].serve_rss_mb)
        )
    for f in fanouts:
        if f.rss_mb:
            stacks.append((f"fan-out, {f.functions} (`scale.min: 1`)", f.rss_mb, f.serve_rss_mb))
    if not stacks:
        return [*out[:2], "Not measured in this run."]
    for label, samples, serve in stacks:
        per_fn = _per_function_mb(samples)
        workers = median(len(w) for s in samples for w in s.values())
        out.append(
            f"| {label} | {len(samples[-1])} | {workers:g} | {median(per_fn):.1f} | "
            f"{min(per_fn):.1f} to {max(per_fn):.1f} | "
            f"{_num(median(serve) if serve else None, '.1f')} |"
        )
    return out


def _runs_table(results: list[SystemResult], fanouts: list[FanoutResult]) -> list[str]:
    rows = [
        "| Row | Run | Load before | Events/s | Seconds | Sending took (s) "
        "| Sender CPU (µs/event) | Redelivered |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for mode in r.modes:
            for i, t in enumerate(r.runs_of(mode.key), start=1):
                load = r.load[i - 1] if i <= len(r.load) else float("nan")
                rows.append(
                    f"| {mode.label} | {i} | {load:.2f} | {t.events_per_s:,.0f} | "
                    f"{t.seconds:.2f} | {t.send_seconds:.2f} | {t.sender_cpu_us:,.0f} | "
                    f"{t.duplicates} |"
                )
    for f in fanouts:
        for i, run in enumerate(f.runs, start=1):
            load = f.load[i - 1] if i <= len(f.load) else float("nan")
            rows.append(
                f"| fan-out {f.functions} (deliveries/s) | {i} | {load:.2f} | "
                f"{run.deliveries_per_s:,.0f} | {run.seconds:.2f} | {run.send_seconds:.2f} | — | "
                f"{run.duplicates} |"
            )
    rows += [
        "",
        "Latency, every run: the rate actually sent, the sender's worst lateness against "
        "its schedule (large values mean the sending process itself was held up), and the "
        "latencies.",
        "",
        "| System | Run | Achieved rate (/s) | Sender max lag (ms) | p50 (ms) | p99 (ms) "
        "| max (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for i, lat in enumerate(r.latency, start=1):
            rows.append(
                f"| {LABELS[r.name]} | {i} | {lat.achieved_rate:.1f} | "
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
        "one argument), veba as the HTTP body (`application/cloudevents+json` for one "
        "event, `application/cloudevents-batch+json` for a batch).",
        "- **Order.** For each of the runs, each system in turn is started fresh (fresh "
        "Redis DB or fresh data directory), warmed with 200 events that must all reach "
        "the handler, measured for latency, then for throughput (veba: its three ways of "
        "sending, in an order that rotates from run to run), and stopped; then each "
        "fan-out size on a fresh appliance. Only one system runs at a time. Reported "
        "figures are the median over the runs; the prune measurement runs once, last.",
        "- **Recording.** Every handler's first statement is `bench.recorder.StartRecorder."
        'record(event_id)`, which appends `"<id> <time.time()>"` to a per-process buffer, '
        "written to `starts-<system>-<pid>.txt` every 50 lines or 50 ms, and by a "
        "background thread every 100 ms. The bench follows these files (one folder per "
        "function in the fan-out stacks); a run ends when every one of its ids is there.",
        "- **Throughput.** Sender threads of the bench process take 100 events at a time "
        "from a shared pool and send them as the row says; the per-event rows of veba and "
        "the peers all use the same number of threads (16: veba's one-event requests need "
        "many in flight; Dramatiq and Celery, tried with the 4 threads of earlier versions "
        "of this bench, were within the noise of 16). Dramatiq `actor.send()` and Celery "
        "`task.delay()` make one Redis round trip per event (no pipelining). After each "
        "run, outside the timed span, the bench waits until the broker holds no "
        "unacknowledged message (Dramatiq: `dramatiq:bench.msgs` empty; Celery: the queue "
        "and kombu's `unacked` hash empty; veba: `delivered` from "
        "`GET /api/v1/functions/<name>` at least the number sent, for every function).",
        "- **Sender CPU** is `time.process_time()` of the bench process across the sending "
        "span (from before the first send until every sender thread returned), divided by "
        "the events. The garbage collector is off meanwhile; the main thread only waits.",
        "- **Latency.** One thread sends at absolute deadlines t0 + i/rate (late sends go "
        "at once until the schedule is met, so no drift). It records `time.time()` just "
        "before sending each event and sends it inline with the system's own client: "
        "`actor.send()`, `task.delay()`, or one structured-mode `POST /webhook` "
        "(`application/cloudevents+json`) over a keep-alive httpx connection, waiting for "
        "the 200. Latency is the handler's recorded start minus that send time, both "
        "`time.time()` on the same machine; p50 and p99 are nearest-rank over all events "
        "of a run.",
        "- **The bench process** turns its garbage collector off while it sends (as "
        "`timeit` does), so a collection in the sender is not charged to a system.",
        "- **Dramatiq**: `dramatiq bench.peers.dramatiq_app -p 2 -t 8`, `RedisBroker`, "
        "default middleware, a no-op actor. Its Redis consumer polls: after an empty "
        "fetch it sleeps 5 ms * 2^misses with jitter, up to the 1 s worker timeout, so a "
        "message that arrives while the consumers sleep waits for one to wake.",
        "- **Celery**: `celery -A bench.peers.celery_app worker -P prefork -c 2 -Q bench "
        "--without-gossip --without-mingle --without-heartbeat`, Redis broker, "
        "`acks_late=True`, `worker_prefetch_multiplier` and `broker_pool_limit` at their defaults (4, 10), "
        "results ignored.",
        "- **veba**: `veba serve --data-dir DIR --listen 127.0.0.1:PORT --simulator-rate 0`, "
        "then `veba up -f bench/veba/stack.yml`: one `veba-cloudevent` function, "
        '`topic: "*"`, `com.openfaas.scale.min: 2` (two warm worker processes), '
        "`delivery.maxInflight: 64`. The fan-out stacks are generated into the run's work "
        "folder: N functions `fn01`…, all on the same no-op handler folder.",
        "- **Redis** is the one already running on 127.0.0.1:6379; the bench uses its own "
        "DB number (9 unless `--redis-db`) and flushes only that DB, before and after each "
        "peer's turn. Raw results are also written to `bench/results/` (not committed).",
    ]
