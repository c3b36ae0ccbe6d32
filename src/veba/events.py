"""CloudEvents as veba carries them, and vSphere events in VEBA's exact shape.

An `Event` is an immutable pair of CloudEvent attributes (all strings, as they
travel in HTTP headers) and JSON data. It is what the log stores and what the
router and dispatcher look at. Parsing from and writing to HTTP goes through the
CNCF CloudEvents SDK so that validation follows the spec; the SDK's object is not
kept around because the hot path only needs the attributes and the JSON bytes.
"""

from __future__ import annotations

import base64
import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote, unquote

import orjson
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from dateutil.parser import isoparse

from veba import strictjson

__all__ = [
    "BATCH_CONTENT_TYPE",
    "EVENT_TYPE_PREFIX",
    "INVOCATION_TYPE",
    "STRUCTURED_CONTENT_TYPE",
    "Event",
    "InvalidEvent",
    "event_id",
    "format_time",
    "parse_http",
    "vsphere_event",
]

EVENT_TYPE_PREFIX = "com.vmware.event.router/"
# Reserved for async function calls kept in the log (see veba.invocations).
INVOCATION_TYPE = "dev.veba.function.invocation"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
DEFAULT_API_VERSION = "8.0.2.0"

# A fixed namespace so that the same vCenter event always gets the same id,
# whichever appliance or restart reads it.
_ID_NAMESPACE = uuid.UUID("8f0b3c4e-6a57-4d1e-9a38-3d1b5f0e2c71")
_FORMAT = JSONFormat()
_REQUIRED = ("id", "source", "type", "specversion")
_JSON_DATA = JSONFormat.JSON_CONTENT_TYPE_PATTERN


# 19 digits in a row may be an integer beyond 64 bits (or below -2**63).
_LONG_DIGITS = re.compile(r"[0-9]{19}")
_LONG_DIGITS_BYTES = re.compile(rb"[0-9]{19}")


def _loads(body: bytes | str) -> Any:
    # orjson is several times faster than json on the hot path, but it reads an
    # integer beyond 64 bits as a float, silently losing digits; json keeps them.
    # So a body with such a run of digits (rare: ids and keys are shorter) goes
    # to json, told to refuse what orjson refuses too: NaN, Infinity, 1e400.
    if isinstance(body, bytes):
        long = _LONG_DIGITS_BYTES.search(body) is not None
    else:
        long = _LONG_DIGITS.search(body) is not None
    if not long:
        return orjson.loads(body)
    return json.loads(body, parse_constant=_not_json, parse_float=_finite_float)


def _not_json(text: str) -> Any:
    raise ValueError(f"{text} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is beyond what a JSON number can hold")
    return value


def _dumps(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj)
    except TypeError:  # e.g. an integer beyond 64 bits
        return json.dumps(obj, separators=(",", ":")).encode()


def parse_time(value: str) -> datetime:
    """An RFC 3339 time; the C parser first, dateutil for the rarer forms."""
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return isoparse(value)  # type: ignore[no-any-return]


class InvalidEvent(ValueError):
    """Input that is not a valid CloudEvent; the message says what and where."""


@dataclass(frozen=True, slots=True)
class Event:
    """A CloudEvent: string attributes (id, source, type, subject, time, ...) and data."""

    attributes: Mapping[str, str]
    data: Any = None
    _body: list[bytes] = field(default_factory=list, repr=False, compare=False)

    @property
    def id(self) -> str:
        return self.attributes["id"]

    @property
    def source(self) -> str:
        return self.attributes["source"]

    @property
    def type(self) -> str:
        return self.attributes["type"]

    @property
    def subject(self) -> str:
        return self.attributes.get("subject", "")

    @property
    def time(self) -> str:
        return self.attributes.get("time", "")

    def to_dict(self) -> dict[str, Any]:
        """The structured-mode JSON object, attributes first, `data` last."""
        out: dict[str, Any] = dict(self.attributes)
        if isinstance(self.data, bytes):
            out["data_base64"] = base64.b64encode(self.data).decode()
        elif self.data is not None or "datacontenttype" in self.attributes:
            out["data"] = self.data
        return out

    def to_json(self) -> bytes:
        """Structured-mode JSON, exactly what VEBA's OpenFaaS processor posts."""
        if not self._body:
            # Kept as long as the event (the log's cache of recent events holds
            # thousands): an exact-size copy, since the bytes orjson returns keep
            # its whole working buffer, about ten times the JSON.
            self._body.append(memoryview(_dumps(self.to_dict())).tobytes())
        return self._body[0]

    def with_attribute(self, name: str, value: str) -> Event:
        """This event with one attribute more (a CloudEvents extension). Its
        structured JSON, if already made, is reused with the attribute appended
        rather than written anew: a copy of the bytes, not a serialisation."""
        event = Event({**self.attributes, name: value}, self.data)
        if self._body and name not in self.attributes:
            body = self._body[0]
            if body.endswith(b"}") and body != b"{}":
                extra = b"".join((b",", orjson.dumps(name), b":", orjson.dumps(value), b"}"))
                event._body.append(body[:-1] + extra)
        return event

    @classmethod
    def from_json(cls, body: bytes | str) -> Event:
        """Read a structured event that this appliance wrote (trusted, not re-validated)."""
        obj = _loads(body)
        data = obj.pop("data", None)
        if "data_base64" in obj:
            data = base64.b64decode(obj.pop("data_base64"))
        event = cls({k: str(v) for k, v in obj.items()}, data)
        if isinstance(body, bytes):
            event._body.append(body)
        return event

    def to_binary(self) -> tuple[dict[str, str], bytes]:
        """HTTP binary mode: `ce-` headers and the data as the body."""
        message = ce_http.to_binary(self.to_cloudevent(), _FORMAT)
        headers = dict(message.headers)
        # The body is ours, not the SDK's: it writes a list or a boolean as Python
        # would print it (`[1, 'a']`, `True`), which no receiver can read as JSON.
        body = _binary_body(self.data, self.attributes.get("datacontenttype"))
        # The time as we carry it, not as a datetime (which drops nanoseconds); and
        # none if the event has none (the SDK would make one up).
        headers.pop("ce-time", None)
        if "time" in self.attributes:
            headers["ce-time"] = quote(self.attributes["time"], safe=":+")
        return headers, body

    def to_cloudevent(self) -> BaseCloudEvent:
        attrs: dict[str, Any] = dict(self.attributes)
        if "time" in attrs:
            # The SDK wants a timezone-aware datetime; we carry the RFC 3339 string.
            when = parse_time(attrs["time"])
            attrs["time"] = when if when.tzinfo else when.replace(tzinfo=UTC)
        return CloudEvent(attrs, self.data)


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with a `Z`, as vCenter and VEBA write it."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _from_sdk(ce: BaseCloudEvent) -> Event:
    attrs: dict[str, str] = {}
    for name, value in ce.get_attributes().items():
        if value is None:
            continue
        attrs[name] = format_time(value) if isinstance(value, datetime) else str(value)
    return Event(attrs, ce.get_data())


# JSON data, as the CloudEvents SDK tells it; no content type means JSON too.
_JSON_CONTENT_TYPE = re.compile(r"^(application|text)/([a-z0-9\-.]+\+)?json(;.*)?$")


def _is_json(content_type: str | None) -> bool:
    return not content_type or bool(_JSON_CONTENT_TYPE.match(content_type.strip().lower()))


def _binary_body(data: Any, content_type: str | None) -> bytes:
    """A binary-mode body: bytes as they are, text as UTF-8 unless it is JSON data."""
    if data is None:
        return b""
    if isinstance(data, bytes):
        return data
    if isinstance(data, str) and not _is_json(content_type):
        return data.encode()
    return _dumps(data)


def _binary_data(body: bytes, content_type: str | None) -> Any:
    """Data from a binary-mode body, so that `_binary_body` gives the body back:
    JSON for a JSON content type, text for `text/*`, bytes for anything else.
    A body that is not what its type says is kept as text (or bytes), as the
    CloudEvents SDK keeps it."""
    if not body:
        return None
    textual = _is_json(content_type) or (content_type or "").strip().lower().startswith("text/")
    if _is_json(content_type):
        try:
            return _loads(body)
        except (ValueError, RecursionError):
            pass
    if textual:
        try:
            return body.decode()
        except UnicodeDecodeError:
            pass
    return body


def _read_structured(obj: Any, where: str) -> Event:
    if not isinstance(obj, dict):
        raise InvalidEvent(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [name for name in _REQUIRED if not obj.get(name)]
    if missing:
        raise InvalidEvent(f"{where}: missing required attribute(s) {', '.join(missing)}")
    if obj["specversion"] != "1.0":
        raise InvalidEvent(f"{where}: specversion {obj['specversion']!r} is not supported (1.0)")
    data = obj.get("data")
    if "data_base64" in obj:
        try:
            data = base64.b64decode(obj["data_base64"], validate=True)
        except (ValueError, TypeError) as exc:
            raise InvalidEvent(f"{where}: data_base64 is not base64: {exc}") from exc
    attrs = {k: v for k, v in obj.items() if k not in ("data", "data_base64") and v is not None}
    sdk_attrs = dict(attrs)
    try:
        if "time" in attrs:
            sdk_attrs["time"] = parse_time(attrs["time"])
        # The SDK checks the attributes against the spec; our event keeps the
        # values as they came (VEBA's times carry nanoseconds, datetime does not).
        CloudEvent(sdk_attrs, data)
    except (BaseCloudEventException, ValueError, TypeError) as exc:
        raise InvalidEvent(f"{where}: {exc}") from exc
    return Event({k: v if isinstance(v, str) else json.dumps(v) for k, v in attrs.items()}, data)


def parse_http(headers: Mapping[str, str], body: bytes) -> list[Event]:
    """Read CloudEvents from an HTTP request in binary, structured or batch mode.

    Raises `InvalidEvent` naming the problem (and the batch index) for bad input.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    content_type = lower.get("content-type", "").split(";")[0].strip().lower()
    if content_type in (STRUCTURED_CONTENT_TYPE, BATCH_CONTENT_TYPE):
        # What is accepted is stored exactly as sent: no NaN turned null, no big
        # integer rounded to a float, no lone surrogate (see veba.strictjson).
        try:
            obj = strictjson.loads(body, "body")
        except strictjson.JSONRefused as exc:
            raise InvalidEvent(str(exc).replace(": not valid JSON", " is not valid JSON")) from None
        if content_type == STRUCTURED_CONTENT_TYPE:
            return [_read_structured(obj, "event")]
        if not isinstance(obj, list):
            raise InvalidEvent("batch body must be a JSON array of structured events")
        return [_read_structured(item, f"event [{i}]") for i, item in enumerate(obj)]
    if "ce-specversion" not in lower:
        raise InvalidEvent(
            "not a CloudEvent: expected ce-* headers (binary mode) or Content-Type "
            f"{STRUCTURED_CONTENT_TYPE} or {BATCH_CONTENT_TYPE}"
        )
    missing = [f"ce-{name}" for name in _REQUIRED if not lower.get(f"ce-{name}")]
    if missing:
        raise InvalidEvent(f"missing required header(s) {', '.join(missing)}")
    if lower["ce-specversion"] != "1.0":
        raise InvalidEvent(f"ce-specversion {lower['ce-specversion']!r} is not supported (1.0)")
    # JSON data (and data without a Content-Type, which the SDK reads as JSON) is
    # read here, strictly, rather than by the SDK, which keeps NaN and big
    # integers and turns JSON it cannot read into a string; other data as
    # `to_binary` writes it: text for `text/*`, bytes for anything else.
    data_type = lower.get("content-type") or "application/json"
    json_data = bool(body) and _JSON_DATA.match(data_type) is not None
    try:
        # The SDK checks the attributes only.
        message = ce_http.HTTPMessage(headers=dict(lower), body=b"")
        event = _from_sdk(ce_http.from_binary(message, _FORMAT, CloudEvent))
        data = (
            strictjson.loads(body, "data")
            if json_data
            else _binary_data(body, lower.get("content-type"))
        )
    except strictjson.JSONRefused as exc:
        raise InvalidEvent(f"binary-mode event: {exc}") from None
    except (BaseCloudEventException, ValueError, TypeError) as exc:
        raise InvalidEvent(f"binary-mode event: {exc}") from exc
    # Keep the time as it came (or none if none came), as structured mode does.
    attributes = {k: v for k, v in event.attributes.items() if k != "time"}
    if "ce-time" in lower:
        attributes["time"] = unquote(lower["ce-time"])
    return [Event(attributes, data)]


def event_id(instance_uuid: str, key: int) -> str:
    """Deterministic CloudEvent id of a vCenter event, so a re-read is a duplicate."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{instance_uuid}/{key}"))


Kind = Literal["event", "eventex", "extendedevent"]


def vsphere_event(
    data: Mapping[str, Any],
    *,
    event_class: str,
    source: str,
    instance_uuid: str,
    kind: Kind = "event",
    api_version: str = DEFAULT_API_VERSION,
) -> Event:
    """Wrap govmomi-shaped event data (PascalCase keys) as VEBA's router does.

    `subject` is the event class, or for EventEx/ExtendedEvent its EventTypeId.
    """
    subject = str(data.get("EventTypeId") or event_class) if kind != "event" else event_class
    attrs = {
        "specversion": "1.0",
        "id": event_id(instance_uuid, int(data["Key"])),
        "source": source,
        "type": EVENT_TYPE_PREFIX + kind,
        "subject": subject,
        "time": str(data.get("CreatedTime") or format_time(datetime.now(UTC))),
        "datacontenttype": "application/json",
        "vsphereapiversion": api_version,
    }
    return Event(attrs, dict(data))
