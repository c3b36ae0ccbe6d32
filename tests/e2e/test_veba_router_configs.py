"""The router configs VEBA's appliances ship, run by a real `veba serve --config`:
v0.8's (webhook on 0.0.0.0:8080, Knative processor to the appliance's own
broker) and v0.7's with OpenFaaS (vCenter, the in-appliance gateway) deliver
to the appliance's own functions and nothing outside; what veba cannot run is
refused in one line.

"Nothing outside" is watched at the network: `veba serve` runs with an HTTP
proxy in its environment (httpx, which every outside call of the appliance
uses, honours it), and the proxy records every request that would leave."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.harness import (
    RECORDER,
    VEBA,
    ApplianceProcess,
    free_port,
    read_jsonl,
    wait_for,
    write_function,
    write_stack,
)
from tests.vcsim import PASSWORD, USER, VCSim, vcsim_binary_fixture, vcsim_fixture  # noqa: F401

DATA = Path(__file__).parent.parent / "data"
SAMPLE = json.loads((DATA / "cloudevent-vm-powered-off.json").read_text())
CE_JSON = {"Content-Type": "application/cloudevents+json"}


def veba_config(name: str) -> dict[str, Any]:
    return yaml.safe_load((DATA / f"event-router-config-{name}.yaml").read_text())


class Proxy:
    """An HTTP proxy that lets nothing through and remembers every request."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _refuse(self) -> None:
                proxy.requests.append(f"{self.command} {self.path}")
                self.send_response(502)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_PUT = do_CONNECT = _refuse

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.env = {
            **os.environ,
            "HTTP_PROXY": url,
            "HTTPS_PROXY": url,
            "ALL_PROXY": url,
            "NO_PROXY": "127.0.0.1,localhost",
        }
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    p = Proxy()
    p.thread.start()
    yield p
    p.server.shutdown()
    p.server.server_close()


@pytest.fixture
def appliances() -> Iterator[list[ApplianceProcess]]:
    started: list[ApplianceProcess] = []
    yield started
    for app in started:
        app.stop()


def listening(port: int) -> set[str]:
    """The addresses TCP sockets listen on at `port`, as the kernel shows them."""
    found: set[str] = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        if not os.path.exists(table):  # no IPv6 on this machine
            continue
        with open(table) as lines:
            next(lines)
            for line in lines:
                local, state = line.split()[1], line.split()[3]
                address, port_hex = local.split(":")
                if state != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                    continue
                raw = bytes.fromhex(address)
                # The kernel prints each 32-bit word in host (little-endian) order.
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(socket.inet_ntop(family, words))
    return found


def deploy_recorder(app: ApplianceProcess, folder: Path, topic: str) -> Path:
    out = folder / "received.jsonl"
    write_function(folder / "fn" / "power", RECORDER)
    stack = write_stack(
        folder / "fn" / "stack.yml",
        {
            "power": {
                "lang": "python3-http",
                "handler": "./power",
                "annotations": {"topic": topic},
                "environment": {"OUT": str(out)},
            }
        },
    )
    app.cli("up", "-f", str(stack))
    return out


def only_to_the_function(app: ApplianceProcess, event_ids: list[str]) -> None:
    """Each event went to the deployed function and to nothing else; no dead letters,
    no processors outside."""
    with app.client() as http:
        for event_id in event_ids:
            deliveries = http.get(f"/api/v1/events/{event_id}").json()["deliveries"]
            assert [(d["subscription"], d["status"]) for d in deliveries] == [
                ("power", "delivered")
            ], deliveries
        assert http.get("/api/v1/dlq").json() == []
        assert http.get("/api/v1/status").json()["processors"] == []


def test_the_v08_appliance_config_delivers_to_its_own_functions_on_a_shared_port(
    appliances: list[ApplianceProcess], proxy: Proxy, tmp_path: Path
) -> None:
    config = veba_config("appliance-v0.8")
    app = ApplianceProcess(tmp_path / "data", env=proxy.env)
    # VEBA's webhook is 0.0.0.0:8080, veba's API 127.0.0.1:8080: the same port.
    config["eventProvider"]["webhook"]["bindAddress"] = f"0.0.0.0:{app.port}"
    metrics = free_port()
    config["metricsProvider"]["default"]["bindAddress"] = f"0.0.0.0:{metrics}"
    path = tmp_path / "vmware-event-router-config-webhook.yaml"
    path.write_text(yaml.safe_dump(config))
    app.args += ["--config", str(path)]
    appliances.append(app)
    app.start()

    # Bound as written: one socket on the wider address, none narrower.
    assert listening(app.port) == {"0.0.0.0"}
    assert listening(metrics) == {"0.0.0.0"}
    said = app.log_path.read_text()
    assert f"one listener on 0.0.0.0:{app.port} for the webhook" in said
    assert "eventProcessor veba-knative (knative): destination.ref Broker" in said

    out = deploy_recorder(app, tmp_path, "VmPoweredOffEvent")
    auth = ("hook-user", "Hook-Pass-1")
    for host, event_id in (("127.0.0.1", "via-loopback"), ("127.0.0.2", "via-another-address")):
        hook = f"http://{host}:{app.port}/webhook"
        event = dict(SAMPLE, id=event_id)
        assert httpx.post(hook, json=event, headers=CE_JSON).status_code == 401
        r = httpx.post(hook, json=event, headers=CE_JSON, auth=auth)
        assert r.status_code == 200, r.text

    got = wait_for(lambda: len(read_jsonl(out)) >= 2 and read_jsonl(out), 60, "both webhook events")
    assert sorted(e["id"] for e in got) == ["via-another-address", "via-loopback"]
    only_to_the_function(app, ["via-loopback", "via-another-address"])

    # The API answers no further than --listen says; the webhook wherever it says.
    token = {"Authorization": f"Bearer {app.token}"}
    elsewhere = httpx.get(f"http://127.0.0.2:{app.port}/api/v1/status", headers=token)
    assert elsewhere.status_code == 404
    assert httpx.get(f"http://127.0.0.1:{metrics}/stats").json()["vmware.event.router.stats"]
    assert proxy.requests == []


def test_the_v07_openfaas_config_delivers_to_its_own_functions(
    vcsim: Any, appliances: list[ApplianceProcess], proxy: Proxy, tmp_path: Path
) -> None:
    sim: VCSim = vcsim()
    config = veba_config("appliance-v0.7-openfaas")
    vcenter = config["eventProvider"]["vcenter"]
    vcenter["address"] = sim.url
    vcenter["auth"]["basicAuth"] = {"username": USER, "password": PASSWORD}
    vcenter["insecureSSL"] = "${VC_INSECURE}"  # substituted, then read as a boolean
    config["metricsProvider"]["default"]["bindAddress"] = f"127.0.0.1:{free_port()}"
    path = tmp_path / "vmware-event-router-config-vcenter.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**proxy.env, "VC_INSECURE": "true"}
    app = ApplianceProcess(tmp_path / "data", "--config", str(path), env=env)
    appliances.append(app)
    app.start()
    assert "http://gateway.openfaas:8080 is this appliance" in app.log_path.read_text()

    def following() -> bool:
        with app.client() as http:
            providers = http.get("/api/v1/status").json()["providers"]
        return any(p["type"] == "vcenter" and p["state"] == "following" for p in providers)

    wait_for(following, 60, "the vCenter provider to follow")
    out = deploy_recorder(app, tmp_path, "VmPoweredOnEvent,VmPoweredOffEvent")
    ops = sim.power_ops(2)
    got = wait_for(
        lambda: len(read_jsonl(out)) >= len(ops) and read_jsonl(out), 60, "the power events"
    )
    assert sorted(e["subject"] for e in got) == sorted(subject for subject, _ in ops)
    assert {e["source"] for e in got} == {sim.url}
    only_to_the_function(app, [e["id"] for e in got])

    # The proxy does see what the appliance sends out: an async call's answer.
    with app.client() as http:
        call = {"id": "async-call-1", "source": "test", "type": "test"}
        r = http.post(
            "/async-function/power",
            json=call,
            headers={"X-Callback-Url": "http://callback.lab.invalid/done"},
        )
        assert r.status_code == 202, r.text
    wait_for(lambda: proxy.requests, 60, "the async call's callback at the proxy")
    assert proxy.requests == ["POST http://callback.lab.invalid/done"]


# -- refused, in one line --------------------------------------------------------------


def serve_refuses(tmp_path: Path, config: dict[str, Any], env: dict[str, str] | None = None) -> str:
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [VEBA, "serve", "--listen", f"127.0.0.1:{free_port()}",
         "--data-dir", str(tmp_path / "data"), "--config", str(path)],
        capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})},
    )  # fmt: skip
    said = (result.stdout + result.stderr).strip()
    assert result.returncode != 0, said
    assert "Traceback" not in said
    assert len(said.splitlines()) == 1, said
    assert said.startswith("error: ")
    return said


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("horizon-knative",
         ["router.yaml: eventProvider.type: horizon is not supported", "webhook provider"]),
        ("vcenter-aws",
         ["router.yaml: eventProcessor.type: aws_event_bridge is not supported", "boto3",
          "eventProcessor.type: knative with destination.uri"]),
    ],
)  # fmt: skip
def test_horizon_and_eventbridge_configs_are_refused(
    name: str, words: list[str], tmp_path: Path
) -> None:
    said = serve_refuses(tmp_path, veba_config(name))
    for word in words:
        assert word in said
    assert "Pass-1" not in said and "example-secret-key" not in said


def test_a_bad_boolean_from_the_environment_is_refused(tmp_path: Path) -> None:
    config = veba_config("appliance-v0.7-openfaas")
    config["eventProvider"]["vcenter"]["insecureSSL"] = "${VC_INSECURE}"
    said = serve_refuses(tmp_path, config, env={"VC_INSECURE": "yes"})
    assert said.endswith(
        "router.yaml: eventProvider.vcenter.insecureSSL:"
        " expected true or false, got 'yes' (from ${VC_INSECURE})"
    )


def test_listeners_that_cannot_be_had_are_refused_naming_their_setting(tmp_path: Path) -> None:
    config = veba_config("appliance-v0.8")
    with socket.socket() as taken:  # someone else holds the webhook's port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config["eventProvider"]["webhook"]["bindAddress"] = f"0.0.0.0:{port}"
        config["metricsProvider"]["default"]["bindAddress"] = f"127.0.0.1:{free_port()}"
        said = serve_refuses(tmp_path, config)
    assert said == (
        f"error: cannot listen on 0.0.0.0:{port} (eventProvider.webhook.bindAddress):"
        " address already in use"
    )
    config["eventProvider"]["webhook"]["bindAddress"] = "0.0.0.0:8093"
    config["metricsProvider"]["default"]["bindAddress"] = "0.0.0.0:8093"
    said = serve_refuses(tmp_path, config)
    assert "eventProvider.webhook.bindAddress 0.0.0.0:8093 and" in said
    assert "metricsProvider.default.bindAddress 0.0.0.0:8093 cannot both listen" in said
