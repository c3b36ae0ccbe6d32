"""One event of a catalogue type: the built-in simulator's when it can make one
(realistic and consistent), else a generic one built from the pyVmomi class's
properties in VEBA's shape."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from veba.catalog._model import EventType
from veba.catalog._paths import check_paths
from veba.catalog._pyvmomi import EXTENSIBLE, event_classes, vmomi
from veba.events import DEFAULT_API_VERSION, Event, Kind, vsphere_event

__all__ = ["sample"]

# EventManager categories, which are also EventEx severities.
_SEVERITIES = ("info", "warning", "error", "user")


def sample(
    entry: EventType, *, added: Mapping[str, Any] | None = None, **overrides: Any
) -> tuple[Event, str]:
    """An event of `entry`'s type and how it was made: "simulator" or "generic".

    Overrides are as for `VCenterSimulator.sample`: dotted data paths
    (`Vm.Name`, `data.Vm.Name`) or CloudEvent attribute names. Each must be a
    path the type has (`UnknownPath` otherwise, with the nearest one);
    `added` paths are set as they are, existing or not.
    """
    from veba.providers.simulator._core import _ATTRIBUTES

    if overrides:
        plain, _ = _make(entry, {})
        check_paths(entry, plain.data, overrides, _ATTRIBUTES)
    return _make(entry, {**overrides, **(added or {})})


def _make(entry: EventType, overrides: Mapping[str, Any]) -> tuple[Event, str]:
    from veba.providers.simulator import VCenterSimulator
    from veba.providers.simulator._core import _split_attributes, set_path

    if entry.simulated:
        return VCenterSimulator().sample(entry.type, **overrides), "simulator"
    event = _generic(entry)
    if overrides:
        data, attributes = _split_attributes(overrides)
        for path, value in data.items():
            set_path(event.data, path, value)
        if attributes:
            event = Event({**event.attributes, **attributes}, event.data)
    return event, "generic"


_DEPTH = 3  # how deep required nested data objects are filled in


@functools.cache
def _world() -> dict[str, Any]:
    """Inventory for generic samples, from the simulator, by argument field name."""
    from veba.providers.simulator import VCenterSimulator

    data = VCenterSimulator().sample("VmMigratedEvent").data
    return {
        "datacenter": data["Datacenter"],
        "computeResource": data["ComputeResource"],
        "host": data["Host"],
        "sourceHost": data["SourceHost"],
        "vm": data["Vm"],
        "ds": data["Ds"],
        "time": data["CreatedTime"],
        "user": data["UserName"],
    }


# Which of the common entity arguments an event of a family carries.
_FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("VmEvent", ("datacenter", "computeResource", "host", "vm")),
    ("HostEvent", ("datacenter", "computeResource", "host")),
    ("ClusterEvent", ("datacenter", "computeResource")),
    ("DatastoreEvent", ("datacenter", "ds")),
    ("DvsEvent", ("datacenter", "dvs")),
    ("DatacenterEvent", ("datacenter",)),
)
_MOREF_PREFIX = {
    "Datacenter": "datacenter-",
    "ClusterComputeResource": "domain-c",
    "ComputeResource": "domain-s",
    "HostSystem": "host-",
    "VirtualMachine": "vm-",
    "Datastore": "datastore-",
    "Network": "network-",
    "DistributedVirtualSwitch": "dvs-",
    "VmwareDistributedVirtualSwitch": "dvs-",
    "Folder": "group-v",
    "ResourcePool": "resgroup-",
    "Alarm": "alarm-",
    "ScheduledTask": "schedule-",
    "Task": "task-",
}


_ARGUMENT_ENTITY = {
    "DatacenterEventArgument": "datacenter",
    "ComputeResourceEventArgument": "computeResource",
    "HostEventArgument": "sourceHost",
    "VmEventArgument": "vm",
    "DatastoreEventArgument": "ds",
    "ManagedEntityEventArgument": "vm",
}


def _moref(kind: Any) -> Any:
    support, vim = vmomi()
    name = str(support.GetWsdlName(kind))
    if name in ("ManagedObject", "ManagedEntity"):
        return vim.Folder("group-d1")
    return kind(f"{_MOREF_PREFIX.get(name, name.lower() + '-')}1")


def _entity_argument(arg_class: Any, field_name: str) -> Any:
    """An EntityEventArgument subclass with a name and its reference set."""
    support, vim = vmomi()
    world = _world()
    known = world.get(field_name)
    if known is None:  # destHost, entity, ...: an entity of the argument's kind
        fallback = _ARGUMENT_ENTITY.get(str(arg_class._wsdlName))
        known = world.get(fallback) if fallback else None
    arg = arg_class()
    for prop in arg_class._GetPropertyList():
        if prop.name == "name":
            arg.name = known["Name"] if known else f"{field_name}-1"
        elif issubclass(prop.type, support.ManagedObject):
            moref = next((v for k, v in (known or {}).items() if k != "Name"), None)
            if moref is not None:
                setattr(arg, prop.name, getattr(vim, moref["Type"])(moref["Value"]))
            else:
                setattr(arg, prop.name, _moref(prop.type))
    return arg


def _value(prop: Any, depth: int) -> Any:
    """A sample value for a required property (None to leave it unset)."""
    support, vim = vmomi()
    kind = prop.type
    if issubclass(kind, list):
        item = _value(_Prop(prop.name, kind.Item), depth)
        return [] if item is None else [item]
    if issubclass(kind, vim.event.EntityEventArgument):
        return _entity_argument(kind, prop.name)
    if issubclass(kind, support.DataObject):
        return _data_object(kind, depth + 1) if depth < _DEPTH else None
    if issubclass(kind, support.ManagedObject):
        return _moref(kind)
    if issubclass(kind, support.Enum):
        return kind.values[0] if kind.values else ""
    if issubclass(kind, bool):
        return False
    if issubclass(kind, int | float):
        return kind(0)
    if issubclass(kind, datetime):
        from veba.events import parse_time

        return parse_time(_world()["time"])
    if kind is type:
        return vim.VirtualMachine
    if issubclass(kind, str):
        return _text(prop.name)
    return None  # binary, AnyType, method names: left unset


# Text fields by name (lower case): what such a field holds in a real event.
_TEXTS = {
    "ipaddress": "10.0.8.23",
    "ip": "10.0.8.23",
    "useragent": "govc/0.37.0",
    "locale": "en",
    "macaddress": "00:50:56:8a:1c:2f",
    "mac": "00:50:56:8a:1c:2f",
    "version": "8.0.2",
    "build": "22617221",
    "url": "https://vc01.lab.local/sdk",
    "from": "green",
    "to": "yellow",
    "portkey": "12",
    "key": "12",
    "oldname": "web-01-old",
    "newname": "web-01",
    "name": "web-01",
    "path": "[vsanDatastore] web-01/web-01.vmx",
    "file": "[vsanDatastore] web-01/web-01.vmx",
    "sourcefile": "[vsanDatastore] web-01/web-01.vmx",
    "targetfile": "[vsanDatastore] web-01-copy/web-01.vmx",
    "group": "LAB\\vm-admins",
    "principal": "LAB\\bob",
    "role": "VirtualMachineUser",
    "privilegelist": "VirtualMachine.Interact.PowerOn",
    "reason": "The operation was cancelled by the user",
    "message": "",
    "msg": "",
}


def _text(name: str) -> str:
    """A plausible value for a text field, by its name; ids and UUIDs made up
    from the name, so samples stay the same run to run."""
    low = name.casefold()
    world = _world()
    if low in _TEXTS:
        return _TEXTS[low]
    if low.endswith("uuid") or low.endswith("sessionid") or low == "id":
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"veba-sample:{name}"))
    if low in ("username", "user", "login", "userlogin"):
        return str(world["user"])
    if low in ("host", "hostname"):
        return str(world["host"]["Name"])
    if low.endswith("datastore") or low.endswith("datastorename"):
        return str(world["ds"]["Name"])
    return f"<{name}>"  # no idea: visibly a placeholder


def _where(event: Any) -> str:
    """What an event is about, as vCenter's messages say it: `web-01 on esx01 in DC01`."""
    names = {
        arg: getattr(getattr(event, arg, None), "name", None)
        for arg in ("vm", "ds", "dvs", "host", "computeResource", "datacenter")
    }
    subject = next(
        (names[a] for a in ("vm", "ds", "dvs", "host", "computeResource") if names[a]), None
    )
    parts = [subject] if subject else []
    if names["vm"] and names["host"]:
        parts.append(f"on {names['host']}")
    if names["datacenter"] and names["datacenter"] != subject:
        parts.append(f"in {names['datacenter']}")
    return " ".join(str(p) for p in parts)


@dataclass(frozen=True)
class _Prop:
    name: str
    type: Any
    flags: int = 0


def _data_object(cls: Any, depth: int) -> Any:
    support, _ = vmomi()
    obj = cls()
    for prop in cls._GetPropertyList():
        if prop.flags & support.F_OPTIONAL:
            continue
        value = _value(prop, depth)
        if value is not None:
            setattr(obj, prop.name, value)
    return obj


def _version_id() -> str:
    support, _ = vmomi()
    return str(support.versionMap.get(f"vim25/{DEFAULT_API_VERSION}", ""))


def _generic(entry: EventType) -> Event:
    """An event of `entry`'s type built from its pyVmomi class, as govmomi writes it
    for a vCenter of VEBA's default API version."""
    from veba.providers.simulator import DEFAULT_SOURCE, VCenterSimulator
    from veba.providers.vcenter._shape import to_govmomi

    support, vim = vmomi()
    name = entry.vmomi_class
    cls = event_classes().get(name or "")
    if cls is None:  # a class newer than pyVmomi: an event with the common fields only
        cls = vim.event.Event
    world = _world()
    event = cls()
    base = {prop.name for prop in vim.event.Event._GetPropertyList()}
    event.key = 1000
    event.chainId = 1000
    event.createdTime = _value(_Prop("createdTime", datetime), 0)
    event.userName = world["user"]
    event.changeTag = ""
    for family, arguments in _FAMILIES:
        if issubclass(cls, getattr(vim.event, family)):
            for argument in arguments:
                prop = next(p for p in vim.event.Event._GetPropertyList() if p.name == argument)
                setattr(event, argument, _entity_argument(prop.type, argument))
            break
    for prop in cls._GetPropertyList():
        if prop.name in base:
            continue
        entity = issubclass(prop.type, vim.event.EntityEventArgument)
        if prop.flags & support.F_OPTIONAL and not entity:
            continue
        value = _value(prop, 0)
        if value is not None:
            setattr(event, prop.name, value)
    about = _where(event)
    message = entry.description or f"A {entry.type} (a generic sample)"
    message += f": {about}" if about else ""
    event.fullFormattedMessage = message
    kind: Kind = "event"
    if entry.kind in ("eventex", "extendedevent") and name in EXTENSIBLE:
        kind = "eventex" if entry.kind == "eventex" else "extendedevent"
        event.eventTypeId = entry.type
        if kind == "eventex":
            event.message = ""
            event.severity = entry.category if entry.category in _SEVERITIES else "info"
        else:
            event.message = message
            event.managedObject = getattr(vim, world["host"]["Host"]["Type"])(
                world["host"]["Host"]["Value"]
            )
    data = to_govmomi(event, _version_id())
    return vsphere_event(
        data,
        event_class=entry.type if kind == "event" else str(cls._wsdlName),
        source=DEFAULT_SOURCE,
        instance_uuid=f"{VCenterSimulator().instance_uuid}/generic",
        kind=kind,
    )
