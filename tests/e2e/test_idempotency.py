"""`@idempotent` and `@latest_only` in real workers of a real appliance: the state
lives in the appliance's store, reached over its API with each pool's own token."""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.harness import (
    ApplianceProcess,
    read_jsonl,
    wait_for,
    write_function,
    write_stack,
)

# Appends one JSON line to the file named by an environment variable (O_APPEND:
# atomic for a line, so all workers can share the file), and counts lines.
HELPERS = """
import json, os, time

def append(name, record):
    fd = os.open(os.environ[name], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\\n").encode())
    finally:
        os.close(fd)

def count(name):
    try:
        with open(os.environ[name]) as f:
            return sum(1 for line in f if line.strip())
    except FileNotFoundError:
        return 0

def hold_until_all_arrived():
    # The side effect waits until every duplicate has reached a worker, so they
    # all find the key IN_PROGRESS: a condition, not a guess at timing.
    deadline = time.time() + 20
    while count("CALLS") < int(os.environ["EXPECT"]) and time.time() < deadline:
        time.sleep(0.01)
"""

# python3: handle(req), req the CloudEvent JSON. `handle` notes each call (in
# whichever worker it lands), then calls the idempotent side effect.
TICKET_PLAIN = (
    HELPERS
    + """
from veba.sdk import idempotent

@idempotent
def open_ticket(req):
    ce = json.loads(req)
    hold_until_all_arrived()
    append("EFFECTS", {"event": ce["id"], "pid": os.getpid()})
    return {"ticket": "T-%d" % os.getpid(), "event": ce["id"], "at": time.time()}

def handle(req):
    append("CALLS", {"pid": os.getpid()})
    return open_ticket(req)
"""
)

# python3-http: handle(event, context); the key is vCenter's event Key, so events
# with different CloudEvent ids for the same vCenter event count as one.
TICKET_HTTP = (
    HELPERS
    + """
from veba.sdk import idempotent

@idempotent(key="data.Key")
def open_ticket(event, context):
    ce = json.loads(event.body)
    hold_until_all_arrived()
    append("EFFECTS", {"event": ce["id"], "key": ce["data"]["Key"], "pid": os.getpid()})
    return {"statusCode": 201, "body": {"ticket": "T-%d" % os.getpid()}}

def handle(event, context):
    append("CALLS", {"pid": os.getpid(), "event": json.loads(event.body)["id"]})
    return open_ticket(event, context)
"""
)

# veba-cloudevent: handle(event, ctx), decorated directly.
NEWEST_NATIVE = (
    HELPERS
    + """
from veba.sdk import latest_only

@latest_only(key="data.Vm.Vm.Value")
def handle(event, ctx):
    append("RAN", {"vm": event.data["Vm"]["Vm"]["Value"], "key": event.data["Key"],
                   "pid": os.getpid()})
    return {"applied": event.data["Key"]}
"""
)

# Tries the store with its own token: its own namespace, and another function's.
PROBE = """
import json
from veba.sdk.state import StoreClient, StoreError, store

def handle(req):
    out = {}
    store().put("probe", {"ok": True})
    out["own"] = store().get("probe").value
    try:
        StoreClient(namespace=json.loads(req)["other"]).get("anything")
        out["other"] = "allowed"
    except StoreError as exc:
        out["other"] = str(exc)
    return out
"""

SOURCE = "https://vc01.example/sdk"


def cloudevent(key: int, vm: str = "vm-56", *, eid: str | None = None) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": eid or f"evt-{key}",
        "source": SOURCE,
        "type": "com.vmware.event.router/event",
        "subject": "VmPoweredOnEvent",
        "datacontenttype": "application/json",
        "data": {
            "Key": key,
            "CreatedTime": "2026-01-01T00:00:00Z",
            "Vm": {"Name": vm, "Vm": {"Type": "VirtualMachine", "Value": vm}},
        },
    }


def store_entries(app: ApplianceProcess, function: str, prefix: str) -> list[dict[str, Any]]:
    with app.client() as http:
        r = http.get(f"/api/v1/store/{function}", params={"prefix": prefix})
        r.raise_for_status()
        entries: list[dict[str, Any]] = r.json()["entries"]
        return entries


def log_texts(app: ApplianceProcess, function: str) -> list[str]:
    with app.client() as http:
        r = http.get("/system/logs", params={"name": function, "tail": 10_000})
        return [json.loads(line)["text"] for line in r.text.splitlines() if line.strip()]


def deliveries(app: ApplianceProcess, function: str) -> list[dict[str, Any]]:
    with app.client() as http:
        r = http.get("/api/v1/deliveries", params={"function": function, "limit": 1000})
        r.raise_for_status()
        found: list[dict[str, Any]] = r.json()
        return found


def test_five_concurrent_calls_of_one_event_run_the_side_effect_once(
    appliance_factory: type, tmp_path: Path
) -> None:
    app = appliance_factory.start("--no-simulator")
    calls, effects = tmp_path / "calls.jsonl", tmp_path / "effects.jsonl"
    write_function(tmp_path / "fn" / "ticket", TICKET_PLAIN)
    stack = write_stack(
        tmp_path / "fn" / "stack.yml",
        {
            "ticket": {
                "lang": "python3",
                "handler": "./ticket",
                "labels": {"com.openfaas.scale.min": "5"},
                "environment": {"CALLS": str(calls), "EFFECTS": str(effects), "EXPECT": "5"},
            }
        },
    )
    app.cli("up", "-f", str(stack))

    body = json.dumps(cloudevent(1001)).encode()

    def invoke(_: int) -> httpx.Response:
        with app.client() as http:
            return http.post(
                "/function/ticket",
                content=body,
                headers={"Content-Type": "application/cloudevents+json"},
            )

    with ThreadPoolExecutor(5) as pool:
        responses = list(pool.map(invoke, range(5)))

    assert [r.status_code for r in responses] == [200] * 5, [r.text for r in responses]
    results = [r.json() for r in responses]
    # The side effect happened once; every call answered with its stored result.
    [effect] = read_jsonl(effects)
    assert results == [results[0]] * 5
    assert results[0]["ticket"] == f"T-{effect['pid']}"
    # The five calls really ran side by side, in different worker processes.
    arrived = read_jsonl(calls)
    assert len(arrived) == 5
    assert len({c["pid"] for c in arrived}) >= 2
    [record] = store_entries(app, "ticket", "idempotent.")
    assert record["value"]["status"] == "COMPLETED"
    texts = log_texts(app, "ticket")
    assert sum("duplicate: returning the stored result" in t for t in texts) == 4

    # A sixth, later duplicate: the stored result at once, still one side effect.
    again = invoke(6)
    assert again.status_code == 200 and again.json() == results[0]
    assert len(read_jsonl(effects)) == 1


def test_webhook_events_sharing_an_idempotency_key_run_once(
    appliance_factory: type, tmp_path: Path
) -> None:
    """Five CloudEvents with different ids (so the log takes all five and delivers
    each) carry the same vCenter Key: `@idempotent(key="data.Key")` runs one."""
    app = appliance_factory.start("--no-simulator")
    calls, effects = tmp_path / "calls.jsonl", tmp_path / "effects.jsonl"
    write_function(tmp_path / "fn" / "hook", TICKET_HTTP)
    stack = write_stack(
        tmp_path / "fn" / "stack.yml",
        {
            "hook": {
                "lang": "python3-http",
                "handler": "./hook",
                "annotations": {"topic": "VmPoweredOnEvent"},
                "labels": {"com.openfaas.scale.min": "5"},
                "environment": {"CALLS": str(calls), "EFFECTS": str(effects), "EXPECT": "5"},
            }
        },
    )
    app.cli("up", "-f", str(stack))

    batch = [cloudevent(2002, eid=f"resent-{i}") for i in range(5)]
    with app.client() as http:
        r = http.post(
            "/webhook",
            content=json.dumps(batch),
            headers={"Content-Type": "application/cloudevents-batch+json"},
        )
        assert r.status_code == 200 and r.json()["accepted"] == 5, r.text

    done = wait_for(
        lambda: (d := deliveries(app, "hook")) and all(x["status"] == "delivered" for x in d) and d,
        60,
        "five deliveries",
    )
    assert len(done) == 5
    assert {d["last_status"] for d in done} == {201}  # the stored status, for all five
    assert all(d["attempts"] == 1 for d in done)
    [effect] = read_jsonl(effects)
    assert effect["key"] == 2002
    assert {c["event"] for c in read_jsonl(calls)} == {e["id"] for e in batch}
    assert len({c["pid"] for c in read_jsonl(calls)}) >= 2
    texts = log_texts(app, "hook")
    assert sum("duplicate: returning the stored result" in t for t in texts) == 4


def _post_and_wait(app: ApplianceProcess, event: dict[str, Any]) -> dict[str, Any]:
    with app.client() as http:
        r = http.post(
            "/webhook", json=event, headers={"Content-Type": "application/cloudevents+json"}
        )
        assert r.status_code == 200 and r.json()["accepted"] == 1, r.text

        def delivered() -> dict[str, Any] | None:
            got = http.get(f"/api/v1/events/{event['id']}")
            if got.status_code != 200:
                return None
            ds = got.json()["deliveries"]
            return ds[0] if ds and ds[0]["status"] == "delivered" else None

        return wait_for(delivered, 30, f"delivery of {event['id']}")


def test_latest_only_runs_only_events_newer_than_the_last_seen(
    appliance_factory: type, tmp_path: Path
) -> None:
    app = appliance_factory.start("--no-simulator")
    ran = tmp_path / "ran.jsonl"
    write_function(tmp_path / "fn" / "newest", NEWEST_NATIVE)
    stack = write_stack(
        tmp_path / "fn" / "stack.yml",
        {
            "newest": {
                "lang": "veba-cloudevent",
                "handler": "./newest",
                "annotations": {"topic": "VmPoweredOnEvent"},
                "labels": {"com.openfaas.scale.min": "4"},
                "environment": {"RAN": str(ran)},
            }
        },
    )
    app.cli("up", "-f", str(stack))

    # One VM's events arrive out of Key order (as after a reconnect, or from two
    # sources); another VM's lower Keys are its own business.
    arrivals = [(10, "vm-1"), (12, "vm-1"), (11, "vm-1"), (13, "vm-1"), (5, "vm-2"), (9, "vm-1")]
    arrivals += [(14, "vm-1"), (4, "vm-2"), (6, "vm-2")]
    outcomes = {}
    for key, vm in arrivals:
        outcomes[(key, vm)] = _post_and_wait(app, cloudevent(key, vm, eid=f"{vm}-{key}"))

    got = [(line["key"], line["vm"]) for line in read_jsonl(ran)]
    assert got == [(10, "vm-1"), (12, "vm-1"), (13, "vm-1"), (5, "vm-2"), (14, "vm-1"), (6, "vm-2")]
    # A dropped event is a delivered one (200), not a failure to retry.
    for skipped in [(11, "vm-1"), (9, "vm-1"), (4, "vm-2")]:
        assert outcomes[skipped]["last_status"] == 200
        assert outcomes[skipped]["attempts"] == 1
    texts = log_texts(app, "newest")
    assert any("skipped: 11 is not newer than 12 (event vm-1-12) for vm-1" in t for t in texts)
    assert any("skipped: 4 is not newer than 5 (event vm-2-5) for vm-2" in t for t in texts)
    marks = {
        e["value"]["key"]: e["value"]["order"] for e in store_entries(app, "newest", "latest.")
    }
    assert marks == {"vm-1": 14, "vm-2": 6}

    # Many events of one VM at once, in random Key order, over four workers: the
    # watermark is moved by compare-and-set, so it ends at the newest and no event
    # runs twice.
    keys = list(range(100, 140))
    random.Random(5).shuffle(keys)
    batch = [cloudevent(k, "vm-3", eid=f"vm-3-{k}") for k in keys]
    with app.client() as http:
        r = http.post(
            "/webhook",
            content=json.dumps(batch),
            headers={"Content-Type": "application/cloudevents-batch+json"},
        )
        assert r.status_code == 200 and r.json()["accepted"] == len(keys)
    wait_for(
        lambda: (
            sum(d["status"] == "delivered" for d in deliveries(app, "newest"))
            == len(arrivals) + len(keys)
        ),
        60,
        "the burst delivered",
    )
    burst = [line["key"] for line in read_jsonl(ran) if line["vm"] == "vm-3"]
    assert 139 in burst
    assert len(burst) == len(set(burst)) < len(keys)
    marks = {
        e["value"]["key"]: e["value"]["order"] for e in store_entries(app, "newest", "latest.")
    }
    assert marks["vm-3"] == 139


def test_a_functions_store_token_opens_its_own_namespace_only(
    appliance_factory: type, tmp_path: Path
) -> None:
    app = appliance_factory.start("--no-simulator")
    for name in ("probe", "other"):
        write_function(tmp_path / "fn" / name, PROBE)
    stack = write_stack(
        tmp_path / "fn" / "stack.yml",
        {name: {"lang": "python3", "handler": f"./{name}"} for name in ("probe", "other")},
    )
    app.cli("up", "-f", str(stack))
    with app.client() as http:
        r = http.post("/function/probe", json={"other": "other"})
        assert r.status_code == 200, r.text
        answer = r.json()
    assert answer["own"] == {"ok": True}
    assert "403" in answer["other"] and "'probe'" in answer["other"]
    assert [e["key"] for e in store_entries(app, "probe", "")] == ["probe"]
    assert store_entries(app, "other", "") == []
    with app.client() as http:
        assert http.get("/api/v1/store/probe/probe").status_code == 200
    assert httpx.get(f"{app.url}/api/v1/store/probe/probe").status_code == 401

    # Removing a function drops its namespace.
    app.cli("remove", "other")
    app.cli("remove", "probe")
    assert store_entries(app, "probe", "") == []
