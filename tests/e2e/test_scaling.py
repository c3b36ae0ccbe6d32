"""Functions under load, through a real `veba serve`: one call limit on every path,
workers that scale with a backlog and back, scale to zero and back."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import RECORDER, ApplianceProcess, read_jsonl, wait_for, write_function
from tests.e2e.harness import write_stack as _write_stack

DATA = Path(__file__).parent.parent / "data"
SAMPLE = json.loads((DATA / "cloudevent-vm-powered-off.json").read_text())
BATCH = {"Content-Type": "application/cloudevents-batch+json"}
STRUCTURED = {"Content-Type": "application/cloudevents+json"}

# Sleeps $SLEEP seconds and appends when it ran ({"start", "end", "pid"}) to $OUT.
TIMED = """
import json, os, time

def handle(event, context):
    start = time.time()
    time.sleep(float(os.environ["SLEEP"]))
    line = json.dumps({"start": start, "end": time.time(), "pid": os.getpid()}) + "\\n"
    fd = os.open(os.environ["OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return {"statusCode": 200, "body": "done"}
"""


@pytest.fixture
def appliance(appliance_factory: Any) -> Iterator[ApplianceProcess]:
    yield appliance_factory.start("--no-simulator")


def deploy(app: ApplianceProcess, folder: Path, functions: dict[str, dict[str, Any]]) -> None:
    for spec in functions.values():
        spec.setdefault("lang", "python3-http")
    app.cli("up", "-f", str(_write_stack(folder / "stack.yml", functions)))


def most_at_once(runs: list[dict[str, Any]]) -> int:
    """The most runs that overlapped at any moment."""
    edges = sorted([(r["start"], 1) for r in runs] + [(r["end"], -1) for r in runs])
    now = most = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def concurrent_calls(app: ApplianceProcess, name: str, n: int) -> list[tuple[int, float]]:
    """n sync calls at once: (status, seconds) of each."""

    def call(_: int) -> tuple[int, float]:
        started = time.monotonic()
        with app.client() as http:
            r = http.post(f"/function/{name}", content=b"{}", timeout=60)
        return r.status_code, time.monotonic() - started

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(call, range(n)))


def function(app: ApplianceProcess, name: str) -> dict[str, Any]:
    with app.client() as http:
        info: dict[str, Any] = http.get(f"/api/v1/functions/{name}").json()
        return info


@pytest.mark.parametrize(
    "limit",
    [{"delivery": {"maxInflight": 2}}, {"environment": {"max_inflight": "2"}}],
    ids=["delivery.maxInflight", "environment.max_inflight"],
)
def test_sync_calls_over_the_limit_get_429_at_once_and_never_run_beyond_it(
    appliance: ApplianceProcess, tmp_path: Path, limit: dict[str, Any]
) -> None:
    out = tmp_path / "runs.jsonl"
    write_function(tmp_path / "limited", TIMED)
    spec: dict[str, Any] = {
        "handler": "./limited",
        "annotations": {"topic": "NoSuchEventHere"},
        "labels": {"com.openfaas.scale.min": "4"},
        "environment": {"OUT": str(out), "SLEEP": "1"},
    }
    spec["environment"].update(limit.get("environment", {}))
    spec.update({k: v for k, v in limit.items() if k != "environment"})
    deploy(appliance, tmp_path, {"limited": spec})
    assert function(appliance, "limited")["availableReplicas"] == 4
    answers = concurrent_calls(appliance, "limited", 10)
    ok = [took for s, took in answers if s == 200]
    busy = [took for s, took in answers if s == 429]
    assert len(ok) + len(busy) == 10 and len(ok) >= 2 and len(busy) >= 6, answers
    assert max(busy) < min(ok)  # refused at once, while the admitted calls still ran
    runs = wait_for(lambda: (r := read_jsonl(out)) and len(r) == len(ok) and r, 30, "the runs")
    assert most_at_once(runs) <= 2
    assert function(appliance, "limited")["limit"]["refused"] == len(busy)


def test_with_a_queue_timeout_sync_and_async_calls_wait_and_share_the_limit(
    appliance: ApplianceProcess, tmp_path: Path
) -> None:
    out = tmp_path / "runs.jsonl"
    write_function(tmp_path / "queued", TIMED)
    spec = {
        "handler": "./queued",
        "annotations": {"topic": "NoSuchEventHere"},
        "labels": {"com.openfaas.scale.min": "4"},
        "environment": {"OUT": str(out), "SLEEP": "0.4"},
        "delivery": {"maxInflight": 2, "queueTimeout": "60s"},
    }
    deploy(appliance, tmp_path, {"queued": spec})
    with appliance.client() as http:
        for _ in range(4):
            assert http.post("/async-function/queued", content=b"{}").status_code == 202
    answers = concurrent_calls(appliance, "queued", 10)
    assert [s for s, _ in answers] == [200] * 10
    runs = wait_for(lambda: (r := read_jsonl(out)) and len(r) == 14 and r, 60, "14 runs")
    assert most_at_once(runs) <= 2


def test_workers_scale_with_a_backlog_drain_it_5x_faster_and_return_to_one_when_idle(
    appliance: ApplianceProcess, tmp_path: Path
) -> None:
    """Two functions get the same 400 events: one may scale to 8 workers, one keeps 1.
    When the first has drained them all, the second has done at most a fifth."""
    events = 400
    write_function(tmp_path / "sleeper", TIMED)
    common = {"handler": "./sleeper", "annotations": {"topic": "VmPoweredOffEvent"}}
    deploy(
        appliance,
        tmp_path,
        {
            "scaled": {
                **common,
                "labels": {"com.openfaas.scale.min": "1", "com.openfaas.scale.max": "8"},
                "annotations": {**common["annotations"], "veba.scale.idle": "1s"},
                "environment": {"OUT": str(tmp_path / "scaled.jsonl"), "SLEEP": "0.2"},
            },
            "single": {
                **common,
                "labels": {"com.openfaas.scale.max": "1"},
                "environment": {"OUT": str(tmp_path / "single.jsonl"), "SLEEP": "0.2"},
            },
        },
    )
    batch = [dict(SAMPLE, id=f"backlog-{i}") for i in range(events)]
    with appliance.client() as http:
        r = http.post("/webhook", content=json.dumps(batch), headers=BATCH)
        assert r.status_code == 200, r.text
    wait_for(lambda: function(appliance, "scaled")["delivered"] == events, 60, "a drained backlog")
    single = function(appliance, "single")["delivered"]
    assert single * 5 <= events, f"with 1 worker {single} of {events} were done meanwhile"
    scaled = read_jsonl(tmp_path / "scaled.jsonl")
    assert len({r["pid"] for r in scaled}) == 8  # it did grow to its maximum
    info = wait_for(
        lambda: (i := function(appliance, "scaled"))["replicas"] == 1 and i, 30, "one worker"
    )
    assert info["availableReplicas"] == 1 and info["scale"] == "1-8"
    assert info["lastScale"]["to"] == 1 and "idle" in info["lastScale"]["why"]
    listed = appliance.cli("list", "-o", "json").stdout
    assert {"name": "scaled", "replicas": 1, "scale": "1-8"}.items() <= next(
        f for f in json.loads(listed) if f["name"] == "scaled"
    ).items()
    logs = appliance.cli("logs", "scaled").stdout
    assert "scaled from 1 to" in logs and "to 1 worker(s): idle for 1s" in logs
    with appliance.client() as http:
        text = http.get("/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("veba_function_workers", (("function", "scaled"),))] == 1
    assert samples[("veba_function_workers_bound", (("bound", "max"), ("function", "scaled")))] == 8
    ups = samples[("veba_function_scaling_total", (("direction", "up"), ("function", "scaled")))]
    downs = samples[
        ("veba_function_scaling_total", (("direction", "down"), ("function", "scaled")))
    ]
    assert ups >= 1 and downs >= 1  # decisions: grew to 8, went back to 1


def test_an_idle_function_that_scales_to_zero_has_no_process_and_its_next_event_arrives(
    appliance: ApplianceProcess, tmp_path: Path
) -> None:
    out = tmp_path / "received.jsonl"
    write_function(tmp_path / "rec", RECORDER)
    deploy(
        appliance,
        tmp_path,
        {
            "rec": {
                "handler": "./rec",
                "labels": {"com.openfaas.scale.zero": "true"},
                "annotations": {"topic": "VmPoweredOffEvent", "veba.scale.idle": "0.5s"},
                "environment": {"OUT": str(out)},
            }
        },
    )
    wait_for(lambda: function(appliance, "rec")["availableReplicas"] == 0, 30, "no worker")
    with appliance.client() as http:
        status = http.get("/api/v1/status").json()
        assert status["workers"]["rec"]["workers"] == 0
        r = http.post("/webhook", json=dict(SAMPLE, id="wakes-it"), headers=STRUCTURED)
        assert r.status_code == 200, r.text
    received = wait_for(lambda: read_jsonl(out), 60, "the event at the woken function")
    assert [e["id"] for e in received] == ["wakes-it"]
    assert function(appliance, "rec")["availableReplicas"] == 1
