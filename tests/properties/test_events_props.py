"""CloudEvents over HTTP, as properties: every valid event survives each mode
unchanged, and no input makes `parse_http` raise anything but `InvalidEvent`."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.properties.strategies import any_text, json_values
from veba.events import (
    BATCH_CONTENT_TYPE,
    STRUCTURED_CONTENT_TYPE,
    Event,
    InvalidEvent,
    format_time,
    parse_http,
)

_CONTEXT = {"specversion", "id", "source", "type", "subject", "time", "datacontenttype"}
_CONTEXT |= {"dataschema", "data", "data_base64"}

# CloudEvents' String type: any Unicode but control characters, surrogates and
# non-characters.
ce_text = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Cn")), min_size=1, max_size=30)
extension_names = st.from_regex(r"[a-z0-9]{1,20}", fullmatch=True).filter(
    lambda name: name not in _CONTEXT
)
aware_times = st.datetimes(
    min_value=datetime(1, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
    ),
)


@st.composite
def times(draw: st.DrawFn) -> str:
    """RFC 3339 as senders write it: vCenter's `Z`, offsets, VEBA's nanoseconds."""
    when = draw(aware_times)
    text = draw(st.sampled_from([format_time(when), when.isoformat()]))
    if draw(st.booleans()) and text.endswith("Z") and "." in text:
        text = text[:-1] + draw(st.from_regex(r"[0-9]{3}", fullmatch=True)) + "Z"
    return text


@st.composite
def events(draw: st.DrawFn, *, binary_data: bool = True) -> Event:
    attributes = {
        "specversion": "1.0",
        "id": draw(ce_text),
        "source": draw(ce_text),
        "type": draw(ce_text),
    }
    for name, strategy in (("subject", ce_text), ("time", times())):
        if draw(st.booleans()):
            attributes[name] = draw(strategy)
    for name in draw(st.lists(extension_names, max_size=3, unique=True)):
        attributes[name] = draw(ce_text)
    data: Any
    if binary_data and draw(st.integers(0, 4)) == 0:
        data = draw(st.binary(min_size=1, max_size=40))
        attributes["datacontenttype"] = "application/octet-stream"
    else:
        data = draw(json_values())
        if data is not None or draw(st.booleans()):
            attributes["datacontenttype"] = "application/json"
    return Event(attributes, data)


def structured(event: Event) -> tuple[dict[str, str], bytes]:
    return {"Content-Type": STRUCTURED_CONTENT_TYPE}, event.to_json()


def batch(events: list[Event]) -> tuple[dict[str, str], bytes]:
    return {"Content-Type": BATCH_CONTENT_TYPE}, json.dumps([e.to_dict() for e in events]).encode()


# -- round trips ------------------------------------------------------------------


@given(events())
def test_structured_mode_gives_back_the_same_event(event: Event) -> None:
    assert parse_http(*structured(event)) == [event]


@given(st.lists(events(), max_size=5))
def test_batch_mode_gives_back_the_same_events_in_order(sent: list[Event]) -> None:
    assert parse_http(*batch(sent)) == sent


@given(events())
def test_binary_mode_gives_back_the_same_event(event: Event) -> None:
    assert parse_http(*event.to_binary()) == [event]


@given(events())
def test_what_the_appliance_wrote_it_reads_back(event: Event) -> None:
    # The log stores `to_json` and reads it with `from_json`.
    assert Event.from_json(event.to_json()) == event


# -- malformed input --------------------------------------------------------------

content_types = st.sampled_from(
    [STRUCTURED_CONTENT_TYPE, BATCH_CONTENT_TYPE, "application/json", "text/plain", ""]
)
header_names = st.sampled_from(
    ["ce-specversion", "ce-id", "ce-source", "ce-type", "ce-time", "ce-subject", "ce-dataschema"]
) | st.from_regex(r"ce-[a-zA-Z0-9]{0,12}", fullmatch=True)
# As an ASGI server hands them over: latin-1 text, percent escapes and all.
header_values = st.sampled_from(
    ["1.0", "0.3", "", "2026-01-01T00:00:00Z", "%ZZ", "%FF", "%C3%A9"]
) | st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=30)


def parses_or_refuses(headers: dict[str, str], body: bytes) -> list[Event] | None:
    """`parse_http`'s only ways out: events, or `InvalidEvent`."""
    try:
        got = parse_http(headers, body)
    except InvalidEvent as exc:
        assert str(exc)  # says what is wrong
        return None
    for event in got:
        assert all(isinstance(value, str) for value in event.attributes.values())
        # What it accepts, the log can store and read back, and a dead-letter sink
        # or a Knative processor can send on in binary mode.
        assert Event.from_json(event.to_json()) == event
        event.to_binary()
    return got


@given(
    st.dictionaries(header_names, header_values, max_size=6),
    content_types,
    st.binary(max_size=200),
)
@example({"ce-specversion": "1.0"}, "", b"")
@example({}, STRUCTURED_CONTENT_TYPE, b"[" * 100_000)
@example({}, BATCH_CONTENT_TYPE, b'{"a":' * 5000)
@example({}, STRUCTURED_CONTENT_TYPE, b"\xff\xfe")
def test_any_request_parses_or_is_refused_as_invalid(
    headers: dict[str, str], content_type: str, body: bytes
) -> None:
    if content_type:
        headers = {**headers, "Content-Type": content_type}
    parses_or_refuses(headers, body)


def _mutations() -> st.SearchStrategy[tuple[str, Any]]:
    names = st.sampled_from(sorted(_CONTEXT)) | extension_names
    return st.tuples(names, json_values(4) | st.just(_DELETE))


_DELETE = object()


@st.composite
def damaged_objects(draw: st.DrawFn) -> dict[str, Any]:
    """A valid structured event with a few attributes changed to anything or removed."""
    obj = draw(events()).to_dict()
    for name, value in draw(st.lists(_mutations(), min_size=1, max_size=3)):
        if value is _DELETE:
            obj.pop(name, None)
        else:
            obj[name] = value
    if draw(st.booleans()):
        obj["data_base64"] = draw(
            st.sampled_from(["", "=", "AA", "AA==", "not base64!"]) | any_text
        )
    return obj


@given(damaged_objects())
@example({"specversion": "1.0", "id": "a", "source": "s", "type": "t", "time": 5})
@example({"specversion": "1.0", "id": "a", "source": "s", "type": "t", "time": "0000-01-01"})
def test_a_damaged_structured_event_parses_or_is_refused(obj: dict[str, Any]) -> None:
    body = json.dumps(obj).encode()
    parses_or_refuses({"Content-Type": STRUCTURED_CONTENT_TYPE}, body)
    parses_or_refuses({"Content-Type": BATCH_CONTENT_TYPE}, json.dumps([obj]).encode())


@given(damaged_objects())
def test_a_damaged_binary_event_parses_or_is_refused(obj: dict[str, Any]) -> None:
    headers = {
        f"ce-{name}": value if isinstance(value, str) else json.dumps(value)
        for name, value in obj.items()
        if name not in ("data", "data_base64", "datacontenttype")
    }
    headers["Content-Type"] = str(obj.get("datacontenttype", "application/json"))
    body = json.dumps(obj.get("data")).encode()
    if "data_base64" in obj:
        body = base64.b64encode(str(obj["data_base64"]).encode())
    parses_or_refuses(headers, body)


def test_deeply_nested_json_is_refused_as_invalid() -> None:
    # Found by the property above: the JSON fallback recursed until RecursionError,
    # which the webhook answered with a 500.
    with pytest.raises(InvalidEvent, match=r"not valid JSON|nested deeper"):
        parse_http({"Content-Type": STRUCTURED_CONTENT_TYPE}, b"[" * 100_000)
