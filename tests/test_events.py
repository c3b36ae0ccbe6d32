"""CloudEvents in and out over HTTP, and vSphere events in VEBA's shape."""

from __future__ import annotations

import json
from typing import Any

import pytest

from veba.events import (
    BATCH_CONTENT_TYPE,
    STRUCTURED_CONTENT_TYPE,
    Event,
    InvalidEvent,
    event_id,
    parse_http,
    vsphere_event,
)

VC = "https://vcenter.example/sdk"
VC_UUID = "5a1b2c3d-0000-4000-8000-000000000001"

POWERED_ON_DATA = {
    "Key": 9001,
    "ChainId": 9001,
    "CreatedTime": "2026-03-01T12:34:56.789Z",
    "UserName": "VSPHERE.LOCAL\\Administrator",
    "Vm": {"Name": "web-01", "Vm": {"Type": "VirtualMachine", "Value": "vm-42"}},
    "FullFormattedMessage": "web-01 on esx-01 is powered on",
}


def powered_on() -> Event:
    return vsphere_event(
        POWERED_ON_DATA, event_class="VmPoweredOnEvent", source=VC, instance_uuid=VC_UUID
    )


def structured(event: Event) -> tuple[dict[str, str], bytes]:
    return {"Content-Type": STRUCTURED_CONTENT_TYPE}, event.to_json()


def batch(*events: Event) -> tuple[dict[str, str], bytes]:
    body = json.dumps([e.to_dict() for e in events]).encode()
    return {"Content-Type": BATCH_CONTENT_TYPE}, body


def attrs(**extra: Any) -> dict[str, Any]:
    base = {"specversion": "1.0", "id": "e-1", "source": "/test", "type": "com.example.test"}
    return {**base, **extra}


# -- parse_http -------------------------------------------------------------------


def test_the_same_event_reads_the_same_in_binary_structured_and_batch_mode() -> None:
    event = powered_on()
    binary_headers, binary_body = event.to_binary()

    (from_binary,) = parse_http(binary_headers, binary_body)
    (from_structured,) = parse_http(*structured(event))
    (from_batch,) = parse_http(*batch(event))

    assert from_binary == from_structured == from_batch == event
    assert dict(from_binary.attributes) == dict(event.attributes)
    assert from_binary.data == POWERED_ON_DATA


def test_binary_mode_headers_are_case_insensitive() -> None:
    event = powered_on()
    headers, body = event.to_binary()
    shouted = {k.upper(): v for k, v in headers.items()}
    assert parse_http(shouted, body) == [event]


def test_content_type_parameters_are_ignored() -> None:
    event = powered_on()
    headers = {"content-type": f"{STRUCTURED_CONTENT_TYPE}; charset=utf-8"}
    assert parse_http(headers, event.to_json()) == [event]


def test_batch_keeps_order() -> None:
    events = [
        vsphere_event(
            {**POWERED_ON_DATA, "Key": k},
            event_class="VmPoweredOnEvent",
            source=VC,
            instance_uuid=VC_UUID,
        )
        for k in (3, 1, 2)
    ]
    parsed = parse_http(*batch(*events))
    assert [e.data["Key"] for e in parsed] == [3, 1, 2]
    assert parsed == events


def test_empty_batch_is_no_events() -> None:
    assert parse_http({"content-type": BATCH_CONTENT_TYPE}, b"[]") == []


def test_binary_mode_with_a_text_body() -> None:
    headers = {f"ce-{k}": v for k, v in attrs(subject="hello").items()}
    headers["content-type"] = "text/plain"
    (event,) = parse_http(headers, b"hi there")
    assert event.data == "hi there"
    assert event.attributes["datacontenttype"] == "text/plain"
    assert event.subject == "hello"


@pytest.mark.parametrize(
    "time", ["2026-03-01T12:34:56.123456789Z", "2026-03-01T14:00:00+02:00", "2026-03-01T12:00:00Z"]
)
def test_times_are_kept_as_sent_in_every_mode(time: str) -> None:
    event = Event(attrs(time=time), {"a": 1})
    binary_headers = {f"ce-{k}": v for k, v in event.attributes.items()}
    binary_headers["content-type"] = "application/json"

    for headers, body in (
        (binary_headers, b'{"a": 1}'),
        event.to_binary(),
        structured(event),
        batch(event),
    ):
        (parsed,) = parse_http(headers, body)
        assert parsed.time == time, headers


def test_an_event_without_a_time_gets_none_made_up() -> None:
    event = Event(attrs(), {"a": 1})
    headers, body = event.to_binary()
    assert "ce-time" not in headers
    for mode in ((headers, body), structured(event), batch(event)):
        assert parse_http(*mode) == [event]


@pytest.mark.parametrize("content_type", [STRUCTURED_CONTENT_TYPE, BATCH_CONTENT_TYPE])
@pytest.mark.parametrize("body", [b"{not json", b"", b"\xff\xfe"])
def test_malformed_json_is_rejected(content_type: str, body: bytes) -> None:
    with pytest.raises(InvalidEvent, match=r"^body is not valid JSON"):
        parse_http({"content-type": content_type}, body)


@pytest.mark.parametrize("missing", ["id", "source", "type", "specversion"])
def test_structured_event_missing_an_attribute_names_it(missing: str) -> None:
    obj = attrs()
    del obj[missing]
    with pytest.raises(InvalidEvent, match=rf"^event: missing required attribute\(s\) {missing}$"):
        parse_http({"content-type": STRUCTURED_CONTENT_TYPE}, json.dumps(obj).encode())


def test_empty_attribute_counts_as_missing() -> None:
    with pytest.raises(InvalidEvent, match=r"missing required attribute\(s\) id, source$"):
        parse_http(
            {"content-type": STRUCTURED_CONTENT_TYPE}, json.dumps(attrs(id="", source="")).encode()
        )


@pytest.mark.parametrize("missing", ["id", "source", "type", "specversion"])
def test_batch_error_names_the_index_and_the_attribute(missing: str) -> None:
    bad = attrs(id="e-2")
    del bad[missing]
    body = json.dumps([attrs(), attrs(id="e-1b"), bad]).encode()
    with pytest.raises(
        InvalidEvent, match=rf"^event \[2\]: missing required attribute\(s\) {missing}$"
    ):
        parse_http({"content-type": BATCH_CONTENT_TYPE}, body)


@pytest.mark.parametrize("missing", ["id", "source", "type"])
def test_binary_event_missing_a_header_names_it(missing: str) -> None:
    headers = {f"ce-{k}": v for k, v in attrs().items() if k != missing}
    with pytest.raises(InvalidEvent, match=rf"^missing required header\(s\) ce-{missing}$"):
        parse_http(headers, b"")


@pytest.mark.parametrize("version", ["0.3", "2.0", ""])
def test_wrong_specversion_is_rejected(version: str) -> None:
    body = json.dumps(attrs(specversion=version)).encode()
    with pytest.raises(InvalidEvent, match="specversion"):
        parse_http({"content-type": STRUCTURED_CONTENT_TYPE}, body)
    with pytest.raises(InvalidEvent, match=r"^event \[0\]: .*specversion"):
        parse_http({"content-type": BATCH_CONTENT_TYPE}, f"[{body.decode()}]".encode())


def test_wrong_binary_specversion_is_rejected() -> None:
    headers = {f"ce-{k}": v for k, v in attrs(specversion="0.3").items()}
    with pytest.raises(InvalidEvent, match=r"^ce-specversion '0.3' is not supported \(1.0\)"):
        parse_http(headers, b"")


@pytest.mark.parametrize(
    "headers",
    [
        {"content-type": "application/json"},
        {},
        {"content-type": "text/plain", "ce-id": "e-1", "ce-source": "/x", "ce-type": "t"},
    ],
    ids=["plain-json", "no-headers", "ce-headers-without-specversion"],
)
def test_a_request_that_is_not_a_cloudevent_is_rejected(headers: dict[str, str]) -> None:
    with pytest.raises(InvalidEvent, match=r"^not a CloudEvent: expected ce-"):
        parse_http(headers, json.dumps(attrs()).encode())


@pytest.mark.parametrize("body", [b"[1]", b'"event"', b"null"])
def test_structured_body_must_be_an_object(body: bytes) -> None:
    with pytest.raises(InvalidEvent, match=r"^event: expected a JSON object"):
        parse_http({"content-type": STRUCTURED_CONTENT_TYPE}, body)


def test_batch_body_must_be_an_array() -> None:
    with pytest.raises(InvalidEvent, match=r"^batch body must be a JSON array"):
        parse_http({"content-type": BATCH_CONTENT_TYPE}, json.dumps(attrs()).encode())
    with pytest.raises(InvalidEvent, match=r"^event \[1\]: expected a JSON object, got str"):
        parse_http({"content-type": BATCH_CONTENT_TYPE}, json.dumps([attrs(), "x"]).encode())


def test_an_invalid_time_is_rejected() -> None:
    with pytest.raises(InvalidEvent, match=r"^event: "):
        parse_http(
            {"content-type": STRUCTURED_CONTENT_TYPE}, json.dumps(attrs(time="yesterday")).encode()
        )


# -- vSphere events ---------------------------------------------------------------


def test_vsphere_event_has_veba_shape() -> None:
    event = powered_on()
    assert dict(event.attributes) == {
        "specversion": "1.0",
        "id": event_id(VC_UUID, 9001),
        "source": VC,
        "type": "com.vmware.event.router/event",
        "subject": "VmPoweredOnEvent",
        "time": "2026-03-01T12:34:56.789Z",
        "datacontenttype": "application/json",
        "vsphereapiversion": "8.0.2.0",
    }
    assert event.data == POWERED_ON_DATA
    assert event.data is not POWERED_ON_DATA  # a copy: the caller's dict may be reused


def test_eventex_subject_is_its_event_type_id() -> None:
    data = {
        "Key": 7,
        "EventTypeId": "com.vmware.cis.tagging.attach",
        "CreatedTime": "2026-03-01T00:00:00Z",
    }
    event = vsphere_event(
        data, event_class="EventEx", source=VC, instance_uuid=VC_UUID, kind="eventex"
    )
    assert event.type == "com.vmware.event.router/eventex"
    assert event.subject == "com.vmware.cis.tagging.attach"

    extended = vsphere_event(
        {"Key": 8, "EventTypeId": "com.vmware.vc.VmDiskFailedEvent"},
        event_class="ExtendedEvent",
        source=VC,
        instance_uuid=VC_UUID,
        kind="extendedevent",
    )
    assert extended.type == "com.vmware.event.router/extendedevent"
    assert extended.subject == "com.vmware.vc.VmDiskFailedEvent"


def test_eventex_without_a_type_id_falls_back_to_the_class() -> None:
    event = vsphere_event(
        {"Key": 9}, event_class="EventEx", source=VC, instance_uuid=VC_UUID, kind="eventex"
    )
    assert event.subject == "EventEx"


def test_plain_events_ignore_an_event_type_id() -> None:
    data = {**POWERED_ON_DATA, "EventTypeId": "something.else"}
    event = vsphere_event(data, event_class="VmPoweredOnEvent", source=VC, instance_uuid=VC_UUID)
    assert event.subject == "VmPoweredOnEvent"


def test_ids_are_deterministic_per_vcenter_and_key() -> None:
    assert powered_on().id == powered_on().id
    assert event_id(VC_UUID, 1) == event_id(VC_UUID, 1)
    assert event_id(VC_UUID, 1) != event_id(VC_UUID, 2)
    assert event_id(VC_UUID, 1) != event_id("another-vcenter-uuid", 1)
    other_key = vsphere_event(
        {**POWERED_ON_DATA, "Key": 9002},
        event_class="VmPoweredOnEvent",
        source=VC,
        instance_uuid=VC_UUID,
    )
    assert other_key.id != powered_on().id


def test_missing_created_time_is_filled_with_now() -> None:
    event = vsphere_event(
        {"Key": 1}, event_class="VmPoweredOnEvent", source=VC, instance_uuid=VC_UUID
    )
    assert event.time.endswith("Z") and event.time.startswith("20")


def test_structured_json_round_trip() -> None:
    event = powered_on()
    again = Event.from_json(event.to_json())
    assert again == event
    assert dict(again.attributes) == dict(event.attributes)
    assert again.to_json() == event.to_json()
    assert json.loads(event.to_json())["data"] == POWERED_ON_DATA


def test_structured_json_keeps_data_last_and_null_data_out() -> None:
    obj = json.loads(powered_on().to_json())
    assert list(obj)[-1] == "data"
    bare = Event(attrs())
    assert "data" not in json.loads(bare.to_json())
    assert Event.from_json(bare.to_json()) == bare


def test_binary_round_trip() -> None:
    event = powered_on()
    headers, body = event.to_binary()
    assert headers["ce-id"] == event.id
    assert headers["ce-type"] == "com.vmware.event.router/event"
    assert headers["ce-subject"] == "VmPoweredOnEvent"
    assert headers["ce-time"] == "2026-03-01T12:34:56.789Z"
    assert headers["ce-vsphereapiversion"] == "8.0.2.0"
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == POWERED_ON_DATA
    assert parse_http(headers, body) == [event]


def test_binary_data_survives_every_mode_and_the_logs_json() -> None:
    raw = bytes(range(256))
    event = Event(attrs(datacontenttype="application/octet-stream"), raw)

    stored = Event.from_json(event.to_json())
    assert stored == event and stored.data == raw
    assert "data_base64" in json.loads(event.to_json())

    (from_binary,) = parse_http(*event.to_binary())
    (from_structured,) = parse_http(*structured(event))
    (from_batch,) = parse_http(*batch(event))
    assert from_binary == from_structured == from_batch == event


def test_bad_data_base64_is_rejected() -> None:
    body = json.dumps(attrs(data_base64="not base64!")).encode()
    with pytest.raises(InvalidEvent, match=r"^event: data_base64 is not base64"):
        parse_http({"content-type": STRUCTURED_CONTENT_TYPE}, body)
