"""`Event`: a vSphere CloudEvent with NULL-safe paths into its data.

```python
event = Event(req)                        # JSON text/bytes, a dict, ctx's CloudEvent...
name = event.get("data.Vm.Name")          # None when Vm is null or absent
vm = event.require("data.Vm.Vm.Value")    # MissingField names the path and the event
event.vm                                  # MoRef(type='VirtualMachine', value='vm-56', name='web-01')
event.vm.moref                            # 'vim.VirtualMachine:vm-56'
```
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Event", "MissingField", "MoRef", "NotACloudEvent"]

_MISSING: Any = object()
# CloudEvents context attributes: a path starting with one reads the attribute.
_ATTRIBUTES = frozenset(
    ("id", "source", "specversion", "type", "subject", "time", "datacontenttype", "dataschema")
)


class NotACloudEvent(ValueError):
    """What the handler was given is not a CloudEvent."""

    http_status = 400  # the same request would fail again: not retried


class MissingField(LookupError):
    """The event lacks a field the handler requires: the path, the event and why."""

    http_status = 422  # the same event would fail again: not retried, straight to the DLQ

    def __init__(
        self, path: str, event_id: str | None, subject: str | None = None, reason: str = ""
    ) -> None:
        self.path = path
        self.event_id = event_id
        self.subject = subject
        where = f"event {event_id or '(no id)'}" + (f" ({subject})" if subject else "")
        super().__init__(f"{where} has no {path}" + (f": {reason}" if reason else ""))

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True, slots=True)
class MoRef:
    """A managed object reference as VEBA's events carry it (``{"Type", "Value"}``)."""

    type: str
    value: str
    name: str | None = None

    @property
    def moref(self) -> str:
        """``vim.VirtualMachine:vm-56``, as pyVmomi prints a managed object."""
        return f"vim.{self.type}:{self.value}"

    def __str__(self) -> str:
        return self.moref

    def resolve(self, si: Any) -> Any:
        """The pyVmomi managed object on the session ``si`` (see `vcenter_session`)."""
        from pyVmomi import vim  # only functions that use vCenter need pyvmomi

        return getattr(vim, self.type)(self.value, si._stub)


def _moref(value: Any, name: str | None = None) -> MoRef | None:
    if isinstance(value, Mapping):
        kind, ref = value.get("Type"), value.get("Value")
        if isinstance(kind, str) and kind and ref is not None:
            return MoRef(kind, str(ref), name)
    return None


class Event:
    """A read-only CloudEvent: attributes, ``data``, and NULL-safe dotted paths.

    Built from the structured-mode JSON (``str``/``bytes``), its ``dict``, the
    ``event`` of a veba-cloudevent handler, the ``event`` of a python3-http handler
    (structured or binary mode), a ``veba.events.Event``, or another `Event`.
    """

    __slots__ = ("_attrs", "_data")

    def __init__(self, source: Any) -> None:
        self._attrs, self._data = _parse(source)

    # -- attributes ---------------------------------------------------------------

    @property
    def id(self) -> str | None:
        return self._attr("id")

    @property
    def source(self) -> str | None:
        return self._attr("source")

    @property
    def type(self) -> str | None:
        return self._attr("type")

    @property
    def subject(self) -> str | None:
        """VEBA puts the vCenter event class here: ``VmPoweredOnEvent``."""
        return self._attr("subject")

    @property
    def time(self) -> str | None:
        return self._attr("time")

    @property
    def traceparent(self) -> str | None:
        """The W3C trace context veba sent with this attempt (CloudEvents'
        distributed-tracing extension): pass it on in outbound calls as the
        ``traceparent`` header, so they join the event's trace."""
        return self._attr("traceparent")

    @property
    def tracestate(self) -> str | None:
        return self._attr("tracestate")

    @property
    def attributes(self) -> dict[str, Any]:
        return dict(self._attrs)

    @property
    def data(self) -> Any:
        return self._data

    def _attr(self, name: str) -> str | None:
        value = self._attrs.get(name)
        return None if value is None else str(value)

    # -- vSphere fields -----------------------------------------------------------------

    @property
    def key(self) -> int | None:
        """vCenter's event key (``data.Key``)."""
        value = self.get("data.Key")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def user(self) -> str | None:
        value = self.get("data.UserName")
        return None if value is None else str(value)

    @property
    def message(self) -> str | None:
        value = self.get("data.FullFormattedMessage")
        return None if value is None else str(value)

    @property
    def vm(self) -> MoRef | None:
        return self.entity("Vm")

    @property
    def host(self) -> MoRef | None:
        return self.entity("Host")

    @property
    def datacenter(self) -> MoRef | None:
        return self.entity("Datacenter")

    @property
    def compute_resource(self) -> MoRef | None:
        return self.entity("ComputeResource")

    @property
    def cluster(self) -> MoRef | None:
        """The compute resource when it is a cluster (not a standalone host's)."""
        ref = self.compute_resource
        return ref if ref is not None and ref.type == "ClusterComputeResource" else None

    @property
    def datastore(self) -> MoRef | None:
        return self.entity("Ds")

    @property
    def network(self) -> MoRef | None:
        return self.entity("Net")

    @property
    def dvs(self) -> MoRef | None:
        return self.entity("Dvs")

    def entity(self, field: str) -> MoRef | None:
        """The object a data field names: ``{"Name": ..., "<Kind>": {"Type", "Value"}}``
        (``Vm``, ``Host``, ``SourceHost``, ``Ds``, ...), or a bare ``{"Type", "Value"}``."""
        value = self.get(f"data.{field}")
        if not isinstance(value, Mapping):
            return None
        direct = _moref(value)
        if direct is not None:
            return direct
        name = value.get("Name")
        name = None if name is None else str(name)
        for inner in value.values():
            ref = _moref(inner, name)
            if ref is not None:
                return ref
        return None

    @property
    def arguments(self) -> dict[str, Any]:
        """An EventEx's ``Arguments`` list as a mapping (``{"newStatus": "green"}``)."""
        out: dict[str, Any] = {}
        items = self.get("data.Arguments")
        if isinstance(items, list):
            for item in items:
                if isinstance(item, Mapping) and "Key" in item:
                    out[str(item["Key"])] = item.get("Value")
        return out

    # -- paths ---------------------------------------------------------------------

    def get(self, path: str, default: Any = None) -> Any:
        """The value at a dotted path, or ``default`` when any step is absent or null.

        ``data.Vm.Vm.Value``; list items by index (``data.Arguments.0.Value``);
        attributes by name (``subject``); a path that starts with neither ``data``
        nor an attribute name is read from the data (``Vm.Name``).
        """
        value, _ = self._walk(path)
        return default if value is _MISSING or value is None else value

    def require(self, path: str) -> Any:
        """The value at ``path``; `MissingField` (naming the path, the event and
        where the path broke) when it is absent or null."""
        value, reason = self._walk(path)
        if value is _MISSING or value is None:
            raise MissingField(path, self.id, self.subject, reason or "it is null")
        return value

    def _walk(self, path: str) -> tuple[Any, str]:
        if not isinstance(path, str) or not path:
            raise TypeError(f"a path is a non-empty dotted string, got {path!r}")
        parts = path.split(".")
        if parts[0] == "data":
            node, done, parts = self._data, "data", parts[1:]
        elif parts[0] in _ATTRIBUTES or (parts[0] in self._attrs and len(parts) == 1):
            if parts[0] not in self._attrs:
                return _MISSING, f"the event has no attribute {parts[0]!r}"
            node, done, parts = self._attrs[parts[0]], parts[0], parts[1:]
        else:
            node, done = self._data, "data"
        for part in parts:
            if node is None:
                return _MISSING, f"{done} is null"
            if isinstance(node, Mapping):
                if part not in node:
                    return _MISSING, f"{done} has no key {part!r}"
                node = node[part]
            elif isinstance(node, list | tuple):
                try:
                    node = node[int(part)]
                except ValueError:
                    return _MISSING, f"{done} is a list; {part!r} is not an index"
                except IndexError:
                    return _MISSING, f"{done} has {len(node)} item(s), no index {part}"
            else:
                return _MISSING, f"{done} is a {type(node).__name__}, not an object"
            done = f"{done}.{part}"
        return node, ""

    # -- as a mapping, and back to JSON -------------------------------------------------

    def __getitem__(self, name: str) -> Any:
        if name == "data":
            return self._data
        return self._attrs[name]

    def __contains__(self, name: object) -> bool:
        return name == "data" or name in self._attrs

    def to_dict(self) -> dict[str, Any]:
        """The structured-mode JSON object."""
        out = dict(self._attrs)
        if isinstance(self._data, bytes | bytearray):
            out["data_base64"] = base64.b64encode(self._data).decode("ascii")
        elif self._data is not None:
            out["data"] = self._data
        return out

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict()).encode()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Event(id={self.id!r}, subject={self.subject!r})"


def _parse(source: Any) -> tuple[dict[str, Any], Any]:
    if isinstance(source, Event):
        return dict(source._attrs), source._data
    if isinstance(source, str | bytes | bytearray | memoryview):
        return _from_doc(_json(bytes(source) if not isinstance(source, str) else source))
    if isinstance(source, Mapping):
        return _from_doc(source)
    attributes = getattr(source, "attributes", None)
    if isinstance(attributes, Mapping) and hasattr(source, "data"):
        # The worker's CloudEvent (veba-cloudevent), or veba.events.Event.
        return dict(attributes), source.data
    body, headers = getattr(source, "body", None), getattr(source, "headers", None)
    if isinstance(body, bytes | bytearray) and headers is not None:  # python3-http's event
        return _from_http(bytes(body), headers)
    raise NotACloudEvent(
        f"cannot make an Event of a {type(source).__name__}: expected the CloudEvent as "
        "JSON text or bytes, a dict, or the event object a handler receives"
    )


def _json(text: str | bytes) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise NotACloudEvent(f"not a CloudEvent: the body is not JSON ({exc})") from None


def _from_doc(doc: Any) -> tuple[dict[str, Any], Any]:
    if not isinstance(doc, Mapping):
        raise NotACloudEvent(f"not a CloudEvent: expected a JSON object, got {type(doc).__name__}")
    if "specversion" not in doc:
        if "Key" in doc and "CreatedTime" in doc:
            raise NotACloudEvent(
                "not a CloudEvent: this looks like a vCenter event's data; pass the whole "
                "CloudEvent (its 'data' is this)"
            )
        names = sorted(map(str, doc))
        keys = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "") or "none"
        raise NotACloudEvent(f"not a CloudEvent: no 'specversion' attribute (keys: {keys})")
    attrs = {str(k): v for k, v in doc.items() if k not in ("data", "data_base64")}
    data = doc.get("data")
    if "data_base64" in doc:
        try:
            data = base64.b64decode(doc["data_base64"], validate=True)
        except (ValueError, TypeError) as exc:
            raise NotACloudEvent(f"not a CloudEvent: bad data_base64 ({exc})") from None
    return attrs, data


def _from_http(body: bytes, headers: Any) -> tuple[dict[str, Any], Any]:
    lowered = {str(k).lower(): v for k, v in headers.items()}
    if "ce-specversion" not in lowered:
        return _from_doc(_json(body))
    attrs: dict[str, Any] = {k[3:]: v for k, v in lowered.items() if k.startswith("ce-")}
    data: Any = body or None
    ctype = lowered.get("content-type")
    if ctype:
        attrs["datacontenttype"] = ctype
        if "json" in ctype and body:
            data = _json(body)
    return attrs, data
