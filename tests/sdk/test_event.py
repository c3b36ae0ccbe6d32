"""`Event`: every shape a handler is given, NULL-safe paths, and clear missing fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from veba.events import Event as LogEvent
from veba.functions.worker import CloudEvent, Headers, HttpEvent
from veba.sdk import Event, MissingField, MoRef, NotACloudEvent

DATA = Path(__file__).parent.parent / "data"


def test_every_input_shape_gives_the_same_event(sample: dict) -> None:
    text = json.dumps(sample)
    attrs = {k: v for k, v in sample.items() if k != "data"}
    headers = Headers({"Content-Type": "application/cloudevents+json"})
    shapes = [
        sample,
        text,
        text.encode(),
        bytearray(text.encode()),
        CloudEvent(attrs, sample["data"]),  # veba-cloudevent's event
        HttpEvent(text.encode(), headers, "POST", {}, "/"),  # python3-http, structured
        LogEvent(attrs, sample["data"]),  # the appliance's own
    ]
    events = [Event(shape) for shape in shapes]
    events.append(Event(events[0]))
    for event in events:
        assert event == events[0]
        assert event.id == "08179137-b8e0-4973-b05f-8f212bf5003b"
        assert event.subject == "VmPoweredOffEvent"
        assert event.get("data.Vm.Name") == "test-01"
    assert Event(sample).to_dict() == sample


def test_binary_mode_http_event() -> None:
    headers = Headers(
        {
            "Ce-Specversion": "1.0",
            "Ce-Id": "b-1",
            "Ce-Source": "https://vc/sdk",
            "Ce-Type": "com.vmware.event.router/event",
            "Ce-Subject": "VmPoweredOnEvent",
            "Content-Type": "application/json",
        }
    )
    body = json.dumps(
        {"Key": 7, "Vm": {"Name": "db-01", "Vm": {"Type": "VirtualMachine", "Value": "vm-9"}}}
    )
    event = Event(HttpEvent(body.encode(), headers, "POST", {}, "/"))
    assert (event.id, event.subject, event.key) == ("b-1", "VmPoweredOnEvent", 7)
    assert event.vm == MoRef("VirtualMachine", "vm-9", "db-01")
    assert event.attributes["datacontenttype"] == "application/json"


def test_paths_are_null_safe(sample: dict) -> None:
    event = Event(sample)
    assert event.get("data.Vm.Vm.Value") == "vm-56"
    assert event.get("Vm.Vm.Value") == "vm-56"  # read from data when not an attribute
    assert event.get("subject") == "VmPoweredOffEvent"
    assert event.get("data.Ds.Name") is None  # Ds is null
    assert event.get("data.Ds.Name", "n/a") == "n/a"
    assert event.get("data.Nope.Deeper", 0) == 0
    assert event.get("data.Vm.Name.Deeper") is None  # a string has no fields
    assert event.get("dataschema") is None
    assert event.get("data.Template") is False  # falsy values are values
    assert event.get("data.ChangeTag") == ""
    assert event.key == 9902
    assert event.user == "VSPHERE.LOCAL\\Administrator"
    assert event.message == "test-01 on  10.0.0.1 in testDC is powered off"
    assert event["subject"] == "VmPoweredOffEvent" and event["data"] is event.data
    assert "data" in event and "subject" in event and "nope" not in event


def test_list_indexes_and_eventex_arguments() -> None:
    doc = json.loads((DATA / "cloudevent-eventex-resource-exhaustion.json").read_text())
    event = Event(doc)
    first = doc["data"]["Arguments"][0]
    assert event.get("data.Arguments.0.Key") == first["Key"]
    assert event.get("data.Arguments.-1.Value") == doc["data"]["Arguments"][-1]["Value"]
    assert event.get("data.Arguments.99.Value", "none") == "none"
    assert event.get("data.Arguments.first") is None
    assert event.arguments[first["Key"]] == first["Value"]
    assert event.vm is None and event.cluster is None


def test_morefs(sample: dict) -> None:
    event = Event(sample)
    assert event.vm == MoRef("VirtualMachine", "vm-56", "test-01")
    assert event.vm is not None and event.vm.moref == "vim.VirtualMachine:vm-56"
    assert str(event.vm) == "vim.VirtualMachine:vm-56"
    assert event.host == MoRef("HostSystem", "host-21", "10.185.22.74")
    assert event.datacenter == MoRef("Datacenter", "datacenter-2", "testDC")
    assert event.cluster == MoRef("ClusterComputeResource", "domain-c7", "cls")
    assert event.compute_resource == event.cluster
    assert event.datastore is None and event.network is None and event.dvs is None
    # A standalone host's compute resource is not a cluster.
    sample["data"]["ComputeResource"]["ComputeResource"]["Type"] = "ComputeResource"
    standalone = Event(sample)
    assert standalone.cluster is None and standalone.compute_resource is not None
    # Any field naming an object: SourceHost of a migration, a bare {"Type", "Value"}.
    sample["data"]["SourceHost"] = {
        "Name": "esx1",
        "Host": {"Type": "HostSystem", "Value": "host-1"},
    }
    sample["data"]["Bare"] = {"Type": "Folder", "Value": "group-v4"}
    assert Event(sample).entity("SourceHost") == MoRef("HostSystem", "host-1", "esx1")
    assert Event(sample).entity("Bare") == MoRef("Folder", "group-v4")
    assert Event(sample).entity("UserName") is None


def test_require_names_the_path_the_event_and_where_it_broke(sample: dict) -> None:
    event = Event(sample)
    assert event.require("data.Vm.Vm.Value") == "vm-56"
    with pytest.raises(MissingField) as null:
        event.require("data.Ds.Datastore.Value")
    text = str(null.value)
    assert "08179137-b8e0-4973-b05f-8f212bf5003b" in text and "VmPoweredOffEvent" in text
    assert "data.Ds.Datastore.Value" in text and "data.Ds is null" in text
    assert null.value.path == "data.Ds.Datastore.Value"
    assert null.value.http_status == 422  # not retried: the same event fails again
    with pytest.raises(MissingField, match=r"data.Vm has no key 'Moref'"):
        event.require("data.Vm.Moref")
    with pytest.raises(MissingField, match="no attribute 'dataschema'"):
        event.require("dataschema")
    with pytest.raises(MissingField, match="has 1 item"):
        Event({**sample, "data": {"L": [1]}}).require("data.L.3")
    with pytest.raises(TypeError):
        event.get("")


def test_what_is_not_a_cloudevent_is_refused_clearly(sample: dict) -> None:
    with pytest.raises(NotACloudEvent, match="not JSON"):
        Event("{nope")
    with pytest.raises(NotACloudEvent, match="looks like a vCenter event's data"):
        Event(sample["data"])  # the data, not the event
    with pytest.raises(NotACloudEvent, match=r"no 'specversion' attribute \(keys: a, b\)"):
        Event({"a": 1, "b": 2})
    with pytest.raises(NotACloudEvent, match="JSON object"):
        Event("[1, 2]")
    with pytest.raises(NotACloudEvent, match="cannot make an Event of a int"):
        Event(42)
    assert NotACloudEvent.http_status == 400


def test_data_base64_round_trips() -> None:
    event = Event({"specversion": "1.0", "id": "x", "data_base64": "AAEC"})
    assert event.data == b"\x00\x01\x02"
    assert event.to_dict()["data_base64"] == "AAEC"
    assert event.get("data.anything") is None


def test_moref_resolves_with_pyvmomi() -> None:
    from pyVmomi import vim

    class Session:
        _stub = None

    vm = MoRef("VirtualMachine", "vm-56", "test-01").resolve(Session())
    assert isinstance(vm, vim.VirtualMachine) and vm._moId == "vm-56"
