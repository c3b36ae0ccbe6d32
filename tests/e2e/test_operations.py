"""Day-two operations: replay from the log, async invocation with a callback,
an event's delivery history, metrics."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.e2e.harness import RECORDER, read_jsonl, wait_for, write_function, write_stack

SAMPLE = Path(__file__).parent.parent / "data" / "cloudevent-vm-powered-off.json"
STRUCTURED = {"Content-Type": "application/cloudevents+json"}


def test_replay_redelivers_logged_events_by_subject(
    appliance_factory: type, tmp_path: Path
) -> None:
    app = appliance_factory.start("--no-simulator")
    sample = json.loads(SAMPLE.read_text())
    with app.client() as http:
        for i in range(3):
            http.post("/webhook", json=dict(sample, id=f"off-{i}"), headers=STRUCTURED)
        http.post(
            "/webhook", json=dict(sample, id="on-0", subject="VmPoweredOnEvent"), headers=STRUCTURED
        )
    # Deployed after the events: it has none until they are replayed to it.
    out = tmp_path / "late.jsonl"
    write_function(tmp_path / "fn" / "late", RECORDER)
    stack = write_stack(
        tmp_path / "fn" / "stack.yml",
        {"late": {"lang": "python3-http", "handler": "./late", "environment": {"OUT": str(out)},
                  "annotations": {"topic": "*"}}},
    )  # fmt: skip
    app.cli("up", "-f", str(stack))
    assert "replayed: 3" in app.cli("replay", "late", "--type", "VmPoweredOffEvent").stdout
    got = wait_for(lambda: len(read_jsonl(out)) >= 3 and read_jsonl(out), 60, "3 replayed events")
    assert sorted(e["id"] for e in got) == ["off-0", "off-1", "off-2"]

    shown = json.loads(app.cli("events", "show", "off-1").stdout)
    (delivery,) = shown["deliveries"]
    assert delivery["subscription"] == "late" and delivery["status"] == "delivered"
    listed = json.loads(app.cli("events", "list", "-o", "json").stdout)
    assert {r["event"]["id"] for r in listed} == {"off-0", "off-1", "off-2", "on-0"}

    with app.client() as http:
        metrics = http.get("/metrics").text
    assert 'veba_events_ingested_total{via="webhook"} 4.0' in metrics
    assert 'veba_deliveries_total{function="late",outcome="delivered"} 3.0' in metrics


def test_async_invoke_answers_202_and_calls_back(appliance_factory: type, tmp_path: Path) -> None:
    received: list[tuple[dict[str, str], bytes]] = []

    class Callback(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((dict(self.headers), body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Callback)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        app = appliance_factory.start("--no-simulator")
        write_function(tmp_path / "fn" / "upper", "def handle(req):\n    return req.upper()\n")
        stack = write_stack(
            tmp_path / "fn" / "stack.yml", {"upper": {"lang": "python3", "handler": "./upper"}}
        )
        app.cli("up", "-f", str(stack))
        url = f"http://127.0.0.1:{server.server_address[1]}/done"
        result = app.cli("invoke", "upper", "--async", "--callback-url", url, "--data", "abc")
        assert "call id" in result.stdout
        wait_for(lambda: received, 30, "the callback")
        headers, body = received[0]
        assert body == b"ABC\n"  # print(return value), as the classic template answers
        assert headers["X-Function-Status"] == "200"
        assert headers["X-Call-Id"] in result.stdout
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


WAITS_FOR_RELEASE = """
import os, time

def handle(req):
    print("started", req)
    release = os.environ["RELEASE"]
    deadline = time.time() + 60
    while not os.path.exists(release) and time.time() < deadline:
        time.sleep(0.02)
    return "done " + req
"""


def test_an_accepted_async_call_survives_a_crash(appliance_factory: type, tmp_path: Path) -> None:
    received: list[bytes] = []

    class Callback(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Callback)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        data_dir = tmp_path / "data"
        app = appliance_factory.start("--no-simulator", data_dir=data_dir)
        release = tmp_path / "release"
        write_function(tmp_path / "fn" / "slow", WAITS_FOR_RELEASE)
        stack = write_stack(
            tmp_path / "fn" / "stack.yml",
            {"slow": {"lang": "python3", "handler": "./slow",
                      "environment": {"RELEASE": str(release)}}},
        )  # fmt: skip
        app.cli("up", "-f", str(stack))
        url = f"http://127.0.0.1:{server.server_address[1]}/done"
        app.cli("invoke", "slow", "--async", "--callback-url", url, "--data", "job-7")
        wait_for(lambda: "started job-7" in app.cli("logs", "slow").stdout, 60, "the call to start")
        app.kill()  # mid-call: the 202 was given, the answer was not

        # A webhook may not forge an async call.
        forged = {"specversion": "1.0", "id": "f1", "source": "s",
                  "type": "dev.veba.function.invocation", "subject": "slow"}  # fmt: skip
        release.touch()
        again = appliance_factory.start("--no-simulator", data_dir=data_dir)
        wait_for(lambda: received, 120, "the call to run again after the restart and call back")
        # The classic template answers with what the run printed, then its return value.
        assert received == [b"started job-7\ndone job-7\n"]
        with again.client() as http:
            r = http.post("/webhook", json=forged, headers=STRUCTURED)
        assert r.status_code == 400 and "reserved" in r.json()["error"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_retention_drops_delivered_events_and_keeps_dead_letters(
    appliance_factory: type, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    app = appliance_factory.start("--no-simulator", "--retention", "1s", data_dir=data_dir)
    out = tmp_path / "got.jsonl"
    write_function(tmp_path / "fn" / "rec", RECORDER)
    write_function(tmp_path / "fn" / "bad", "def handle(req):\n    return ('no', 400)\n")
    stack = write_stack(
        tmp_path / "fn" / "stack.yml",
        {
            "rec": {"lang": "python3-http", "handler": "./rec", "environment": {"OUT": str(out)},
                    "annotations": {"topic": "VmPoweredOffEvent"}},
            "bad": {"lang": "python3-flask", "handler": "./bad",
                    "annotations": {"topic": "VmPoweredOnEvent"}},
        },
    )  # fmt: skip
    app.cli("up", "-f", str(stack))
    sample = json.loads(SAMPLE.read_text())
    with app.client() as http:
        http.post("/webhook", json=dict(sample, id="done-1"), headers=STRUCTURED)
        http.post("/webhook", json=dict(sample, id="dead-1", subject="VmPoweredOnEvent"),
                  headers=STRUCTURED)  # fmt: skip
    wait_for(lambda: read_jsonl(out), 60, "the delivery")
    wait_for(lambda: json.loads(app.cli("dlq", "list", "-o", "json").stdout), 60, "the dead letter")
    app.stop()
    # Pruning runs at start and every minute: restart once the event is past 1 s.
    delivered_at = read_jsonl(out)[0]["at"]
    wait_for(lambda: time.time() > delivered_at + 1.5, 10, "the retention to pass")
    again = appliance_factory.start("--no-simulator", "--retention", "1s", data_dir=data_dir)

    def pruned() -> list[str]:
        ids = [
            r["event"]["id"] for r in json.loads(again.cli("events", "list", "-o", "json").stdout)
        ]
        return ids if "done-1" not in ids else []

    assert wait_for(pruned, 60, "the delivered event to be pruned") == ["dead-1"]
    assert len(json.loads(again.cli("dlq", "list", "-o", "json").stdout)) == 1
    bad = again.cli("serve", "--retention", "soon", check=False)
    assert bad.returncode != 0 and "--retention" in bad.stderr
