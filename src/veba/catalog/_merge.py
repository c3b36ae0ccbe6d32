"""The catalogue's sources merged by type: pyVmomi's classes, the simulator's
subjects, each connected vCenter's EventManager descriptions, the log's counts."""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any

from veba.catalog._model import EventType, UnknownEventType
from veba.catalog._pyvmomi import (
    EXTENSIBLE,
    event_classes,
    fields_of,
    pyvmomi_types,
    pyvmomi_version,
)
from veba.events import EVENT_TYPE_PREFIX

__all__ = ["Catalog", "build", "describe_event_info", "described", "extensible", "search"]


# -- the simulator ----------------------------------------------------------------------


@functools.cache
def _simulated() -> dict[str, str]:
    """The subjects the built-in simulator can make, with the kind of each."""
    from veba.providers.simulator import VCenterSimulator

    classes = event_classes()
    out: dict[str, str] = {}
    for subject in VCenterSimulator.event_classes():
        if subject in classes:
            out[subject] = "event"
        else:
            kind = VCenterSimulator().sample(subject).type.removeprefix(EVENT_TYPE_PREFIX)
            out[subject] = kind
    return out


# -- veba's own descriptions ------------------------------------------------------------


@functools.cache
def described() -> dict[str, tuple[str, str, str]]:
    """The types veba describes itself (`described.tsv`): type -> (kind,
    category, description), so the common ones are explained without a vCenter."""
    text = resources.files("veba.catalog").joinpath("described.tsv").read_text("utf-8")
    out: dict[str, tuple[str, str, str]] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, kind, category, description = line.split("\t")
        out[name] = (kind, category, description)
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
        if key in EXTENSIBLE:
            type_id = full_format.split("|", 1)[0].strip()
            kind = EXTENSIBLE[key]
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
    for name, (kind, category, description) in described().items():
        current = entries.get(name)
        if current is None:  # an EventEx / ExtendedEvent id no other source has offline
            current = add_source(extensible(name, kind), "veba")
        entries[name] = replace(  # a vCenter's own words, where it gave some, come first
            current,
            category=current.category or category,
            description=current.description or description,
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
        fields=fields_of(vmomi_class) if vmomi_class else (),
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
