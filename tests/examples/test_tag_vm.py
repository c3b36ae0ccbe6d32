"""examples/tag-vm against govmomi's simulator: the handler, run as a delivery runs
it (with its vcconfig secret and the appliance's store for @idempotent), tags a
real VM of the simulator, and the tag is read back through the REST API."""

from __future__ import annotations

import base64
import importlib.util
import json
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.e2e.harness import ApplianceProcess
from tests.examples.support import StoreService, example, vcconfig, wait_until
from tests.vcsim import PASSWORD, USER, VCSim, free_port, wait_task
from veba.sdk import VCenterConfig
from veba.testing import HandlerError

TAG_VM = example("tag-vm")
REST = "/rest/com/vmware/cis"


class Rest:
    """The test's own client of the simulator's vSphere Automation REST API."""

    def __init__(self, sim: VCSim) -> None:
        self.base = f"http://127.0.0.1:{sim.port}"
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        status, doc = self.request("POST", f"{REST}/session", auth=f"Basic {token}")
        assert status == 200, status
        self.session = doc["value"]

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        auth: str | None = None,
        session: str | None = None,
    ) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth:
            headers["Authorization"] = auth
        sid = session or getattr(self, "session", None)
        if sid:
            headers["vmware-api-session-id"] = sid
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw.strip() else None
        except urllib.error.HTTPError as exc:
            return exc.code, None

    def value(self, method: str, path: str, body: Any = None) -> Any:
        status, doc = self.request(method, path, body)
        assert status == 200, f"{method} {path}: {status}"
        return doc.get("value") if doc else None

    def attached(self, moref: str) -> list[tuple[str, str]]:
        """(category, tag) of every tag attached to the VM, by name."""
        ids = self.value(
            "POST",
            f"{REST}/tagging/tag-association?~action=list-attached-tags",
            {"object_id": {"type": "VirtualMachine", "id": moref}},
        )
        found = []
        for tid in ids or []:
            tag = self.value("GET", f"{REST}/tagging/tag/id:{tid}")
            category = self.value("GET", f"{REST}/tagging/category/id:{tag['category_id']}")
            found.append((category["name"], tag["name"]))
        return sorted(found)

    def detach(self, tag_id: str, moref: str) -> None:
        self.value(
            "POST",
            f"{REST}/tagging/tag-association/id:{tag_id}?~action=detach",
            {"object_id": {"type": "VirtualMachine", "id": moref}},
        )

    def categories(self) -> list[str]:
        ids = self.value("GET", f"{REST}/tagging/category") or []
        return sorted(self.value("GET", f"{REST}/tagging/category/id:{c}")["name"] for c in ids)

    def tags(self) -> list[str]:
        ids = self.value("GET", f"{REST}/tagging/tag") or []
        return sorted(self.value("GET", f"{REST}/tagging/tag/id:{t}")["name"] for t in ids)


def power_on_event(veba_event: Any, sim: VCSim, vm: Any, **overrides: Any) -> dict[str, Any]:
    """A VmPoweredOnEvent from this simulator about one of its VMs (name and MoRef)."""
    fields = {"data.Vm.Name": vm.name, "data.Vm.Vm.Value": vm._moId, "source": sim.url}
    return dict(veba_event("VmPoweredOnEvent", {**fields, **overrides}))


@pytest.mark.parametrize("mode", ["inprocess", "worker"])
def test_tags_the_vm_once_per_event(
    sim: VCSim, veba_store: StoreService, veba_event: Any, veba_invoke: Any, mode: str
) -> None:
    si = sim.connect()
    vm, other = sim.vms(si)[:2]
    rest = Rest(sim)
    assert rest.attached(vm._moId) == [] and rest.categories() == []

    def invoke(event: dict[str, Any], **options: Any) -> Any:
        return veba_invoke(
            TAG_VM,
            event,
            secrets={"vcconfig": vcconfig(sim)},
            environment=veba_store.env("tag-vm"),
            mode=mode,
            **options,
        )

    event = power_on_event(veba_event, sim, vm)
    first = invoke(event)
    assert first.status == 200
    result = first.json()
    assert (result["vm"], result["moref"]) == (vm.name, vm._moId)
    assert (result["category"], result["tag"]) == ("veba", "powered-on")
    assert result["tag_id"].startswith("urn:vmomi:InventoryServiceTag:")
    # Read back through the REST API: the VM carries the tag, the other VM none.
    assert rest.attached(vm._moId) == [("veba", "powered-on")]
    assert rest.attached(other._moId) == []

    # A redelivery of the same event (the ack was lost, say) does not attach again:
    # with the tag detached meanwhile, it stays detached, and the answer is the first's.
    rest.detach(result["tag_id"], vm._moId)
    again = invoke(event, attempt=2)
    assert again.status == 200 and again.json() == result
    assert rest.attached(vm._moId) == []

    # The next power-on is another event: tagged again, with the same tag (found,
    # not created a second time).
    later = power_on_event(veba_event, sim, vm, **{"data.Key": event["data"]["Key"] + 10})
    assert later["id"] != event["id"]
    assert invoke(later).json() == result
    assert rest.attached(vm._moId) == [("veba", "powered-on")]
    assert (rest.categories(), rest.tags()) == (["veba"], ["powered-on"])


def test_an_event_without_a_vm_is_refused_before_vcenter_is_called(
    sim: VCSim, veba_store: StoreService, veba_event: Any, veba_invoke: Any
) -> None:
    event = veba_event("VmPoweredOnEvent")
    event["data"]["Vm"] = None
    with pytest.raises(HandlerError) as failed:
        veba_invoke(
            TAG_VM,
            event,
            secrets={"vcconfig": vcconfig(sim)},
            environment=veba_store.env("tag-vm"),
        )
    assert failed.value.response.status == 422  # not retried: straight to the DLQ
    message = str(failed.value)
    assert "MissingField" in message and "has no data.Vm.Vm.Value: data.Vm is null" in message
    assert Rest(sim).categories() == []  # nothing was created in vCenter


def test_an_unreachable_vcenter_is_a_500_that_is_retried(
    veba_store: StoreService, veba_event: Any, veba_invoke: Any
) -> None:
    nowhere = (
        f'[vcenter]\nserver = "http://127.0.0.1:{free_port()}"\nuser = "u"\npassword = "p4ss"\n'
    )
    event = veba_event("VmPoweredOnEvent", {"data.Vm.Name": "web-01"})
    with pytest.raises(HandlerError) as failed:
        veba_invoke(
            TAG_VM, event, secrets={"vcconfig": nowhere}, environment=veba_store.env("tag-vm")
        )
    assert failed.value.response.status == 500  # retried with the delivery's backoff
    assert "ConnectionRefusedError" in str(failed.value)


def load_handler() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tag_vm_handler", TAG_VM / "handler.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_session_is_kept_and_renewed_after_a_401(sim: VCSim) -> None:
    """The worker's client (module level): one login for many calls; when vCenter
    ends the session, the next call gets a 401, logs in again, and succeeds."""
    handler = load_handler()
    config = VCenterConfig.from_toml(tomllib.loads(vcconfig(sim)))
    api = handler.client(config)
    assert handler.client(config) is api  # one per worker and vCenter
    vm = sim.vms(sim.connect())[0]

    tag_id = api.ensure_tag("veba", "powered-on", True)
    assert api.attach(tag_id, "VirtualMachine", vm._moId)
    assert api.ensure_tag("veba", "powered-on", True) == tag_id
    assert api.logins == 1

    rest = Rest(sim)
    ended = rest.request("DELETE", f"{REST}/session", session=api.session_id)
    assert ended[0] == 200
    old = api.session_id
    rest.detach(tag_id, vm._moId)
    assert api.attach(tag_id, "VirtualMachine", vm._moId)  # 401, login, attach
    assert api.logins == 2 and api.session_id != old
    assert rest.attached(vm._moId) == [("veba", "powered-on")]

    # A remembered tag that was deleted meanwhile: attach says so (404), no error.
    rest.value("DELETE", f"{REST}/tagging/tag/id:{tag_id}")
    assert api.attach(tag_id, "VirtualMachine", vm._moId) is False
    api.close()


def test_the_rest_api_of_the_simulator_takes_any_password(sim: VCSim) -> None:
    """What the simulator cannot check (so the tests above do not claim it): govmomi
    0.24's vapi simulator gives a session for any non-empty user and password."""
    token = base64.b64encode(b"someone:wrong").decode()
    status, doc = Rest(sim).request("POST", f"{REST}/session", auth=f"Basic {token}")
    assert status == 200 and doc["value"]


def test_a_vm_powered_on_in_vcenter_gets_tagged_by_the_deployed_function(
    sim: VCSim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole way: `veba serve` reading the simulator's events, the example
    deployed from its stack.yml with `veba up`, a VM powered off and on with
    pyVmomi, and the tag read back through the REST API."""
    monkeypatch.setenv("VC_PASSWORD", PASSWORD)
    app = ApplianceProcess(
        tmp_path / "data",
        "--no-simulator",
        "--vcenter-password-env",
        "VC_PASSWORD",
        "--vcenter",
        f"http://{USER}@127.0.0.1:{sim.port}/sdk",
    )
    try:
        app.start()
        secret = tmp_path / "vcconfig.toml"
        secret.write_text(vcconfig(sim))
        app.cli("secret", "create", "vcconfig", "--from-file", str(secret))
        app.cli("up", "-f", str(TAG_VM.parent / "stack.yml"))

        si = sim.connect()
        vm, other = sim.vms(si)[:2]
        wait_task(vm.PowerOffVM_Task())
        wait_task(vm.PowerOnVM_Task())
        rest = Rest(sim)
        wait_until(lambda: rest.attached(vm._moId), 30, f"a tag on {vm.name}")
        assert rest.attached(vm._moId) == [("veba", "powered-on")]
        assert rest.attached(other._moId) == []
    finally:
        app.stop()
