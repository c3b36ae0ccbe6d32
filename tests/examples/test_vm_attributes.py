"""examples/vm-attributes against govmomi's simulator: custom attributes set by the
handler (run as a delivery runs it, with its vcconfig secret) and read back from
the VM with pyVmomi (``vm.customValue``)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.examples.support import example, vcconfig
from tests.vcsim import VCSim
from veba.testing import HandlerError

VM_ATTRIBUTES = example("vm-attributes")


def attributes(si: Any, vm: Any) -> dict[str, str]:
    """The VM's custom attributes by name, as the vSphere Client shows them.

    The simulator appends a value on every SetField where vCenter replaces it, so
    a field may be listed more than once: the last one is the current one."""
    names = {f.key: f.name for f in si.content.customFieldsManager.field}
    return {names[v.key]: v.value for v in vm.customValue}


def vm_event(veba_event: Any, sim: VCSim, kind: str, vm: Any, **fields: Any) -> dict[str, Any]:
    base = {"data.Vm.Name": vm.name, "data.Vm.Vm.Value": vm._moId, "source": sim.url}
    return dict(veba_event(kind, {**base, **fields}))


def test_sets_owner_creation_date_and_last_powered_on(
    sim: VCSim, veba_event: Any, veba_invoke: Any
) -> None:
    si = sim.connect()
    vm, clone = sim.vms(si)[:2]
    secrets = {"vcconfig": vcconfig(sim)}

    def invoke(event: dict[str, Any]) -> dict[str, Any]:
        response = veba_invoke(VM_ATTRIBUTES, event, secrets=secrets)
        assert response.status == 200
        result: dict[str, Any] = response.json()
        return result

    created = vm_event(
        veba_event,
        sim,
        "VmCreatedEvent",
        vm,
        **{"data.UserName": "LAB\\alice", "data.CreatedTime": "2024-03-01T09:30:00.123456Z"},
    )
    assert invoke(created)["set"] == {
        "owner": "LAB\\alice",
        "creation-date": "2024-03-01T09:30:00Z",
    }
    assert attributes(si, vm) == {"owner": "LAB\\alice", "creation-date": "2024-03-01T09:30:00Z"}

    on = vm_event(
        veba_event, sim, "VmPoweredOnEvent", vm, **{"data.CreatedTime": "2024-03-01T10:00:00Z"}
    )
    assert invoke(on)["set"] == {"last-poweredon": "2024-03-01T10:00:00Z"}
    assert attributes(si, vm)["last-poweredon"] == "2024-03-01T10:00:00Z"

    # An older power-on delivered late (a retry that waited out its backoff) does
    # not turn the attribute back.
    late = vm_event(
        veba_event,
        sim,
        "VmPoweredOnEvent",
        vm,
        **{"data.CreatedTime": "2024-03-01T09:45:00Z", "data.Key": on["data"]["Key"] - 1},
    )
    assert invoke(late)["set"] == {}
    assert attributes(si, vm)["last-poweredon"] == "2024-03-01T10:00:00Z"

    cloned = vm_event(
        veba_event,
        sim,
        "VmClonedEvent",
        clone,
        **{"data.UserName": "LAB\\bob", "data.CreatedTime": "2024-03-02T08:00:00Z"},
    )
    assert invoke(cloned)["set"] == {"owner": "LAB\\bob", "creation-date": "2024-03-02T08:00:00Z"}
    assert attributes(si, clone) == {"owner": "LAB\\bob", "creation-date": "2024-03-02T08:00:00Z"}
    assert attributes(si, vm)["owner"] == "LAB\\alice"

    # Each field was defined once, for VMs, and found by the later calls.
    fields = si.content.customFieldsManager.field
    assert sorted(f.name for f in fields) == ["creation-date", "last-poweredon", "owner"]
    assert {f.managedObjectType.__name__ for f in fields} == {"vim.VirtualMachine"}


def test_a_vm_that_is_gone_is_skipped_and_other_events_ignored(
    sim: VCSim, veba_event: Any, veba_invoke: Any
) -> None:
    secrets = {"vcconfig": vcconfig(sim)}
    gone = veba_event("VmPoweredOnEvent", {"data.Vm.Vm.Value": "vm-9999", "source": sim.url})
    result = veba_invoke(VM_ATTRIBUTES, gone, secrets=secrets).json()
    assert result == {"skipped": True, "reason": "VM vm-9999 no longer exists"}

    off = veba_event("VmPoweredOffEvent", {"source": sim.url})
    result = veba_invoke(VM_ATTRIBUTES, off, secrets=secrets).json()
    assert result == {"skipped": True, "reason": "VmPoweredOffEvent is not handled"}


def test_an_event_without_a_vm_is_refused(sim: VCSim, veba_event: Any, veba_invoke: Any) -> None:
    event = veba_event("VmCreatedEvent")
    event["data"]["Vm"] = None
    with pytest.raises(HandlerError) as failed:
        veba_invoke(VM_ATTRIBUTES, event, secrets={"vcconfig": vcconfig(sim)})
    assert failed.value.response.status == 422
    assert "has no data.Vm.Vm.Value: data.Vm is null" in str(failed.value)
    assert list(sim.connect().content.customFieldsManager.field) == []  # vCenter untouched


def test_the_simulator_appends_where_vcenter_replaces(sim: VCSim) -> None:
    """Recorded, not relied on: govmomi 0.24's SetField appends a value each time
    (vCenter keeps one per field), so the read-back above takes the last one."""
    from pyVmomi import vim

    si = sim.connect()
    vm = sim.vms(si)[0]
    manager = si.content.customFieldsManager
    key = manager.AddCustomFieldDef(name="note", moType=vim.VirtualMachine).key
    manager.SetField(entity=vm, key=key, value="one")
    manager.SetField(entity=vm, key=key, value="two")
    assert [v.value for v in vm.customValue if v.key == key] == ["one", "two"]
