"""What the catalogue is made of: event types, their data fields, the lookup error."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from veba.events import Kind

__all__ = ["BASE_FIELDS", "EventType", "Field", "Source", "UnknownEventType"]

Source = Literal["pyvmomi", "simulator", "vcenter", "log", "veba"]


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
    sources: tuple[str, ...] = ()  # pyvmomi, simulator, vcenter:<host>, log, veba (described)
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
