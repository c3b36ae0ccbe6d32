"""Prometheus metrics and structured logging for the appliance.

Counters and the attempt-duration histogram are kept as things happen
(`Metrics`); what the log and the providers know now (backlog, lag, dead
letters, sizes, connection state) is read at scrape time into a `Live` and
rendered with them, so a gauge equals what the log says at that moment.
Every family, its labels and meaning: README.md, "Metrics".
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from veba import __version__
from veba.eventlog.base import Backlog, Delivery, LogSize
from veba.targets.base import Result

__all__ = [
    "EVENT_LABEL_SETS",
    "Live",
    "Metrics",
    "Subscriber",
    "attempt_seconds",
    "configure_logging",
]

# No `_created` series beside every counter: the start time says as much.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Distinct (source, type) pairs counted one by one; past this, "other". A
# webhook takes any source and type, and each pair is a time series for ever.
EVENT_LABEL_SETS = 1000
_LABEL_CHARS = 200  # a label value longer than this is cut
# Attempts take from a millisecond (a warm worker) to minutes (a timeout).
DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Subscriber:
    """A function or RouterConfig processor, named as its subscription in the log."""

    name: str
    kind: str  # "function" | "processor"
    in_flight: int  # attempts under way
    # A function's pool (veba.functions._scaling): workers now, their bounds, and
    # how often autoscaling has started or retired one; empty for processors.
    scaling: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Live:
    """What the appliance knows at one moment, for gauges (read by `veba.telemetry.read_live`)."""

    now: float
    subscribers: Sequence[Subscriber] = ()
    backlog: Mapping[str, Backlog] = field(default_factory=dict)
    size: LogSize = field(default_factory=lambda: LogSize(0, 0))
    checkpoints: Mapping[str, float] = field(default_factory=dict)  # provider -> last written
    providers: Sequence[Mapping[str, Any]] = ()  # each provider's status()


def attempt_seconds(result: Result) -> float:
    """How long the attempt took until now (when its outcome is told)."""
    return max(0.0, time.time() - result.started) if result.started else 0.0


class Metrics:
    """One registry per appliance, so several appliances can live in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "veba_events_ingested", "Events accepted into the log, by way in", ["via"], registry=r
        )
        self.duplicates = Counter(
            "veba_events_duplicate", "Events ignored as duplicates", ["via"], registry=r
        )
        self.rejected = Counter(
            "veba_events_rejected", "Requests refused as malformed", ["via"], registry=r
        )
        self.accepted = Counter(
            "veba_events_accepted",
            "Events accepted into the log, by CloudEvent source and type; past"
            f" {EVENT_LABEL_SETS} distinct pairs, new ones count as source and type 'other'",
            ["source", "type"],
            registry=r,
        )
        self.deliveries = Counter(
            "veba_deliveries",
            "Delivery attempts by outcome: delivered, retried (a retry follows), dead"
            " (into the dead-letter queue)",
            ["function", "outcome"],
            registry=r,
        )
        self.durations = Histogram(
            "veba_delivery_attempt_duration_seconds",
            "How long delivery attempts took, whatever their outcome",
            ["function"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.webhook_requests = Counter(
            "veba_webhook_requests",
            "Requests to the webhook by HTTP status, refusals by credentials and size"
            " limits included",
            ["code"],
            registry=r,
        )
        build = Gauge("veba_build_info", "veba's version (1)", ["version"], registry=r)
        build.labels(__version__).set(1)
        ProcessCollector(registry=r)  # process_cpu_seconds_total, memory, open fds
        self._live = _LiveCollector()
        r.register(self._live)
        self._pairs: dict[tuple[str, str], Any] = {}  # (source, type) -> its counter
        self._other: Any = None  # the counter of what comes past the cap
        self._children: dict[tuple[str, str], Any] = {}  # (function, outcome) -> counter
        self._timers: dict[str, Any] = {}  # function -> its histogram
        # Children of the hot path's counters, looked up once: `labels()` costs
        # more than the increment.
        self.rejected_webhook = self.rejected.labels("webhook")
        self._answers: dict[int, Any] = {}  # HTTP status -> its webhook counter
        self._ways: dict[str, tuple[Any, Any]] = {}  # via -> (ingested, duplicate)

    def webhook_answer(self, status: int) -> None:
        """One answer of the webhook's, counted by its HTTP status."""
        child = self._answers.get(status)
        if child is None:
            child = self._answers[status] = self.webhook_requests.labels(str(status))
        child.inc()

    def ingested(self, via: str, accepted: int, duplicates: int) -> None:
        """Events logged and duplicates ignored, by the way they came in."""
        pair = self._ways.get(via)
        if pair is None:
            pair = self._ways[via] = (self.events.labels(via), self.duplicates.labels(via))
        if accepted:
            pair[0].inc(accepted)
        if duplicates:
            pair[1].inc(duplicates)

    def observe_delivery(
        self, function: str, outcome: str, result: Result, delivery: Delivery | None = None
    ) -> None:
        """A settled attempt: counted by outcome, and timed from when it started."""
        key = (function, outcome)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.deliveries.labels(function, outcome)
        child.inc()
        timer = self._timers.get(function)
        if timer is None:
            timer = self._timers[function] = self.durations.labels(function)
        timer.observe(attempt_seconds(result))

    def event_accepted(self, source: str, type_: str) -> None:
        pair = (source[:_LABEL_CHARS], type_[:_LABEL_CHARS])
        child = self._pairs.get(pair)
        if child is None:
            if len(self._pairs) < EVENT_LABEL_SETS:
                child = self._pairs[pair] = self.accepted.labels(*pair)
            else:
                if self._other is None:
                    self._other = self.accepted.labels("other", "other")
                child = self._other
        child.inc()

    def render(self, live: Live | None = None) -> bytes:
        """The exposition text: the counters, and the gauges of `live`."""
        self._live.live = live
        try:
            return generate_latest(self.registry)
        finally:
            self._live.live = None


class _LiveCollector:
    """Gauges of a `Live` read just before the scrape; nothing between scrapes."""

    def __init__(self) -> None:
        self.live: Live | None = None

    def describe(self) -> list[Metric]:
        return []  # names vary with what is deployed; nothing to check at register

    def collect(self) -> Iterator[Metric]:
        live = self.live
        if live is None:
            return
        yield from _subscriber_metrics(live)
        yield from _provider_metrics(live)
        size = GaugeMetricFamily("veba_log_size_bytes", "The event log's database file")
        size.add_metric([], live.size.bytes)
        wal = GaugeMetricFamily(
            "veba_log_wal_size_bytes", "The event log's write-ahead log, not yet checkpointed"
        )
        wal.add_metric([], live.size.wal_bytes)
        yield from (size, wal)


def _subscriber_metrics(live: Live) -> Iterator[Metric]:
    in_flight = GaugeMetricFamily(
        "veba_attempts_in_flight", "Delivery attempts under way", labels=["function"]
    )
    backlog = GaugeMetricFamily(
        "veba_delivery_backlog",
        "Deliveries still to be made (pending or leased), from the log",
        labels=["function"],
    )
    lag = GaugeMetricFamily(
        "veba_delivery_lag_seconds",
        "Age of the oldest delivery still to be made (0 when none), from the log",
        labels=["function"],
    )
    dead = GaugeMetricFamily(
        "veba_dead_letters",
        "Deliveries in the dead-letter queue, from the log",
        labels=["function"],
    )
    # Removed functions keep their dead letters: they count too, so the gauges
    # add up to the log's totals.
    names = {s.name for s in live.subscribers} | set(live.backlog)
    workers = GaugeMetricFamily(
        "veba_function_workers", "A function's workers, running or starting", labels=["function"]
    )
    bounds = GaugeMetricFamily(
        "veba_function_workers_bound",
        "The fewest and most workers autoscaling keeps a function between",
        labels=["function", "bound"],
    )
    scaled = CounterMetricFamily(
        "veba_function_scaling",
        "Autoscaling decisions: up (workers started for demand) or down (idle ones retired)",
        labels=["function", "direction"],
    )
    for s in live.subscribers:
        in_flight.add_metric([s.name], s.in_flight)
        if s.scaling:
            workers.add_metric([s.name], s.scaling.get("workers", 0))
            bounds.add_metric([s.name, "min"], s.scaling.get("min_workers", 0))
            bounds.add_metric([s.name, "max"], s.scaling.get("max_workers", 0))
            scaled.add_metric([s.name, "up"], s.scaling.get("scale_ups", 0))
            scaled.add_metric([s.name, "down"], s.scaling.get("scale_downs", 0))
    yield from (workers, bounds, scaled)
    for name in sorted(names):
        queue = live.backlog.get(name, Backlog())
        backlog.add_metric([name], queue.open)
        lag.add_metric([name], queue.lag(live.now))
        dead.add_metric([name], queue.dead)
    yield from (in_flight, backlog, lag, dead)


def _provider_metrics(live: Live) -> Iterator[Metric]:
    def gauge(name: str, text: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, text, labels=["provider"])

    info = GaugeMetricFamily(
        "veba_provider_info", "A provider of events (1)", labels=["provider", "type", "source"]
    )
    connected = gauge("veba_provider_connected", "1 when the provider is connected, else 0")
    last_key = gauge("veba_provider_last_key", "Key of the last vCenter event taken")
    age = gauge(
        "veba_provider_checkpoint_age_seconds", "Time since the provider's checkpoint was written"
    )
    lag = gauge("veba_provider_lag_events", "Events the vCenter has that are not taken yet")
    lag_seconds = gauge(
        "veba_provider_lag_seconds", "vCenter time between its newest event and the last taken"
    )
    rate = gauge("veba_simulator_events_per_second", "The simulator's set rate")
    reconnects = CounterMetricFamily(
        "veba_provider_reconnects", "Sessions logged in again after a drop", labels=["provider"]
    )
    events = CounterMetricFamily(
        "veba_provider_events", "Events the provider published", labels=["provider"]
    )
    for status in live.providers:
        name = str(status.get("name"))
        info.add_metric([name, str(status.get("type")), str(status.get("source") or "")], 1)
        connected.add_metric([name], 1 if status.get("connected") else 0)
        for family, key in ((last_key, "last_key"), (lag, "lag"), (lag_seconds, "lag_seconds")):
            if isinstance(status.get(key), int | float):
                family.add_metric([name], status[key])
        if isinstance(status.get("rate"), int | float):
            rate.add_metric([name], status["rate"])
        if name in live.checkpoints:
            age.add_metric([name], max(0.0, live.now - live.checkpoints[name]))
        reconnects.add_metric([name], int(status.get("reconnects") or 0))
        events.add_metric([name], int(status.get("events") or 0))
    yield from (info, connected, last_key, age, lag, lag_seconds, rate, reconnects, events)


def configure_logging(level: str = "INFO", *, json_logs: bool = False) -> None:
    """structlog for the appliance's own lines; stdlib loggers go the same way.

    Either kind of line about an event carries its `veba.tracing.EventScope`
    (``event_id``, ``function``, ``delivery_id``, ``attempt``): as keys of the
    JSON object with `json_logs`, else as ``key=value`` after the message.
    """
    from veba.tracing import ScopeFilter, add_event_scope

    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    # JSON says "message", not structlog's "event": here an event is a CloudEvent.
    renderers: list[structlog.types.Processor] = (
        [structlog.processors.EventRenamer("message"), structlog.processors.JSONRenderer()]
        if json_logs
        else [structlog.dev.ConsoleRenderer()]
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_event_scope,
            structlog.stdlib.add_log_level,
            stamp,
            *renderers,
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ScopeFilter())
    if json_logs:
        handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    *renderers,
                ],
                foreign_pre_chain=[
                    structlog.stdlib.add_logger_name,
                    structlog.stdlib.add_log_level,
                    stamp,
                    add_event_scope,
                ],
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s%(scope_text)s")
        )
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO), handlers=[handler], force=True
    )
