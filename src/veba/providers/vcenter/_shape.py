"""pyVmomi data objects in govmomi's JSON shape, as VEBA's router forwards them.

govmomi marshals its Go structs with encoding/json: PascalCase field names in
declaration order (base type first), every field present, nil pointers and
slices as null, zero values written out. Which Go type a vSphere type becomes
is a rule, not a table: strings and enums are `string` (""), numbers are plain
numbers (0), a required bool is `bool` (false) and an optional one `*bool`
(null), times are `time.Time` (RFC 3339), and structs, references, `AnyType`
values and slices are pointers or slices (null). So any data object pyVmomi
knows, including every event class, is mapped by walking its property list.

Only properties the vCenter's API version has are written: govmomi built for
that version has no field for a property added later (pyVmomi 9 knows `Tgw`
and `AuditId`; a 6.5 or 8.0 vCenter sends neither, and VEBA's events lack them).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from veba.providers.vcenter._vmomi import VmomiSupport, vim

__all__ = ["event_class", "event_kind", "rfc3339", "to_govmomi"]

JSON = dict[str, Any]

# How an unset property of a declared type is written.
_NULL, _EMPTY, _ZERO, _FALSE = None, "", 0, False
# Properties every DataObject has that govmomi's DynamicData does not export.
_SKIP = frozenset({"dynamicType", "dynamicProperty"})

_Field = tuple[str, str, Any]  # (PascalCase name, pyVmomi name, value when unset)
_fields_cache: dict[tuple[type, str], tuple[_Field, ...]] = {}


def rfc3339(value: datetime) -> str:
    """Go's RFC3339Nano in UTC: fraction without trailing zeros, `Z` suffix."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    return text + "Z"


def _unset(prop: Any) -> Any:
    kind = prop.type
    if issubclass(kind, list):
        return _NULL
    if issubclass(kind, bool):
        return _NULL if prop.flags & VmomiSupport.F_OPTIONAL else _FALSE
    if issubclass(kind, str) or kind in (type, VmomiSupport.ManagedMethod):  # names: `string`
        return _EMPTY
    if issubclass(kind, int | float):
        return _ZERO
    return _NULL  # datetime, binary, data objects, references, AnyType


def _fields(cls: type, version: str) -> tuple[_Field, ...]:
    key = (cls, version)
    fields = _fields_cache.get(key)
    if fields is None:
        fields = tuple(
            (prop.name[:1].upper() + prop.name[1:], prop.name, _unset(prop))
            for prop in cls._GetPropertyList()  # type: ignore[attr-defined]
            if prop.name not in _SKIP
            and (not version or VmomiSupport.IsChildVersion(version, prop.version))
        )
        _fields_cache[key] = fields
    return fields


def to_govmomi(value: Any, version: str = "") -> Any:
    """A pyVmomi value as govmomi's encoding/json writes it.

    `version` is the connection's API version (`stub.version`, like
    `vim.version.version11`); properties newer than that are left out.
    """
    if isinstance(value, VmomiSupport.DataObject):
        out: JSON = {}
        for name, attr, unset in _fields(type(value), version):
            item = getattr(value, attr, None)
            out[name] = unset if item is None else _convert(item, version)
        return out
    return _convert(value, version)


def _moref(value: Any, version: str) -> JSON:
    return {"Type": value._wsdlName, "Value": value._moId}


def _method(value: Any, version: str) -> str:
    info = getattr(value, "info", None)
    return str(getattr(info, "wsdlName", None) or getattr(value, "name", ""))


def _time(value: Any, version: str) -> str:
    return rfc3339(value)


def _binary(value: Any, version: str) -> str:
    return base64.b64encode(bytes(value)).decode()


def _list(value: Any, version: str) -> list[Any] | None:
    return [to_govmomi(item, version) for item in value] or None


def _plain(value: Any, version: str) -> Any:
    # pyVmomi's long, short, byte, double, Enum, PropertyPath and URI subclass the builtins.
    for base in (bool, int, float, str):
        if isinstance(value, base):
            return base(value)
    if isinstance(value, type):  # a vmodl `type` value: the type's name
        return getattr(value, "_wsdlName", value.__name__)
    return str(value)


_CONVERTERS: list[tuple[type | tuple[type, ...], Callable[[Any, str], Any]]] = [
    (VmomiSupport.DataObject, to_govmomi),
    (VmomiSupport.ManagedObject, _moref),
    (datetime, _time),
    (VmomiSupport.binary, _binary),
    (list, _list),
    ((VmomiSupport.ManagedMethod, VmomiSupport.UnknownManagedMethod), _method),
]
_by_type: dict[type, Callable[[Any, str], Any]] = {}
_AS_IS = frozenset({str, int, float, bool})


def _convert(value: Any, version: str) -> Any:
    kind = type(value)
    if kind in _AS_IS:
        return value
    converter = _by_type.get(kind)
    if converter is None:
        converter = next((f for base, f in _CONVERTERS if isinstance(value, base)), _plain)
        _by_type[kind] = converter
    return converter(value, version)


def event_class(event: Any) -> str:
    """The event's vSphere class name (`VmPoweredOffEvent`), as VEBA's subject."""
    return str(type(event)._wsdlName)


def event_kind(event: Any) -> str:
    """VEBA's type suffix: `eventex`, `extendedevent` or plain `event`."""
    if isinstance(event, vim.event.EventEx):
        return "eventex"
    if isinstance(event, vim.event.ExtendedEvent):
        return "extendedevent"
    return "event"
