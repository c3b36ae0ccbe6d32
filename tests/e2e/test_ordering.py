"""Per-key ordering: each VM's events reach the function in Key order."""

from __future__ import annotations

import json
import random
from pathlib import Path

from tests.e2e.harness import read_jsonl, wait_for, write_function, write_stack

SLOW_RECORDER = """
import json, os, random, time

def handle(req):
    ce = json.loads(req)
    fd = os.open(os.environ["OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        line = {"vm": ce["data"]["Vm"]["Vm"]["Value"], "key": ce["data"]["Key"], "pid": os.getpid()}
        os.write(fd, (json.dumps(line) + "\\n").encode())
    finally:
        os.close(fd)
    time.sleep(random.uniform(0, 0.005))
    return "ok"
"""


def test_events_of_one_vm_arrive_in_key_order(appliance_factory: type, tmp_path: Path) -> None:
    app = appliance_factory.start("--no-simulator")
    out = tmp_path / "order.jsonl"
    write_function(tmp_path / "fn" / "ordered", SLOW_RECORDER)
    stack = write_stack(
        tmp_path / "fn" / "stack.yml",
        {
            "ordered": {
                "lang": "python3",
                "handler": "./ordered",
                "annotations": {"topic": "VmReconfiguredEvent"},
                "labels": {"com.openfaas.scale.min": "2"},
                "environment": {"OUT": str(out)},
                "delivery": {"orderingKey": "data.Vm.Vm.Value", "maxInflight": 8},
            }
        },
    )
    app.cli("up", "-f", str(stack))
    rng = random.Random(7)
    vms = [f"vm-{100 + i}" for i in range(10)]
    events = []
    for key in range(1, 1001):
        vm = rng.choice(vms)
        events.append(
            {
                "specversion": "1.0",
                "id": f"order-{key}",
                "source": "https://vc.example/sdk",
                "type": "com.vmware.event.router/event",
                "subject": "VmReconfiguredEvent",
                "datacontenttype": "application/json",
                "data": {
                    "Key": key,
                    "Vm": {"Name": vm, "Vm": {"Type": "VirtualMachine", "Value": vm}},
                },
            }
        )
    with app.client() as http:
        for i in range(0, len(events), 100):
            r = http.post(
                "/webhook",
                content=json.dumps(events[i : i + 100]),
                headers={"Content-Type": "application/cloudevents-batch+json"},
            )
            assert r.status_code == 200, r.text

    got = wait_for(
        lambda: (lines := read_jsonl(out)) and len(lines) >= 1000 and lines, 180, "1,000 deliveries"
    )
    assert len(got) == 1000
    for vm in vms:
        keys = [line["key"] for line in got if line["vm"] == vm]
        assert keys == sorted(keys), f"{vm} out of order: {keys[:20]}"
    # Different VMs ran side by side, in both workers.
    assert len({line["pid"] for line in got}) == 2
