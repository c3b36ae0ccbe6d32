"""The dashboard's figures kept in memory, and the metrics' own bounds."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from veba.eventlog.base import Backlog, Delivery, LogSize
from veba.events import Event
from veba.observability import EVENT_LABEL_SETS, Live, Metrics, Subscriber
from veba.targets.base import Result
from veba.telemetry import BUCKETS, STEP, Telemetry

T0 = 1_733_440_000.0  # a bucket boundary


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def delivery(n: int) -> Delivery:
    event = Event({"specversion": "1.0", "id": f"e-{n}", "source": "s", "type": "t"}, None)
    return Delivery(n, n, "fn", event, 1, T0)


OK = Result("ok", 200)


def test_series_put_events_and_outcomes_in_ten_second_buckets_over_an_hour() -> None:
    clock = Clock()
    telemetry = Telemetry(clock)
    telemetry.logged(3)
    telemetry.attempt("fn", "delivered", OK, delivery(1))
    clock.now += STEP  # the next bucket
    telemetry.logged(2)
    telemetry.attempt("fn", "retried", Result("error", 500, "boom"), delivery(2))
    series = telemetry.series(clock.now)
    assert series["step"] == STEP and series["end"] == T0 + 2 * STEP
    assert len(series["events"]) == BUCKETS and series["events"][-2:] == [3, 2]
    assert series["deliveries"]["delivered"][-2:] == [1, 0]
    assert series["deliveries"]["retried"][-2:] == [0, 1]
    # An hour on, the first buckets have left the window; slots are reused cleanly.
    clock.now = T0 + BUCKETS * STEP
    telemetry.logged(1)
    later = telemetry.series(clock.now)
    assert sum(later["events"]) == 1 + 2 and later["events"][-1] == 1
    assert telemetry.events_total == 6


def test_a_function_keeps_percentiles_rate_totals_and_its_last_error() -> None:
    clock = Clock()
    telemetry = Telemetry(clock)
    assert telemetry.function("fn").percentile(0.5) is None
    for n in range(1, 101):  # 1..100 ms, one attempt every 0.5 s
        outcome = "dead" if n % 10 == 0 else "delivered"
        started = clock.now - n / 1000  # it took n ms
        result = (
            Result("error", 500, f"boom {n}", started)
            if outcome == "dead"
            else Result("ok", 200, None, started)
        )
        telemetry.attempt("fn", outcome, result, delivery(n))
        clock.now += 0.5
    fn = telemetry.function("fn")
    assert fn.percentile(0.5) == pytest.approx(0.05) and fn.percentile(0.99) == pytest.approx(0.099)
    assert (fn.attempts, fn.errors, fn.delivered, fn.dead) == (100, 10, 90, 10)
    assert fn.rate(clock.now) == 100 / 60  # all 100 came within the last minute
    assert fn.last_error is not None
    assert (fn.last_error.error, fn.last_error.event_id, fn.last_error.delivery_id) == (
        "boom 100",
        "e-100",
        100,
    )
    clock.now += 120
    assert telemetry.function("fn").rate(clock.now) == 0.0


def test_the_event_label_sets_are_capped_and_the_rest_count_as_other() -> None:
    metrics = Metrics()
    for n in range(EVENT_LABEL_SETS + 5):
        metrics.event_accepted("webhook-client", f"type-{n}")
    metrics.event_accepted("webhook-client", "type-0")  # known: still its own
    samples = {
        (s.labels["source"], s.labels["type"]): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        if family.name == "veba_events_accepted"
        for s in family.samples
        if s.name == "veba_events_accepted_total"
    }
    assert len(samples) == EVENT_LABEL_SETS + 1
    assert samples[("other", "other")] == 5 and samples[("webhook-client", "type-0")] == 2
    assert sum(samples.values()) == EVENT_LABEL_SETS + 6


def test_live_gauges_cover_removed_functions_dead_letters_and_are_gone_between_scrapes() -> None:
    metrics = Metrics()
    live = Live(
        now=T0 + 30,
        subscribers=[Subscriber("fn", "function", 2)],
        backlog={"fn": Backlog(5, T0, 1), "gone": Backlog(0, None, 3)},
        size=LogSize(4096, 512),
    )
    found = {
        (s.name, tuple(s.labels.values())): s.value
        for family in text_string_to_metric_families(metrics.render(live).decode())
        for s in family.samples
    }
    assert found[("veba_attempts_in_flight", ("fn",))] == 2
    assert found[("veba_delivery_backlog", ("fn",))] == 5
    assert found[("veba_delivery_lag_seconds", ("fn",))] == 30
    assert found[("veba_dead_letters", ("gone",))] == 3
    assert found[("veba_delivery_lag_seconds", ("gone",))] == 0
    assert found[("veba_log_size_bytes", ())] == 4096
    assert b"veba_delivery_backlog" not in metrics.render()
