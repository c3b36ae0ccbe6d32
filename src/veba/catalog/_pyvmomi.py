"""pyVmomi's event classes: every subclass of `vim.event.Event`, with its data
fields as VEBA's events carry them (PascalCase, govmomi's order, typed).

pyVmomi is imported on first use, not with the catalogue.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from veba.catalog._model import EventType, Field

__all__ = [
    "EXTENSIBLE",
    "event_classes",
    "fields_of",
    "pyvmomi_types",
    "pyvmomi_version",
    "vmomi",
]

_EVENT = "vim.event.Event"
# The classes whose events carry their type as an id (eventTypeId), with their kind.
EXTENSIBLE = {"EventEx": "eventex", "ExtendedEvent": "extendedevent"}


def vmomi() -> tuple[Any, Any]:
    """pyVmomi's (VmomiSupport, vim), imported when first needed, not with the catalogue."""
    from veba.providers.vcenter._vmomi import VmomiSupport, vim

    return VmomiSupport, vim


def _type_name(kind: Any) -> str:
    support, _ = vmomi()
    if issubclass(kind, list):
        return _type_name(kind.Item) + "[]"
    if issubclass(kind, support.ManagedObject):
        name = support.GetWsdlName(kind)
        return "ManagedObjectReference" + ("" if name == "ManagedObject" else f":{name}")
    return str(support.GetWsdlName(kind))


def _release(version: str) -> str:
    support, _ = vmomi()
    return str(support.versionIdMap.get(version) or version)


def _class_fields(cls: Any) -> tuple[Field, ...]:
    support, _ = vmomi()
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
def event_classes() -> dict[str, Any]:
    """Every pyVmomi subclass of vim.event.Event (and it), by WSDL name."""
    support, _ = vmomi()
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
    for name, cls in sorted(event_classes().items()):
        parent = cls.__mro__[1]
        out.append(
            EventType(
                name,
                EXTENSIBLE.get(name, "event"),
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
def fields_of(vmomi_class: str) -> tuple[Field, ...]:
    cls = event_classes().get(vmomi_class)
    return _class_fields(cls) if cls is not None else ()
