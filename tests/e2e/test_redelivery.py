"""Delivering again without surprises: `veba replay` takes only what the
function subscribes to (unless --force), counts first and asks (or wants
--yes), --dry-run sends nothing; `veba dlq redrive` of an unknown id fails
naming it; a redrive wakes RouterConfig processors as promptly as functions."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

import veba.dispatch
from tests.e2e.harness import (
    RECORDER,
    ApplianceProcess,
    read_jsonl,
    wait_for,
    write_function,
    write_stack,
)
from tests.support import ServedAppliance, free_port
from veba.config import load_config

SAMPLE = json.loads(
    (Path(__file__).parent.parent / "data" / "cloudevent-vm-powered-off.json").read_text()
)
STRUCTURED = {"Content-Type": "application/cloudevents+json"}


def test_replay_honours_the_subscription_counts_first_and_asks(
    appliance_factory: type, tmp_path: Path
) -> None:
    app: ApplianceProcess = appliance_factory.start("--no-simulator")
    with app.client() as http:
        for event_id, subject in [("on-0", "VmPoweredOnEvent"), ("on-1", "VmPoweredOnEvent"),
                                  ("task-0", "TaskEvent"), ("off-0", "VmPoweredOffEvent")]:  # fmt: skip
            r = http.post(
                "/webhook", json=dict(SAMPLE, id=event_id, subject=subject), headers=STRUCTURED
            )
            assert r.status_code == 200, r.text
    out = tmp_path / "on.jsonl"
    write_function(tmp_path / "fn" / "on", RECORDER)
    stack = write_stack(
        tmp_path / "fn" / "stack.yml",
        {"on": {"lang": "python3-http", "handler": "./on", "environment": {"OUT": str(out)},
                "annotations": {"topic": "VmPoweredOnEvent"}}},
    )  # fmt: skip
    app.cli("up", "-f", str(stack))

    # A dry run counts what the subscription takes and sends nothing.
    dry = app.cli("replay", "on", "--dry-run")
    assert "would replay 2 events that its subscription takes to on" in dry.stdout, dry.stdout
    # Not a terminal and no --yes: refused, saying how, nothing sent.
    refused = app.cli("replay", "on", check=False, input="")
    assert refused.returncode != 0
    assert "would replay 2 events" in refused.stderr + refused.stdout
    assert "add --yes" in refused.stderr + refused.stdout
    with app.client() as http:
        assert http.get("/api/v1/deliveries", params={"function": "on"}).json() == []

    assert "replayed: 2" in app.cli("replay", "on", "--yes", input="").stdout
    got = wait_for(lambda: len(read_jsonl(out)) >= 2 and read_jsonl(out), 60, "2 replayed events")
    assert sorted(e["id"] for e in got) == ["on-0", "on-1"]  # no TaskEvent

    # --force: the whole range, and it says so.
    forced = app.cli("replay", "on", "--force", "--yes", input="")
    assert "replayed: 4" in forced.stdout, forced.stdout
    wait_for(lambda: len(read_jsonl(out)) >= 6, 60, "4 more events")
    assert "task-0" in {e["id"] for e in read_jsonl(out)}
    dry = app.cli("replay", "on", "--force", "--dry-run")
    assert "would replay 4 events of the range, whatever its subscription (--force)" in dry.stdout


def test_redrive_of_an_unknown_id_fails_naming_it(appliance_factory: type) -> None:
    app: ApplianceProcess = appliance_factory.start("--no-simulator")
    unknown = app.cli("dlq", "redrive", "99999", check=False)
    assert unknown.returncode != 0
    said = unknown.stdout + unknown.stderr
    assert "99999" in said and "redriven: 0" not in said, said
    nothing = app.cli("dlq", "redrive", "--all")
    assert "nothing to redrive" in nothing.stdout, nothing.stdout


class Sink:
    """A Knative sink outside the appliance: refuses (400, not retried) until
    told to take events, then records when each arrived."""

    def __init__(self) -> None:
        self.accepting = False
        self.received: list[tuple[float, str]] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = 200 if sink.accepting else 400
                if sink.accepting:
                    sink.received.append((time.monotonic(), self.headers.get("ce-id", "")))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    yield s
    s.server.shutdown()
    s.server.server_close()


def test_a_redrive_over_the_api_wakes_a_routerconfig_processor(
    tmp_path: Path, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the dispatchers' idle poll made longer than the test, a redriven dead
    letter can reach the processor's sink only if the redrive wakes its dispatcher.
    (The appliance runs in this process, so the poll can be changed.)"""
    monkeypatch.setattr(veba.dispatch, "_IDLE_POLL", 3600.0)
    hook_port = free_port()
    config = {
        "apiVersion": "event-router.vmware.com/v1alpha1",
        "kind": "RouterConfig",
        "metadata": {"name": "redrive"},
        "eventProvider": {"type": "webhook", "name": "hook",
                          "webhook": {"bindAddress": f"127.0.0.1:{hook_port}", "path": "/webhook"}},
        "eventProcessor": {"type": "knative", "name": "sink",
                           "knative": {"encoding": "binary", "destination": {"uri": sink.url}}},
    }  # fmt: skip
    (tmp_path / "router.yaml").write_text(yaml.safe_dump(config))
    fields = load_config(tmp_path / "router.yaml").settings("127.0.0.1:0")
    fields.pop("listen", None)
    served = ServedAppliance(tmp_path / "data", **fields).start()
    try:
        ids = [f"dead-{i}" for i in range(4)]
        with served.http() as http:
            for event_id in ids:
                r = http.post(
                    f"http://127.0.0.1:{hook_port}/webhook",
                    json=dict(SAMPLE, id=event_id),
                    headers=STRUCTURED,
                )
                assert r.status_code == 200, r.text
            dead = wait_for(
                lambda: len(d := http.get("/api/v1/dlq").json()) == 4 and d, 120, "4 dead letters"
            )
            assert {d["subscription"] for d in dead} == {"knative:sink"}
            # Each dead letter lists its attempts, as `veba dlq list -o json` shows them.
            for letter in dead:
                assert letter["attempts"] >= 1
                assert [a["attempt"] for a in letter["history"]] == list(
                    range(1, letter["attempts"] + 1)
                ), letter
            sink.accepting = True
            for letter in dead:
                r = http.post("/api/v1/dlq/redrive", json={"ids": [letter["id"]]})
                assert r.status_code == 200 and r.json()["redriven"] == 1, r.text
                event_id = letter["event_id"]
                wait_for(
                    lambda e=event_id: any(i == e for _, i in sink.received),
                    60,
                    f"{event_id} again at the sink (the redrive woke its dispatcher)",
                )
            assert sorted(i for _, i in sink.received) == ids
            assert wait_for(lambda: http.get("/api/v1/dlq").json() == [], 30, "an empty DLQ")
    finally:
        served.stop()
