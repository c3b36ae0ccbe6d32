"""A user's first run: serve, deploy a VEBA-style function with `veba up`, see
simulator and webhook events arrive in VEBA's shape; other types never arrive."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.harness import RECORDER, read_jsonl, wait_for, write_function, write_stack

VEBA_KEYS = {
    "Key", "ChainId", "CreatedTime", "UserName", "Datacenter", "ComputeResource",
    "Host", "Vm", "Ds", "Net", "Dvs", "FullFormattedMessage", "ChangeTag",
}  # fmt: skip
SAMPLE = Path(__file__).parent.parent / "data" / "cloudevent-vm-powered-off.json"


def test_simulator_and_webhook_events_reach_a_subscribed_function(
    appliance_factory: type, tmp_path: Path
) -> None:
    out = tmp_path / "received.jsonl"
    app = appliance_factory.start("--simulator-rate", "40")
    write_function(tmp_path / "fn" / "power", RECORDER)
    stack = write_stack(
        tmp_path / "fn" / "stack.yml",
        {
            "power": {
                "lang": "python3-http",
                "handler": "./power",
                "annotations": {"topic": "VmPoweredOnEvent,VmPoweredOffEvent"},
                "environment": {"OUT": str(out)},
            }
        },
    )
    app.cli("up", "-f", str(stack))

    sample = json.loads(SAMPLE.read_text())
    sample["id"] = "webhook-powered-off-1"
    other = dict(sample, id="webhook-logout-1", subject="UserLogoutSessionEvent")
    with app.client() as http:
        for event in (sample, other):
            r = http.post(
                "/webhook", json=event, headers={"Content-Type": "application/cloudevents+json"}
            )
            assert r.status_code == 200, r.text

    def arrived() -> list[dict]:
        got = read_jsonl(out)
        sim = [e for e in got if e["source"] != sample["source"]]
        ids = {e["id"] for e in got}
        subjects = {e["subject"] for e in sim}
        return got if "webhook-powered-off-1" in ids and len(subjects) == 2 else []

    got = wait_for(arrived, 120, "simulator power-on and power-off events plus the webhook event")
    assert {e["subject"] for e in got} == {"VmPoweredOnEvent", "VmPoweredOffEvent"}
    assert "webhook-logout-1" not in {e["id"] for e in got}
    for e in got:
        assert e["type"] == "com.vmware.event.router/event"
        assert set(e["data"]) >= VEBA_KEYS, sorted(VEBA_KEYS - set(e["data"]))
        assert set(e["data"]["Vm"]) == {"Name", "Vm"}
        assert e["data"]["Vm"]["Vm"]["Type"] == "VirtualMachine"
    webhook = next(e for e in got if e["id"] == "webhook-powered-off-1")
    assert webhook["data"] == sample["data"]

    # The log saw the unsubscribed event, with no delivery for it.
    with app.client() as http:
        shown = http.get("/api/v1/events/webhook-logout-1").json()
    assert shown["event"]["subject"] == "UserLogoutSessionEvent"
    assert shown["deliveries"] == []


def test_new_up_invoke_round_trip(appliance_factory: type, tmp_path: Path) -> None:
    app = appliance_factory.start("--no-simulator")
    stack = tmp_path / "stack.yml"
    app.cli("new", "hello", "--lang", "python3", "--append", str(stack))
    handler = tmp_path / "hello" / "handler.py"
    handler.write_text("def handle(req):\n    return 'hello ' + req\n")
    app.cli("up", "-f", str(stack))
    assert app.cli("invoke", "hello", "--data", "vSphere").stdout.strip() == "hello vSphere"
    # A second `new` with the same name refuses and leaves the edit alone.
    again = app.cli("new", "hello", "--lang", "python3", "--append", str(stack), check=False)
    assert again.returncode != 0 and "refusing to overwrite" in again.stderr
    assert "hello ' + req" in handler.read_text()
