"""pyVmomi events in govmomi's JSON shape: compared field by field with VEBA's samples."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pyVmomi import VmomiSupport, vim, vmodl

from veba.events import vsphere_event
from veba.providers.vcenter import event_class, event_kind, to_govmomi

DATA = Path(__file__).parent.parent / "data"
V65 = "vim.version.version11"  # what govmomi's simulator (6.5) negotiates
V91 = "vim.version.v9_1_0_0"


def sample(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def test_vm_powered_off_matches_vebas_sample_exactly() -> None:
    expected = sample("vm-powered-off.data.json")
    event = vim.event.VmPoweredOffEvent(
        key=9902,
        chainId=9895,
        createdTime=when(expected["CreatedTime"]),
        userName="VSPHERE.LOCAL\\Administrator",
        datacenter=vim.event.DatacenterEventArgument(
            name="testDC", datacenter=vim.Datacenter("datacenter-2")
        ),
        computeResource=vim.event.ComputeResourceEventArgument(
            name="cls", computeResource=vim.ClusterComputeResource("domain-c7")
        ),
        host=vim.event.HostEventArgument(name="10.185.22.74", host=vim.HostSystem("host-21")),
        vm=vim.event.VmEventArgument(name="test-01", vm=vim.VirtualMachine("vm-56")),
        fullFormattedMessage="test-01 on  10.0.0.1 in testDC is powered off",
        template=False,
    )
    data = to_govmomi(event, V65)
    assert data == expected
    assert list(data) == list(expected)  # govmomi's field order
    assert (event_class(event), event_kind(event)) == ("VmPoweredOffEvent", "event")


def test_eventex_keeps_type_id_severity_arguments_and_object_id() -> None:
    ce = sample("cloudevent-eventex-resource-exhaustion.json")
    expected = ce["data"]
    event = vim.event.EventEx(
        key=7715,
        chainId=7715,
        createdTime=when(expected["CreatedTime"]),
        userName="machine-bb9a7f",
        fullFormattedMessage=expected["FullFormattedMessage"],
        eventTypeId="vim.event.ResourceExhaustionStatusChangedEvent",
        severity="info",
        arguments=[
            vmodl.KeyAnyValue(key=a["Key"], value=a["Value"]) for a in expected["Arguments"]
        ],
    )
    data = to_govmomi(event, V65)
    assert data == expected
    cloud = vsphere_event(
        data,
        event_class=event_class(event),
        source=ce["source"],
        instance_uuid="u",
        kind=event_kind(event),  # type: ignore[arg-type]
    )
    assert cloud.type == ce["type"] == "com.vmware.event.router/eventex"
    assert cloud.subject == ce["subject"]


def test_extended_event_is_its_own_kind() -> None:
    event = vim.event.ExtendedEvent(
        key=1,
        chainId=1,
        createdTime=datetime(2026, 1, 1, tzinfo=UTC),
        eventTypeId="com.example.backup.done",
        managedObject=vim.VirtualMachine("vm-9"),
        data=[vim.event.ExtendedEvent.Pair(key="job", value="42")],
    )
    data = to_govmomi(event, V65)
    assert event_kind(event) == "extendedevent"
    assert data["EventTypeId"] == "com.example.backup.done"
    assert data["ManagedObject"] == {"Type": "VirtualMachine", "Value": "vm-9"}
    assert data["Data"] == [{"Key": "job", "Value": "42"}]
    assert data["Message"] == ""


def test_user_logout_matches_vebas_sample() -> None:
    expected = sample("cloudevent-user-logout.json")["data"]
    event = vim.event.UserLogoutSessionEvent(
        key=7775,
        chainId=7775,
        createdTime=when(expected["CreatedTime"]),
        userName=expected["UserName"],
        fullFormattedMessage=expected["FullFormattedMessage"],
        ipAddress="127.0.0.1",
        userAgent=expected["UserAgent"],
        callCount=34,
        sessionId="52edf160927",
        loginTime=when(expected["LoginTime"]),
    )
    assert to_govmomi(event, V65) == expected


def test_properties_newer_than_the_vcenter_are_left_out() -> None:
    event = vim.event.VmPoweredOnEvent(key=1, chainId=1, createdTime=datetime.now(UTC))
    assert "Tgw" not in to_govmomi(event, V65) and "AuditId" not in to_govmomi(event, V65)
    newest = to_govmomi(event, V91)
    assert newest["Tgw"] is None and newest["AuditId"] == ""


def test_nested_data_objects_and_zero_values_follow_go() -> None:
    info = vim.TaskInfo(
        key="task-1",
        task=vim.Task("task-1"),
        descriptionId="VirtualMachine.powerOff",
        entity=vim.VirtualMachine("vm-1"),
        state="queued",
        cancelled=False,
        cancelable=True,
        reason=vim.TaskReasonUser(userName="admin"),
        queueTime=datetime(2026, 1, 2, 3, 4, 5, 120000, tzinfo=UTC),
        eventChainId=7,
    )
    data = to_govmomi(vim.event.TaskEvent(key=2, chainId=2, info=info), V65)
    task = data["Info"]
    assert task["Task"] == {"Type": "Task", "Value": "task-1"}
    assert task["QueueTime"] == "2026-01-02T03:04:05.12Z"
    assert task["Reason"] == {"UserName": "admin"}
    assert task["Progress"] == 0 and task["Error"] is None and task["Locked"] is None
    assert task["StartTime"] is None and task["Name"] == "" and task["State"] == "queued"


def all_event_classes() -> list[type]:
    names = [n for n in VmomiSupport._dataDefMap if n.startswith("vim.event.")]
    types = [VmomiSupport.GetVmodlType(n) for n in names]
    return [t for t in types if isinstance(t, type) and issubclass(t, vim.event.Event)]


def test_every_event_class_pyvmomi_knows_maps_without_a_table() -> None:
    classes = all_event_classes()
    assert len(classes) > 400
    for cls in classes:
        event = cls(key=1, chainId=1, createdTime=datetime(2026, 1, 1, tzinfo=UTC))
        data = to_govmomi(event, V91)
        assert list(data)[:4] == ["Key", "ChainId", "CreatedTime", "UserName"], cls
        assert data["Key"] == 1 and data["CreatedTime"] == "2026-01-01T00:00:00Z"
        json.dumps(data)  # plain JSON all the way down
        assert event_class(event) == cls._wsdlName


@pytest.mark.parametrize(
    ("cls", "field", "value"),
    [
        (vim.event.VmReconfiguredEvent, "ConfigSpec", None),
        (vim.event.AlarmStatusChangedEvent, "From", ""),
        (vim.event.VmPoweredOnEvent, "Template", False),
    ],
)
def test_unset_fields_are_written_as_go_zero_values(cls: type, field: str, value: object) -> None:
    data = to_govmomi(cls(key=1, chainId=1, createdTime=datetime.now(UTC)), V65)
    assert data[field] == value
