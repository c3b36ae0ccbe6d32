"""The event catalogue: every vCenter event type a function can subscribe to.

Three sources, merged by type (the CloudEvent `subject`, what a `topic` names):

- pyVmomi's event classes (every subclass of `vim.event.Event`), with their data
  fields as VEBA's events carry them: PascalCase, govmomi's order, typed;
- what a connected vCenter's EventManager describes (`description.eventInfo`):
  its classes' descriptions and the ids of its EventEx and ExtendedEvent types,
  which exist only there (vCenter 8 knows some 1,900 types, pyVmomi ~440 classes);
- the event log: how often this appliance has seen each subject.

`sample` makes one event of a type: the built-in simulator's when it can make
one (realistic and consistent), else a generic one built from the pyVmomi
class's properties in VEBA's shape.
"""

from __future__ import annotations

import asyncio
import difflib
import functools
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from veba.events import DEFAULT_API_VERSION, EVENT_TYPE_PREFIX, Event, Kind, vsphere_event

__all__ = [
    "BASE_FIELDS",
    "Catalog",
    "EventType",
    "Field",
    "SeenCounter",
    "UnknownEventType",
    "build",
    "describe_event_info",
    "extensible",
    "pyvmomi_types",
    "sample",
    "search",
]

Source = Literal["pyvmomi", "simulator", "vcenter", "log"]

_EVENT = "vim.event.Event"
_EXTENSIBLE = {"EventEx": "eventex", "ExtendedEvent": "extendedevent"}
# EventManager categories, which are also EventEx severities.
_SEVERITIES = ("info", "warning", "error", "user")


class UnknownEventType(LookupError):
    """No catalogue source knows the type; `suggestions` are the nearest ones."""

    def __init__(self, name: str, suggestions: Sequence[str]) -> None:
        hint = f"; did you mean {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(f"unknown event type {name!r}{hint}")
        self.name = name
        self.suggestions = list(suggestions)


@dataclass(frozen=True, slots=True)
class Field:
    """One data field: `Vm`, `VmEventArgument`, may be null, in the API since 2.0."""

    name: str
    type: str
    optional: bool
    since: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "optional": self.optional,
            "since": self.since,
        }


@dataclass(frozen=True, slots=True)
class EventType:
    """One entry: a type as a `topic` names it, and what is known about it."""

    type: str  # the subject: a class name, or an EventEx / ExtendedEvent id
    kind: Kind | str  # event | eventex | extendedevent (or a CloudEvent type if only logged)
    vmomi_class: str | None = None  # the pyVmomi class whose fields the data has
    extends: str | None = None
    fields: tuple[Field, ...] = ()
    category: str | None = None  # info | warning | error | user (vCenter's EventManager)
    description: str | None = None
    long_description: str | None = None
    sources: tuple[str, ...] = ()  # pyvmomi, simulator, vcenter:<host>, log
    seen: int = 0

    @property
    def simulated(self) -> bool:
        return "simulator" in self.sources

    def own_fields(self) -> tuple[Field, ...]:
        """The fields beyond those every event has."""
        return tuple(f for f in self.fields if f.name not in BASE_FIELDS)

    def to_dict(self, *, fields: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.type,
            "kind": self.kind,
            "class": self.vmomi_class,
            "extends": self.extends,
            "category": self.category,
            "description": self.description,
            "seen": self.seen,
            "simulated": self.simulated,
            "sources": list(self.sources),
        }
        if fields:
            out["long_description"] = self.long_description
            out["fields"] = [f.to_dict() for f in self.fields]
        return out


# -- pyVmomi ----------------------------------------------------------------------------


def _vmomi() -> tuple[Any, Any]:
    from veba.providers.vcenter._vmomi import VmomiSupport, vim

    return VmomiSupport, vim


def _type_name(kind: Any) -> str:
    support, _ = _vmomi()
    if issubclass(kind, list):
        return _type_name(kind.Item) + "[]"
    if issubclass(kind, support.ManagedObject):
        name = support.GetWsdlName(kind)
        return "ManagedObjectReference" + ("" if name == "ManagedObject" else f":{name}")
    return str(support.GetWsdlName(kind))


def _release(version: str) -> str:
    support, _ = _vmomi()
    return str(support.versionIdMap.get(version) or version)


def _class_fields(cls: Any) -> tuple[Field, ...]:
    support, _ = _vmomi()
    return tuple(
        Field(
            prop.name[:1].upper() + prop.name[1:],
            _type_name(prop.type),
            bool(prop.flags & support.F_OPTIONAL),
            _release(prop.version),
        )
        for prop in cls._GetPropertyList()
        if prop.name not in ("dynamicType", "dynamicProperty")
    )


@functools.cache
def _event_classes() -> dict[str, Any]:
    """Every pyVmomi subclass of vim.event.Event (and it), by WSDL name."""
    support, _ = _vmomi()
    definitions: Mapping[str, Any] = support._dataDefMap  # name -> [name, wsdl, parent, ...]

    def is_event(name: str | None) -> bool:
        while name:
            if name == _EVENT:
                return True
            definition = definitions.get(name)
            name = definition[2] if definition else None
        return False

    classes = (support.GetVmodlType(name) for name in definitions if is_event(name))
    return {str(cls._wsdlName): cls for cls in classes}


@functools.cache
def pyvmomi_types() -> tuple[EventType, ...]:
    """pyVmomi's event classes with their fields, as catalogue entries."""
    out = []
    for name, cls in sorted(_event_classes().items()):
        parent = cls.__mro__[1]
        out.append(
            EventType(
                name,
                _EXTENSIBLE.get(name, "event"),
                vmomi_class=name,
                extends=None if name == "Event" else str(parent._wsdlName),
                fields=_class_fields(cls),
                sources=("pyvmomi",),
            )
        )
    return tuple(out)


def pyvmomi_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pyvmomi")
    except PackageNotFoundError:
        return "?"


@functools.cache
def _fields_of(vmomi_class: str) -> tuple[Field, ...]:
    cls = _event_classes().get(vmomi_class)
    return _class_fields(cls) if cls is not None else ()


# The fields every event has, in order (Tgw and AuditId since vSphere 9.1).
BASE_FIELDS: tuple[str, ...] = (
    "Key",
    "ChainId",
    "CreatedTime",
    "UserName",
    "Datacenter",
    "ComputeResource",
    "Host",
    "Vm",
    "Ds",
    "Net",
    "Dvs",
    "Tgw",
    "FullFormattedMessage",
    "ChangeTag",
    "AuditId",
)


# -- the simulator ----------------------------------------------------------------------


@functools.cache
def _simulated() -> dict[str, str]:
    """The subjects the built-in simulator can make, with the kind of each."""
    from veba.providers.simulator import VCenterSimulator

    classes = _event_classes()
    out: dict[str, str] = {}
    for subject in VCenterSimulator.event_classes():
        if subject in classes:
            out[subject] = "event"
        else:
            kind = VCenterSimulator().sample(subject).type.removeprefix(EVENT_TYPE_PREFIX)
            out[subject] = kind
    return out


# -- vCenter's EventManager -------------------------------------------------------------


def describe_event_info(info: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """vCenter's `EventManager.description.eventInfo`, one dict per type.

    An entry's `key` is the class name for classic events; for EventEx and
    ExtendedEvent types it is "EventEx" / "ExtendedEvent" and the id is what
    `fullFormat` holds before its first "|".
    """
    out: list[dict[str, Any]] = []
    for item in info:
        key = str(item.get("key") or "")
        full_format = str(item.get("fullFormat") or "")
        if key in _EXTENSIBLE:
            type_id = full_format.split("|", 1)[0].strip()
            kind = _EXTENSIBLE[key]
        else:
            type_id, kind = key, "event"
        if not type_id:
            continue
        out.append(
            {
                "type": type_id,
                "kind": kind,
                "category": _text(item.get("category")),
                "description": _text(item.get("description")),
                "long_description": _text(item.get("longDescription")),
            }
        )
    return out


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return str(value).strip() or None


# -- merging ----------------------------------------------------------------------------


@dataclass
class Catalog:
    """The merged catalogue and where it came from."""

    types: list[EventType]
    vcenters: list[dict[str, Any]] = field(default_factory=list)  # name, types, error
    offline: bool = False

    def get(self, name: str) -> EventType:
        """The entry for `name` (exact, else the one case-insensitive match)."""
        by_name = {t.type: t for t in self.types}
        if name in by_name:
            return by_name[name]
        folded = [t for t in self.types if t.type.casefold() == name.casefold()]
        if len(folded) == 1:
            return folded[0]
        names = list(by_name)
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        if not close:
            low = name.casefold()
            close = [n for n in names if low in n.casefold()][:3]
        raise UnknownEventType(name, close)

    def to_dict(self, *, fields: bool = True) -> dict[str, Any]:
        return {
            "count": len(self.types),
            "types": [t.to_dict(fields=fields) for t in self.types],
            "vcenters": self.vcenters,
            "pyvmomi": pyvmomi_version(),
            "offline": self.offline,
        }


def build(
    descriptions: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    seen: Mapping[str, tuple[int, str]] | None = None,
) -> list[EventType]:
    """Merge pyVmomi's classes, the simulator's subjects, each vCenter's
    descriptions (name -> `describe_event_info` output) and the log's counts
    (subject -> (count, CloudEvent type)) into one list, sorted by type."""
    entries: dict[str, EventType] = {t.type: t for t in pyvmomi_types()}

    def add_source(entry: EventType, source: str) -> EventType:
        return (
            entry if source in entry.sources else replace(entry, sources=(*entry.sources, source))
        )

    for subject, kind in _simulated().items():
        current = entries.get(subject)
        if current is None:
            current = extensible(subject, kind)
        entries[subject] = add_source(current, "simulator")
    for vcenter, items in (descriptions or {}).items():
        for item in items:
            name = str(item["type"])
            current = entries.get(name) or extensible(name, str(item.get("kind") or "event"))
            entries[name] = add_source(
                replace(
                    current,
                    category=current.category or item.get("category"),
                    description=current.description or item.get("description"),
                    long_description=current.long_description or item.get("long_description"),
                ),
                vcenter,
            )
    for subject, (count, cloudevent_type) in (seen or {}).items():
        if not subject:
            continue
        current = entries.get(subject)
        if current is None:
            kind = (
                cloudevent_type.removeprefix(EVENT_TYPE_PREFIX)
                if cloudevent_type.startswith(EVENT_TYPE_PREFIX)
                else cloudevent_type
            )
            current = extensible(subject, kind)
        entries[subject] = add_source(replace(current, seen=count), "log")
    return sorted(entries.values(), key=lambda t: (t.type.casefold(), t.type))


def extensible(name: str, kind: str) -> EventType:
    """An entry for a type pyVmomi has no class of: an EventEx / ExtendedEvent id
    (with that class's fields), or a class newer than pyVmomi (no fields known)."""
    vmomi_class = {"eventex": "EventEx", "extendedevent": "ExtendedEvent"}.get(kind)
    return EventType(
        name,
        kind,
        vmomi_class=vmomi_class,
        extends=vmomi_class,
        fields=_fields_of(vmomi_class) if vmomi_class else (),
    )


def search(types: Iterable[EventType], text: str | None) -> list[EventType]:
    """The entries whose type, description or category contain every word of
    `text` (case-insensitive)."""
    words = (text or "").casefold().split()
    if not words:
        return list(types)
    out = []
    for entry in types:
        haystack = " ".join(
            part for part in (entry.type, entry.description, entry.category) if part
        ).casefold()
        if all(word in haystack for word in words):
            out.append(entry)
    return out


# -- samples ----------------------------------------------------------------------------


def sample(entry: EventType, **overrides: Any) -> tuple[Event, str]:
    """An event of `entry`'s type and how it was made: "simulator" or "generic".

    Overrides are as for `VCenterSimulator.sample`: dotted data paths
    (`Vm.Name`, `data.Vm.Name`) or CloudEvent attribute names.
    """
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
    support, vim = _vmomi()
    name = str(support.GetWsdlName(kind))
    if name in ("ManagedObject", "ManagedEntity"):
        return vim.Folder("group-d1")
    return kind(f"{_MOREF_PREFIX.get(name, name.lower() + '-')}1")


def _entity_argument(arg_class: Any, field_name: str) -> Any:
    """An EntityEventArgument subclass with a name and its reference set."""
    support, vim = _vmomi()
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
    support, vim = _vmomi()
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
        return f"<{prop.name}>"
    return None  # binary, AnyType, method names: left unset


@dataclass(frozen=True)
class _Prop:
    name: str
    type: Any
    flags: int = 0


def _data_object(cls: Any, depth: int) -> Any:
    support, _ = _vmomi()
    obj = cls()
    for prop in cls._GetPropertyList():
        if prop.flags & support.F_OPTIONAL:
            continue
        value = _value(prop, depth)
        if value is not None:
            setattr(obj, prop.name, value)
    return obj


def _version_id() -> str:
    support, _ = _vmomi()
    return str(support.versionMap.get(f"vim25/{DEFAULT_API_VERSION}", ""))


def _generic(entry: EventType) -> Event:
    """An event of `entry`'s type built from its pyVmomi class, as govmomi writes it
    for a vCenter of VEBA's default API version."""
    from veba.providers.simulator import DEFAULT_SOURCE, VCenterSimulator
    from veba.providers.vcenter._shape import to_govmomi

    support, vim = _vmomi()
    name = entry.vmomi_class
    cls = _event_classes().get(name or "")
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
    message = entry.description or f"A {entry.type} (a generic sample)"
    event.fullFormattedMessage = message
    kind: Kind = "event"
    if entry.kind in ("eventex", "extendedevent") and name in _EXTENSIBLE:
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


# -- seen in the log --------------------------------------------------------------------


class SeenCounter:
    """How many events of each subject an event log holds, counted incrementally.

    The first call counts the whole `events` table on the log's reader thread
    (one GROUP BY); later calls count only the rows appended since (a range of
    `seq`, the primary key), so asking often costs little however long the log.
    """

    def __init__(self) -> None:
        self._seq = 0
        self._counts: dict[str, tuple[int, str]] = {}
        self._lock = asyncio.Lock()

    async def counts(self, log: Any) -> dict[str, tuple[int, str]]:
        """subject -> (events, CloudEvent type of the latest counted)."""
        async with self._lock:
            low = self._seq

            def op(conn: sqlite3.Connection) -> tuple[int, list[tuple[str, str, int]]]:
                (high,) = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
                rows = conn.execute(
                    "SELECT subject, type, count(*) FROM events WHERE seq > ? AND seq <= ?"
                    " GROUP BY subject, type",
                    (low, high),
                ).fetchall()
                return int(high), rows

            high, rows = await log._read(op)
            for subject, cloudevent_type, count in rows:
                before, _ = self._counts.get(subject, (0, cloudevent_type))
                self._counts[subject] = (before + int(count), str(cloudevent_type))
            self._seq = max(self._seq, high)
            return dict(self._counts)
