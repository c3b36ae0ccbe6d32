"""docs/benchmarks.md as `python -m bench` writes it: the per-event ratio first, batch
labelled as batch, the targets of issue 11 beside the figures, and the retention hook."""

from __future__ import annotations

import sys
import types

import pytest
from bench.driver import Latency, SendMode, Throughput
from bench.prune import measure_prune
from bench.report import FanoutResult, NodesResult, PruneResult, Setup, SystemResult, render
from bench.veba.driver import BATCH_MODE, HTTPX, LIGHT, FanoutRun

# The peers' rows as their drivers declare them (bench.peers needs Redis's client).
SEND = SendMode("send", "Dramatiq `actor.send()`", 1, 16, "actor.send()")
DELAY = SendMode("delay", "Celery `task.delay()`", 1, 16, "task.delay()")


def _tp(mode: str, events_per_s: float, cpu_us: float) -> Throughput:
    return Throughput(
        events=1000,
        seconds=1000 / events_per_s,
        events_per_s=events_per_s,
        send_seconds=1000 / events_per_s,
        duplicates=0,
        mode=mode,
        sender_cpu_us=cpu_us,
    )


def _lat(p99: float) -> Latency:
    return Latency(500, 500.0, 500.0, 0.1, 1.0, p99, p99 * 2)


def _setup() -> Setup:
    return Setup(
        command=".venv/bin/python -m bench",
        date="2026-01-01 00:00 UTC",
        runs=1,
        events=1000,
        rate=500.0,
        seconds=1.0,
        event_bytes=840,
        redis_version="7",
        load_before=(0.0, 0.0, 0.0),
        fanout_events=100,
        fanout_sizes=(20,),
    )


def _results() -> tuple[list[SystemResult], list[FanoutResult]]:
    veba = SystemResult("veba", modes=[LIGHT, HTTPX, BATCH_MODE])
    veba.throughput = [_tp("light", 6000, 90), _tp("httpx", 3000, 300), _tp("batch", 12000, 20)]
    veba.latency = [_lat(4.0)]
    veba.load = [0.5]
    veba.rss_mb = [{"noop": [15.0, 15.5]}]
    veba.serve_rss_mb = [100.0]
    dramatiq = SystemResult("dramatiq", modes=[SEND])
    dramatiq.throughput = [_tp("send", 3000, 150)]
    dramatiq.latency = [_lat(9.0)]
    celery = SystemResult("celery", modes=[DELAY], error="RuntimeError: x")
    fan = FanoutResult(20)
    fan.runs = [FanoutRun(20, 100, 2000, 0.1, 20000.0, 0.05, 0)]
    fan.rss_mb = [{f"fn{i:02d}": [16.0 + i / 100] for i in range(1, 21)}]
    fan.serve_rss_mb = [110.0]
    return [veba, dramatiq, celery], [fan]


def test_the_report_leads_with_the_per_event_ratios_and_the_targets() -> None:
    results, fanouts = _results()
    text = render(
        _setup(),
        results,
        fanouts,
        PruneResult(1000, 500.0, error="TimeoutError: no retention pass"),
    )
    headline = text[text.index("## Headline") : text.index("- Date:")]
    rows = [line for line in headline.splitlines() if line.startswith("| ")][1:]
    assert "veba `http.client` / Dramatiq" in rows[0] and "**2.00x**" in rows[0]
    assert "met, goal too" in rows[0]
    assert "veba httpx / Dramatiq" in rows[1] and "**1.00x**" in rows[1]
    assert "Batch" in rows[2] and "4.00x" in rows[2]
    assert "20,000" in rows[3] and "met" in rows[3]
    assert "4.00" in rows[4] and "≤5 ms" in rows[4]
    assert "16.1" in rows[5] and "≤20 MB" in rows[5]
    # The sections follow in the order the issue asks for.
    sections = [
        "## Throughput, one event per request",
        "## Throughput, batch",
        "## Fan-out",
        "## Latency\n",
        "## Latency during a prune",
        "## Memory",
    ]
    positions = [text.index(s) for s in sections]
    assert positions == sorted(positions)
    assert "Not measured: TimeoutError: no retention pass" in text
    assert "**Celery + Redis**" in text  # its failure is shown, not dropped


def test_the_retention_figures_get_their_own_table(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("bench.retention")

    def measure(events: int, rate: float) -> dict[str, object]:
        return {
            "steady": {"requests": 100, "p99_ms": 2.5},
            "during prune": {"requests": 50, "p99_ms": 7.5},
            "pruned": events,
            "slow": [(0.5, 120.0), (0.7, 150.0), (0.9, 101.0), (1.0, 130.0), (2.0, 200.0)],
            "load_after": (1.5, 1.0, 0.5),
        }

    module.measure = measure  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bench.retention", module)
    prune = measure_prune(1234, 500.0)
    results, fanouts = _results()
    text = render(_setup(), results, fanouts, prune)
    section = text[text.index("## Latency during a prune") : text.index("## Memory")]
    assert "| during prune | 50 | 7.50 |" in section
    assert "| pruned | 1,234 |" in section
    assert "| slow | 5 (listed in the raw JSON) |" in section
    assert "| load_after | 1.50 / 1.00 / 0.50 |" in section


@pytest.mark.parametrize(
    ("events", "p99", "slow", "verdicts"),
    [
        (1_000_000, 3.3, 0, ["met", "met"]),
        (1_000_000, 12.0, 2, ["**not met**", "**not met**"]),
        (1_000, 3.3, 0, ["—", "—"]),  # a smaller prune is shown, not judged
    ],
)
def test_the_headline_judges_latency_during_a_prune_of_a_million_events(
    events: int, p99: float, slow: int, verdicts: list[str]
) -> None:
    during = {"requests": 100, "p99_ms": p99, "max_ms": 140.0 if slow else 9.5, "over_100ms": slow}
    prune = PruneResult(events, 500.0, figures={"during": during})
    results, fanouts = _results()
    text = render(_setup(), results, fanouts, prune)
    headline = text[text.index("## Headline") : text.index("- Date:")]
    rows = [line for line in headline.splitlines() if "during a prune" in line]
    assert len(rows) == 2
    assert f"| {p99:.2f} | ≤10 ms |" in rows[0]
    assert f"| {slow} ({140.0 if slow else 9.5:.1f}) | none |" in rows[1]
    assert [row.rsplit("|", 2)[1].strip() for row in rows] == verdicts


def _row(name: str, label: str, nodes: int, batch: float, light: float, p99: float) -> NodesResult:
    row = NodesResult(name, modes=[LIGHT, BATCH_MODE], label=label, nodes=nodes)
    row.throughput = [_tp("light", light, 50), _tp("batch", batch, 20)]
    row.latency = [_lat(p99)]
    row.load = [0.5]
    row.seconds = [30.0]
    if name != "floor":
        row.deliveries = [[600 // nodes] * nodes] if nodes > 1 else [[600]]
    return row


def test_the_nodes_section_compares_each_row_with_the_floor_and_shows_each_nodes_share() -> None:
    nodes = [
        _row("floor", "floor: nats-py pull consumer", 1, 9000, 4000, 2.0),
        _row("sqlite-1", "veba, 1 node, SQLite", 1, 6000, 2500, 4.0),
        _row("nats-1", "veba, 1 node, NATS", 1, 6000, 1000, 8.0),
        _row("nats-2", "veba, 2 nodes, NATS", 2, 7000, 1500, 9.0),
        _row("nats-3", "veba, 3 nodes, NATS", 3, 5400, 1800, 12.0),
    ]
    nodes[3].deliveries = [[450, 150]]
    results, fanouts = _results()
    text = render(_setup(), results, fanouts, None, nodes)
    section = text[text.index("## Nodes on NATS JetStream") : text.index("## Memory")]
    assert "`.venv/bin/python -m bench --only nodes`" in section
    assert "Like with like" in section and "open loop" in section
    assert (
        "| veba, 1 node, NATS | 6,000 | 0.67x | 1,000 | 0.25x | 1.00 | 8.00 | 500 | 100% |"
        in section
    )
    assert (
        "| veba, 2 nodes, NATS | 7,000 | 0.78x | 1,500 | 0.38x | 1.00 | 9.00 | 500 | 75% / 25% |"
        in (section)
    )
    assert "33% / 33% / 33%" in section
    assert "| floor: nats-py pull consumer | 9,000 | 1.00x |" in section and "| — |" in section
    targets = section[section.index("| Target (issue 12)") :]
    lines = [line for line in targets.splitlines() if line.startswith("| ")]
    assert "0.67" in lines[1] and lines[1].endswith("| met |")  # 6000 / 9000 ≥ 2/3
    assert "0.90x" in lines[2] and "**not met**" in lines[2]  # 3 nodes below 1, batch
    assert "1.80x" in lines[3] and lines[3].endswith("| met |")  # per event: 1800 / 1000
    assert "12.00" in lines[4] and "**not met**" in lines[4]  # worst NATS p99 > 10 ms
    assert "| veba, 2 nodes, NATS | 1 | 0.50 | 7,000 | 1,500 | 9.00 | 450 / 150 | 30 |" in section


def test_a_nodes_row_that_failed_is_shown_not_dropped() -> None:
    floor = _row("floor", "floor: nats-py pull consumer", 1, 9000, 4000, 2.0)
    broken = NodesResult("nats-2", label="veba, 2 nodes, NATS", nodes=2, error="TimeoutError: x")
    results, fanouts = _results()
    text = render(_setup(), results, fanouts, None, [floor, broken])
    assert "| veba, 2 nodes, NATS | not measured |" in text
    assert "**veba, 2 nodes, NATS**:" in text and "TimeoutError: x" in text
    assert "Not measured in this run (`.venv/bin/python -m bench --only nodes`" in render(
        _setup(), results, fanouts
    )
