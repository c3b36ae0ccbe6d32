"""`veba catalog` against a real `veba serve` that follows govmomi's simulator.

govmomi's simulator describes some 40 classic event types in its EventManager
and no EventEx or ExtendedEvent ones; a vCenter 8 describes some 1,500 of
those. So the appliance reaches the simulator through `ExtendingProxy`, which
passes every request through unchanged and adds a few such descriptions to
the EventManager's `description`, exactly as a vCenter writes them (key
"EventEx" or "ExtendedEvent", the id before the "|" of `fullFormat`).
"""

from __future__ import annotations

import http.client
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import ApplianceProcess, wait_for
from tests.vcsim import PASSWORD, USER, VCSim, vcsim_binary_fixture, vcsim_fixture  # noqa: F401

EXTRA_EVENT_INFO = [
    # (key, id, category, description)
    ("EventEx", "com.vmware.cl.CreateLibraryEvent", "info", "Created Library"),
    ("EventEx", "com.vmware.cl.DeleteLibraryEvent", "info", "Deleted Library"),
    ("EventEx", "esx.problem.net.connectivity.lost", "error", "Lost Network Connectivity"),
    ("ExtendedEvent", "com.vmware.license.HostLicenseExpiredEvent", "warning",
     "Host license or evaluation period has expired"),
]  # fmt: skip


def _event_info_xml() -> bytes:
    parts = []
    for key, type_id, category, description in EXTRA_EVENT_INFO:
        parts.append(
            f"<eventInfo><key>{key}</key><description>{description}</description>"
            f"<category>{category}</category>"
            f'<longDescription>&lt;EventLongDescription id="{type_id}"&gt;'
            f"&lt;description&gt;{description}&lt;/description&gt;&lt;/EventLongDescription&gt;"
            "</longDescription>"
            "<formatOnDatacenter></formatOnDatacenter><formatOnComputeResource>"
            "</formatOnComputeResource><formatOnHost></formatOnHost><formatOnVm></formatOnVm>"
            f"<fullFormat>{type_id}|{description}</fullFormat></eventInfo>"
        )
    return "".join(parts).encode()


class ExtendingProxy:
    """An HTTP proxy in front of a simulator that adds EXTRA_EVENT_INFO to the
    EventManager's description wherever a response carries it."""

    _HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}

    def __init__(self, upstream_port: int) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy.forward(self)

            def do_POST(self) -> None:
                proxy.forward(self)

        self.upstream_port = upstream_port
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.described = 0  # responses extended
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> ExtendingProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def forward(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        headers = {
            k: v
            for k, v in handler.headers.items()
            if k.lower() not in self._HOP and k.lower() != "accept-encoding"
        }
        upstream = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=300)
        try:
            upstream.request(handler.command, handler.path, body=body, headers=headers)
            response = upstream.getresponse()
            payload = response.read()
            status, reason, reply_headers = response.status, response.reason, response.getheaders()
        except OSError:  # the simulator went away (the test is ending): so does this connection
            handler.close_connection = True
            handler.send_error(502)
            return
        finally:
            upstream.close()
        if b"<eventInfo>" in payload:
            at = payload.index(b"<eventInfo>")
            payload = payload[:at] + _event_info_xml() + payload[at:]
            self.described += 1
        handler.send_response(status, reason)
        for name, value in reply_headers:
            if name.lower() not in self._HOP:
                handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)


@pytest.fixture
def appliances(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[ApplianceProcess]]:
    monkeypatch.setenv("VC_PASSWORD", PASSWORD)
    started: list[ApplianceProcess] = []
    yield started
    for app in started:
        app.stop()


@pytest.fixture
def proxies() -> Iterator[list[ExtendingProxy]]:
    started: list[ExtendingProxy] = []
    yield started
    for proxy in started:
        proxy.stop()


def _following(app: ApplianceProcess) -> Callable[[], bool]:
    def check() -> bool:
        with app.client() as http:
            providers = http.get("/api/v1/status").json()["providers"]
        return any(p["type"] == "vcenter" and p["state"] == "following" for p in providers)

    return check


def _logged(app: ApplianceProcess) -> Counter[str]:
    with app.client() as http:
        records = http.get("/api/v1/events", params={"limit": 10_000}).json()
    return Counter(r["event"]["subject"] for r in records)


def test_the_catalogue_of_a_connected_vcenter(
    vcsim: Callable[..., VCSim],
    appliances: list[ApplianceProcess],
    proxies: list[ExtendingProxy],
    tmp_path: Path,
) -> None:
    sim = vcsim()
    proxy = ExtendingProxy(sim.port).start()
    proxies.append(proxy)
    app = ApplianceProcess(
        tmp_path / "data",
        "--vcenter-password-env",
        "VC_PASSWORD",
        "--vcenter",
        f"http://{USER}@127.0.0.1:{proxy.port}/sdk",
    )
    appliances.append(app)
    app.start()
    wait_for(_following(app), 30, "the vCenter provider to follow the simulator")

    # Events from the simulator: power operations, and an EventEx of a type the
    # EventManager describes, posted as an extension would.
    ops = sim.power_ops(5)
    from pyVmomi import vim

    si = sim.connect()
    content = si.RetrieveContent()
    for _ in range(2):
        content.eventManager.PostEvent(
            vim.event.EventEx(  # the server sets key, chainId, createdTime and userName
                eventTypeId="com.vmware.cl.CreateLibraryEvent",
                severity="info",
                createdTime=datetime.now(UTC),
                chainId=0,
                key=0,
                userName="",
            )
        )
    expected = Counter(subject for subject, _ in ops)
    expected["com.vmware.cl.CreateLibraryEvent"] = 2

    def all_logged() -> bool:
        logged = _logged(app)
        return all(logged[s] >= n for s, n in expected.items())

    wait_for(all_logged, 60, "the events in the log")
    logged = _logged(app)

    # The whole catalogue, as JSON.
    types = {t["type"]: t for t in json.loads(app.cli("catalog", "-o", "json").stdout)}
    vcenter = f"vcenter:127.0.0.1:{proxy.port}"
    library = types["com.vmware.cl.CreateLibraryEvent"]
    assert library["kind"] == "eventex" and library["class"] == "EventEx"
    assert library["description"] == "Created Library" and library["category"] == "info"
    assert library["long_description"].startswith('<EventLongDescription id="com.vmware.cl.')
    assert library["seen"] == logged["com.vmware.cl.CreateLibraryEvent"] == 2
    assert vcenter in library["sources"] and "log" in library["sources"]
    assert "EventTypeId" in [f["name"] for f in library["fields"]]
    assert types["esx.problem.net.connectivity.lost"]["category"] == "error"
    assert types["esx.problem.net.connectivity.lost"]["seen"] == 0
    expired = types["com.vmware.license.HostLicenseExpiredEvent"]
    assert expired["kind"] == "extendedevent" and expired["class"] == "ExtendedEvent"
    # Classic types: pyVmomi's fields, the simulator's descriptions, the log's counts.
    on = types["VmPoweredOnEvent"]
    assert on["description"] == "VM powered on" and on["category"] == "info"
    assert on["seen"] == logged["VmPoweredOnEvent"] >= expected["VmPoweredOnEvent"]
    assert types["VmPoweredOffEvent"]["seen"] == logged["VmPoweredOffEvent"]
    assert {"pyvmomi", vcenter, "log"} <= set(on["sources"])
    names = [f["name"] for f in on["fields"]]
    assert {"Vm", "Host", "Datacenter", "Template"} <= set(names)
    assert types["VmCreatedEvent"]["seen"] == logged["VmCreatedEvent"]

    # The table, with where the catalogue came from.
    listing = app.cli("catalog", "library")
    assert "com.vmware.cl.CreateLibraryEvent" in listing.stdout
    assert "com.vmware.cl.DeleteLibraryEvent" in listing.stdout
    assert "VmPoweredOnEvent" not in listing.stdout
    assert f"{vcenter}: " in listing.stderr and "types described" in listing.stderr
    assert "offline" not in listing.stderr

    # Search in the API; and a type's sample from the appliance.
    with app.client() as http:
        found = http.get("/api/v1/catalog", params={"search": "license evaluation"}).json()
        assert [t["type"] for t in found["types"]] == ["com.vmware.license.HostLicenseExpiredEvent"]
        assert found["vcenters"] == [{"name": vcenter, "types": 37 + 4, "error": None}]
        assert http.get("/api/v1/catalog/NoSuchEvent").status_code == 404
    shown = json.loads(
        app.cli("catalog", "show", "com.vmware.cl.DeleteLibraryEvent", "-o", "json").stdout
    )
    assert shown["sample_origin"] == "generic"
    sample = shown["sample"]
    assert sample["type"] == "com.vmware.event.router/eventex"
    assert sample["subject"] == sample["data"]["EventTypeId"] == "com.vmware.cl.DeleteLibraryEvent"
    assert sample["data"]["FullFormattedMessage"] == "Deleted Library"
    # The descriptions were read once, not per request.
    assert proxy.described == 1
