"""What `/metrics`, `/api/v1/overview` and `/stats` say, held against the log.

Counters are kept as things happen and gauges read from the log at scrape
time; after a thousand events through two functions, one failing, every
figure must equal what the log itself counts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import ApplianceProcess, wait_for, write_function, write_stack
from tests.support import ServedAppliance, free_port
from veba.providers.simulator import SimulatorProvider

SAMPLE = json.loads(
    (Path(__file__).parent.parent / "data" / "cloudevent-vm-powered-off.json").read_text()
)
BATCH = {"Content-Type": "application/cloudevents-batch+json"}
STRUCTURED = {"Content-Type": "application/cloudevents+json"}

OK = """
def handle(event, context):
    return {"statusCode": 200, "body": "ok"}
"""
# Fails every tenth event (by the number in its id), on every attempt.
FLAKY = """
import json

def handle(event, context):
    n = int(json.loads(event.body)["id"].split("-")[1])
    if n % 10 == 0:
        raise RuntimeError(f"every tenth event fails: {n}")
    return {"statusCode": 200, "body": "ok"}
"""
# Holds every delivery until the file $GO exists.
GATE = """
import os, time

def handle(event, context):
    while not os.path.exists(os.environ["GO"]):
        time.sleep(0.05)
    return {"statusCode": 200, "body": "ok"}
"""


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(http: httpx.Client) -> Samples:
    response = http.get("/metrics")
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def deploy(
    app: ApplianceProcess, tmp_path: Path, functions: dict[str, tuple[str, dict[str, Any]]]
) -> None:
    stack = {}
    for name, (source, fields) in functions.items():
        write_function(tmp_path / "fn" / name, source)
        stack[name] = {"lang": "python3-http", "handler": f"./{name}", **fields}
    app.cli("up", "-f", str(write_stack(tmp_path / "fn" / "stack.yml", stack)))


def events(first: int, count: int, subject: str = "VmPoweredOnEvent") -> list[dict[str, Any]]:
    return [dict(SAMPLE, id=f"e-{n}", subject=subject) for n in range(first, first + count)]


def test_after_a_thousand_events_the_metrics_equal_the_logs_own_counts(
    appliance_factory: type, tmp_path: Path
) -> None:
    app = appliance_factory.start("--no-simulator")
    fast_failure = {"retry": 1, "backoffDelay": "PT0.01S", "jitter": 0}
    deploy(
        app,
        tmp_path,
        {
            "ok": (OK, {"annotations": {"topic": "VmPoweredOnEvent"}}),
            "flaky": (
                FLAKY,
                {"annotations": {"topic": "VmPoweredOnEvent"}, "delivery": fast_failure},
            ),
        },
    )
    with app.client() as http:
        for first in range(0, 1000, 100):
            r = http.post("/webhook", content=json.dumps(events(first, 100)), headers=BATCH)
            assert r.status_code == 200 and r.json()["accepted"] == 100, r.text

        def settled() -> dict[str, dict[str, int]] | None:
            counts: dict[str, dict[str, int]] = http.get("/api/v1/status").json()["deliveries"]
            done = all(
                sum(counts.get(fn, {}).get(s, 0) for s in ("delivered", "dead")) == 1000
                for fn in ("ok", "flaky")
            )
            return counts if done else None

        counts = wait_for(settled, 120, "all 2,000 deliveries to settle")
        samples = scrape(http)
        logged = http.get("/api/v1/events", params={"limit": 5000}).json()
        dead_letters = http.get("/api/v1/dlq", params={"limit": 5000}).json()

        def overview_with_rates() -> dict | None:
            # The rate leaves out the second under way: attempts that all settled
            # within it show only once it has ended.
            answer: dict = http.get("/api/v1/overview").json()
            return answer if all(f["rate"] > 0 for f in answer["functions"]) else None

        overview = wait_for(overview_with_rates, 10, "both functions' rates")

    # The deliveries counted equal the log's, function by function.
    assert counts["ok"] == {"delivered": 1000}
    assert counts["flaky"] == {"delivered": 900, "dead": 100}
    for fn, statuses in counts.items():
        for outcome, n in statuses.items():
            assert value(samples, "veba_deliveries_total", function=fn, outcome=outcome) == n
    assert value(samples, "veba_deliveries_total", function="flaky", outcome="retried") == 100
    assert value(samples, "veba_deliveries_total", function="ok", outcome="retried") is None
    # Every attempt was timed: 1,000 for ok, 1,100 (the tenth ones twice) for flaky.
    assert value(samples, "veba_delivery_attempt_duration_seconds_count", function="ok") == 1000
    assert value(samples, "veba_delivery_attempt_duration_seconds_count", function="flaky") == 1100
    # Events: as many counted, by source and type as by way in, as the log holds.
    assert len(logged) == 1000
    assert total(samples, "veba_events_accepted_total") == 1000
    assert (
        value(samples, "veba_events_accepted_total", source=SAMPLE["source"], type=SAMPLE["type"])
        == 1000
    )
    assert value(samples, "veba_events_ingested_total", via="webhook") == 1000
    # Gauges read from the log: the DLQ's size exactly, nothing open.
    assert len(dead_letters) == 100
    assert value(samples, "veba_dead_letters", function="flaky") == 100
    assert total(samples, "veba_dead_letters") == len(dead_letters)
    for fn in ("ok", "flaky"):
        assert value(samples, "veba_delivery_backlog", function=fn) == 0
        assert value(samples, "veba_delivery_lag_seconds", function=fn) == 0
        assert value(samples, "veba_attempts_in_flight", function=fn) == 0
    assert (value(samples, "veba_log_size_bytes") or 0) > 0
    assert value(samples, "veba_webhook_requests_total", code="200") == 10

    # The overview tells the same story.
    series = overview["series"]
    assert series["step"] == 10 and len(series["events"]) == 360
    assert series["end"] >= overview["now"] > overview["started"]
    assert sum(series["events"]) == 1000
    assert {k: sum(v) for k, v in series["deliveries"].items()} == {
        "delivered": 1900,
        "retried": 100,
        "dead": 100,
    }
    assert overview["dlq"] == {"total": 100}
    assert overview["log"]["size_bytes"] > 0
    assert overview["webhook"] == {"events": 1000, "requests": {"200": 10}}
    functions = {f["name"]: f for f in overview["functions"]}
    assert set(functions) == {"ok", "flaky"}
    ok, flaky = functions["ok"], functions["flaky"]
    assert (ok["attempts"], ok["errors"], ok["delivered"], ok["dead"]) == (1000, 0, 1000, 0)
    assert (flaky["attempts"], flaky["errors"], flaky["delivered"], flaky["dead"]) == (
        1100,
        200,
        900,
        100,
    )
    assert flaky["dlq"] == 100 and ok["dlq"] == 0
    for fn in (ok, flaky):
        assert fn["kind"] == "function" and fn["state"] == "ready" and fn["workers"] >= 1
        assert fn["paused"] is False and fn["backlog"] == 0 and fn["lag_seconds"] == 0
        assert 0 < fn["p50_ms"] <= fn["p99_ms"]
        assert fn["rate"] > 0 and fn["deployed"] <= overview["now"]
        assert fn["version"] and len(fn["version"]) == 16
    assert ok["last_error"] is None
    error = flaky["last_error"]
    assert "RuntimeError: every tenth event fails" in error["error"]
    assert int(error["event_id"].split("-")[1]) % 10 == 0
    # Every event that fails once fails for good: its delivery is a dead letter.
    assert error["delivery_id"] in {letter["id"] for letter in dead_letters}


def test_backlog_and_lag_rise_while_a_function_holds_its_deliveries_and_fall_when_drained(
    appliance_factory: type, tmp_path: Path
) -> None:
    app = appliance_factory.start("--no-simulator")
    go = tmp_path / "go"
    deploy(
        app,
        tmp_path,
        {"gate": (GATE, {"annotations": {"topic": "*"}, "environment": {"GO": str(go)}})},
    )
    with app.client() as http:
        r = http.post("/webhook", content=json.dumps(events(0, 20)), headers=BATCH)
        assert r.status_code == 200, r.text

        def gauges() -> tuple[float, float, float]:
            samples = scrape(http)
            return (
                value(samples, "veba_delivery_backlog", function="gate") or 0,
                value(samples, "veba_delivery_lag_seconds", function="gate") or 0,
                value(samples, "veba_attempts_in_flight", function="gate") or 0,
            )

        backlog, first_lag, _ = wait_for(
            lambda: (g := gauges())[2] > 0 and g, 30, "an attempt under way"
        )
        assert backlog == 20  # leased or pending, none done
        lag = wait_for(lambda: (g := gauges())[1] >= first_lag + 1 and g[1], 30, "the lag to grow")
        assert lag >= 1
        shown = {f["name"]: f for f in http.get("/api/v1/overview").json()["functions"]}["gate"]
        assert shown["backlog"] == 20 and shown["lag_seconds"] >= lag and shown["in_flight"] >= 1

        go.touch()
        wait_for(lambda: gauges() == (0, 0, 0), 60, "the backlog to drain")
        shown = {f["name"]: f for f in http.get("/api/v1/overview").json()["functions"]}["gate"]
        assert (shown["backlog"], shown["lag_seconds"], shown["delivered"]) == (0, 0, 20)


def test_webhook_answers_are_counted_by_status_on_both_listeners(tmp_path: Path) -> None:
    hook_port = free_port()
    served = ServedAppliance(
        tmp_path / "data",
        webhook_listen=f"127.0.0.1:{hook_port}",
        webhook_basic_auth=("hook", "Hook-Pass-1"),
        webhook_max_event=4096,
    ).start()
    try:
        own = f"http://127.0.0.1:{hook_port}/webhook"
        with served.http() as http:
            answers = [
                http.post("/webhook", json=SAMPLE, headers=STRUCTURED),  # 200
                http.post("/webhook", content=b"{", headers=STRUCTURED),  # 400: not JSON
                httpx.post(f"{served.url}/webhook", json=SAMPLE, headers=STRUCTURED),  # 401
                http.post(
                    "/webhook",
                    json=dict(SAMPLE, id="big", data={"x": "y" * 8000}),
                    headers=STRUCTURED,
                ),
                httpx.post(
                    own,
                    json=dict(SAMPLE, id="own"),
                    headers=STRUCTURED,
                    auth=("hook", "Hook-Pass-1"),
                ),
                httpx.post(own, json=SAMPLE, headers=STRUCTURED),  # 401 on its own listener
            ]
            assert [r.status_code for r in answers] == [200, 400, 401, 413, 200, 401]
            samples = scrape(http)
            assert http.get("/api/v1/overview").json()["webhook"]["requests"] == {
                "200": 2,
                "400": 1,
                "401": 2,
                "413": 1,
            }
            # /stats in VEBA's shape, on the main API too, behind the token.
            stats = http.get("/stats")
            assert stats.status_code == 200
            assert stats.json()["vmware.event.router.stats"]["webhook"]["events_total"] == 2
        assert httpx.get(f"{served.url}/stats").status_code == 401
        assert httpx.get(f"{served.url}/api/v1/overview").status_code == 401
        # The dashboard's page asks with the session cookie of /login.
        with httpx.Client(base_url=served.url) as browser:
            signed_in = browser.post("/login", data={"token": served.token, "next": "/docs"})
            assert signed_in.status_code == 303
            assert browser.get("/api/v1/overview").status_code == 200
    finally:
        served.stop()
    for code, n in (("200", 2), ("400", 1), ("401", 2), ("413", 1)):
        assert value(samples, "veba_webhook_requests_total", code=code) == n
    assert value(samples, "veba_events_rejected_total", via="webhook") == 1


def test_the_simulators_connection_key_checkpoint_and_rate_are_shown(tmp_path: Path) -> None:
    simulator = SimulatorProvider(rate=20.0, seed=1)
    served = ServedAppliance(tmp_path / "data", providers=[simulator]).start()
    try:
        with served.http() as http:

            def published() -> Samples | None:
                samples = scrape(http)
                return (
                    samples
                    if (value(samples, "veba_provider_last_key", provider="simulator") or 0) > 0
                    else None
                )

            samples = wait_for(published, 30, "the simulator's first events")
            (shown,) = http.get("/api/v1/overview").json()["providers"]
    finally:
        served.stop()
    assert value(samples, "veba_provider_connected", provider="simulator") == 1
    assert value(samples, "veba_simulator_events_per_second", provider="simulator") == 20
    assert value(samples, "veba_provider_reconnects_total", provider="simulator") == 0
    age = value(samples, "veba_provider_checkpoint_age_seconds", provider="simulator")
    assert age is not None and 0 <= age < 30
    assert (value(samples, "veba_provider_events_total", provider="simulator") or 0) > 0
    assert shown["name"] == "simulator" and shown["type"] == "simulator"
    assert shown["connected"] is True and shown["state"] == "connected"
    assert shown["rate"] == 20 and shown["last_key"] > 0 and shown["events"] > 0
    assert shown["checkpoint_age_seconds"] is not None
