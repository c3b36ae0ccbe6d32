"""The two shapes VEBA gave a vSphere event, and the one function that converts.

* **v0.7** (the event router, OpenFaaS era): ``type: com.vmware.event.router/<kind>``
  (kind: event, eventex, extendedevent) and ``subject: <EventClass>`` (or the
  EventTypeId of an EventEx/ExtendedEvent). This is what the log keeps.
* **v0.8** (Tanzu Sources for Knative's vSphere source, Knative era):
  ``type: com.vmware.vsphere.<EventClass>.v0``, no subject, and the extension
  ``eventclass: <kind>`` beside ``vsphereapiversion``; sent in binary mode.

Both carry the same id, source (the vCenter URL), time and data (the vCenter
event itself). Events that are neither (anything posted to the webhook) are
the same in both shapes. Delivery converts with `to_shape`; routing looks at
both views with `shaped_attributes`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal, get_args

from veba.events import EVENT_TYPE_PREFIX, Event

__all__ = [
    "DEFAULT_SHAPE",
    "EVENT_CLASS",
    "KNATIVE_SHAPE",
    "SHAPES",
    "SHAPE_ANNOTATION",
    "V07",
    "V08",
    "V08_TYPE_PREFIX",
    "V08_TYPE_SUFFIX",
    "Shape",
    "parse_shape",
    "shaped_attributes",
    "subject_of",
    "to_shape",
    "vsphere_name",
]

Shape = Literal["v0.7", "v0.8"]
V07: Shape = "v0.7"
V08: Shape = "v0.8"
SHAPES: tuple[Shape, ...] = get_args(Shape)
DEFAULT_SHAPE = V07  # stack.yml functions: what VEBA's OpenFaaS processor posted
KNATIVE_SHAPE = V08  # function.yaml services: what VEBA v0.8's broker delivered
# How a function chooses (stack.yml `annotations`, or a Service's metadata.annotations).
SHAPE_ANNOTATION = "veba.event-shape"

V08_TYPE_PREFIX = "com.vmware.vsphere."
V08_TYPE_SUFFIX = ".v0"
EVENT_CLASS = "eventclass"  # v0.8's extension: event, eventex or extendedevent
_KINDS = ("event", "eventex", "extendedevent")
_V08_TYPE = re.compile(r"^com\.vmware\.vsphere\.(?P<name>.+)\.v0$")


def parse_shape(value: str) -> Shape:
    """A shape from its spelling (``v0.7``, ``0.8``); ValueError saying what is wrong."""
    text = value.strip().lower()
    shape = text if text.startswith("v") else f"v{text}"
    if shape not in SHAPES:
        raise ValueError(f"unknown event shape {value!r}; expected v0.7 or v0.8")
    return shape


def vsphere_name(attributes: Mapping[str, str]) -> str | None:
    """The event class (or EventTypeId) of a vSphere event in either shape, else None."""
    kind = _v07_kind(attributes)
    if kind is not None:
        return attributes["subject"]
    match = _V08_TYPE.match(attributes.get("type", ""))
    return match.group("name") if match else None


def subject_of(attributes: Mapping[str, str]) -> str:
    """What a `topic` matches: the subject, or for a v0.8 vSphere event its class."""
    subject = attributes.get("subject")
    if subject:
        return subject
    event_type = attributes.get("type", "")
    if not event_type.startswith(V08_TYPE_PREFIX):
        return ""
    match = _V08_TYPE.match(event_type)
    return match.group("name") if match else ""


def _v07_kind(attributes: Mapping[str, str]) -> str | None:
    event_type = attributes.get("type", "")
    if not event_type.startswith(EVENT_TYPE_PREFIX) or not attributes.get("subject"):
        return None
    kind = event_type[len(EVENT_TYPE_PREFIX) :]
    return kind if kind in _KINDS else None


def shaped_attributes(attributes: Mapping[str, str], shape: Shape) -> Mapping[str, str]:
    """The attributes as a function of ``shape`` sees them (the same mapping if no change)."""
    if shape == V08:
        kind = _v07_kind(attributes)
        if kind is None:
            return attributes
        out: dict[str, str] = {}
        for key, value in attributes.items():
            if key == "type":
                out[key] = f"{V08_TYPE_PREFIX}{attributes['subject']}{V08_TYPE_SUFFIX}"
            elif key != "subject":
                out[key] = value
        out[EVENT_CLASS] = kind
        return out
    event_type = attributes.get("type", "")
    match = _V08_TYPE.match(event_type) if event_type.startswith(V08_TYPE_PREFIX) else None
    if match is None:
        return attributes
    name = match.group("name")
    kind = attributes.get(EVENT_CLASS, "")
    if kind not in _KINDS:
        # No (or an odd) eventclass: EventTypeIds are dotted, event classes are not.
        kind = "eventex" if "." in name else "event"
    out = {}
    for key, value in attributes.items():
        if key == "type":
            out[key] = EVENT_TYPE_PREFIX + kind
            out["subject"] = name
        elif key not in (EVENT_CLASS, "subject"):
            out[key] = value
    return out


def to_shape(event: Event, shape: Shape) -> Event:
    """``event`` in ``shape``: the same data, attributes renamed; unchanged if not vSphere's."""
    attributes = shaped_attributes(event.attributes, shape)
    if attributes is event.attributes:
        return event
    return Event(attributes, event.data)
