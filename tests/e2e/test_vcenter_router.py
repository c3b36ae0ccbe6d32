"""VEBA RouterConfig processors that point outside the appliance: a Knative sink
(binary and structured) and an external OpenFaaS gateway, fed by the webhook on
its own bindAddress and by a simulated vCenter."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import ApplianceProcess, free_port, wait_for
from tests.vcsim import PASSWORD, USER, VCSim, vcsim_binary_fixture, vcsim_fixture  # noqa: F401

DATA = Path(__file__).parent.parent / "data"
SAMPLE = json.loads((DATA / "cloudevent-vm-powered-off.json").read_text())


class Receiver:
    """A Knative sink and a fake OpenFaaS gateway in one HTTP server."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/system/functions":
                    body = json.dumps(
                        [
                            {"name": "power", "annotations": {"topic": "VmPoweredOffEvent"}},
                            {"name": "other", "annotations": {"topic": "VmCreatedEvent"}},
                            {"name": "plain", "annotations": {}},
                        ]
                    ).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self.send_response(404)
                    self.end_headers()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                receiver.requests.append(
                    {
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": self.rfile.read(length),
                    }
                )
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def at(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()


@pytest.fixture
def appliances() -> Iterator[list[ApplianceProcess]]:
    started: list[ApplianceProcess] = []
    yield started
    for app in started:
        app.stop()


def test_knative_and_openfaas_processors_get_the_events(
    vcsim: Any, receiver: Receiver, appliances: list[ApplianceProcess], tmp_path: Path
) -> None:
    sim: VCSim = vcsim()
    webhook_port = free_port()
    webhook = yaml.safe_load((DATA / "event-router-config-webhook-knative.yaml").read_text())
    webhook["eventProvider"]["webhook"]["bindAddress"] = f"127.0.0.1:{webhook_port}"
    webhook["eventProcessor"]["knative"]["destination"] = {"uri": f"{receiver.url}/binary"}
    del webhook["metricsProvider"]
    vcenter = yaml.safe_load((DATA / "event-router-config-vcenter-knative.yaml").read_text())
    vcenter["eventProvider"]["vcenter"]["address"] = sim.url
    vcenter["eventProvider"]["vcenter"]["auth"]["basicAuth"] = {
        "username": USER,
        "password": PASSWORD,
    }
    vcenter["eventProcessor"]["name"] = "structured-sink"
    vcenter["eventProcessor"]["knative"]["encoding"] = "structured"
    vcenter["eventProcessor"]["knative"]["destination"] = {"uri": f"{receiver.url}/structured"}
    vcenter["metricsProvider"]["default"]["bindAddress"] = f"127.0.0.1:{free_port()}"
    gateway = {
        "apiVersion": "event-router.vmware.com/v1alpha1",
        "kind": "RouterConfig",
        "metadata": {"name": "external-gateway"},
        "eventProcessor": {"type": "openfaas", "name": "gw",
                           "openfaas": {"address": receiver.url, "async": False}},
    }  # fmt: skip
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump_all([webhook, vcenter, gateway]))

    app = ApplianceProcess(tmp_path / "data", "--config", str(path))
    appliances.append(app)
    app.start()

    def following() -> bool:
        with app.client() as http:
            providers = http.get("/api/v1/status").json()["providers"]
        return any(p["type"] == "vcenter" and p["state"] == "following" for p in providers)

    wait_for(following, 30, "the vCenter provider to follow")

    hook = f"http://127.0.0.1:{webhook_port}/webhook"
    event = dict(SAMPLE, id="from-the-webhook")
    headers = {"Content-Type": "application/cloudevents+json"}
    assert httpx.post(hook, json=event, headers=headers).status_code == 401
    r = httpx.post(hook, json=event, headers=headers, auth=("webhook-user", "webhook-pass"))
    assert r.status_code == 200, r.text
    ops = sim.power_ops(2)
    offs = sum(1 for subject, _ in ops if subject == "VmPoweredOffEvent")

    # Binary mode: ce-* headers, the data as the body.
    binary = wait_for(lambda: receiver.at("/binary") if len(receiver.at("/binary")) >= 3 else [],
                      30, "webhook and vCenter events at the binary sink")  # fmt: skip
    first = binary[0]
    assert first["headers"]["ce-id"] == "from-the-webhook"
    assert first["headers"]["ce-type"] == "com.vmware.event.router/event"
    assert json.loads(first["body"]) == SAMPLE["data"]
    assert {r["headers"].get("ce-source") for r in binary} >= {SAMPLE["source"], sim.url}

    # Structured mode: the whole event as JSON.
    structured = wait_for(lambda: receiver.at("/structured"), 30, "the structured sink")
    assert structured[0]["headers"]["content-type"].startswith("application/cloudevents+json")
    assert json.loads(structured[0]["body"])["specversion"] == "1.0"

    # The external gateway: only the function whose topic matches, once per event.
    power = wait_for(
        lambda: len(receiver.at("/function/power")) >= 1 + offs and receiver.at("/function/power"),
        30,
        "the gateway function",
    )
    assert not receiver.at("/function/other") and not receiver.at("/function/plain")
    assert {json.loads(r["body"])["subject"] for r in power} == {"VmPoweredOffEvent"}
    ids = [json.loads(r["body"])["id"] for r in power]
    assert "from-the-webhook" in ids and len(ids) == len(set(ids)) == 1 + offs

    with app.client() as http:
        processors = http.get("/api/v1/status").json()["processors"]
    names = {p["name"]: p for p in processors}
    assert set(names) == {"knative:veba-demo-knative", "knative:structured-sink", "openfaas:gw"}
    assert names["openfaas:gw"]["invocations"]["VmPoweredOffEvent"] >= 1

    # /metrics and the overview show the processors as they show functions.
    def settled() -> dict[tuple[str, str], float] | None:
        with app.client() as http:
            text = http.get("/metrics").text
        samples = {
            (s.name, s.labels.get("function", "")): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.labels.get("outcome", "delivered") == "delivered"
        }
        backlog = sum(samples.get(("veba_delivery_backlog", n), 1) for n in names)
        return samples if backlog == 0 else None

    samples = wait_for(settled, 30, "the processors' backlog to drain")
    with app.client() as http:
        processors = {p["name"]: p for p in http.get("/api/v1/status").json()["processors"]}
        shown = {f["name"]: f for f in http.get("/api/v1/overview").json()["functions"]}
    for name, status in processors.items():
        assert samples[("veba_deliveries_total", name)] == status["delivered"] >= 1
        assert samples[("veba_attempts_in_flight", name)] == 0
        assert shown[name]["kind"] == "processor"
        assert shown[name]["delivered"] == status["delivered"]
