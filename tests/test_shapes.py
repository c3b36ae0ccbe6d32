"""VEBA's two event shapes: v0.7 (the log's) and v0.8 (Knative era), converted both ways;
and routing that understands either naming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from veba.events import Event, vsphere_event
from veba.routing import Router, compile_subscription
from veba.shapes import V07, V08, parse_shape, shaped_attributes, to_shape, vsphere_name

DATA = Path(__file__).parent / "data"


def powered_off() -> Event:
    data = json.loads((DATA / "vm-powered-off.data.json").read_text())
    return vsphere_event(
        data,
        event_class="VmPoweredOffEvent",
        source="https://vcenter-01:443/sdk",
        instance_uuid="vc-uuid",
        api_version="8.0.2.0",
    )


def eventex() -> Event:
    doc = json.loads((DATA / "cloudevent-eventex-resource-exhaustion.json").read_text())
    return vsphere_event(
        doc["data"],
        event_class="EventEx",
        source=doc["source"],
        instance_uuid="vc-uuid",
        kind="eventex",
    )


def test_v07_to_v08_is_what_vebas_knative_broker_delivered() -> None:
    v07 = powered_off()
    v08 = to_shape(v07, V08)
    assert dict(v08.attributes) == {
        "specversion": "1.0",
        "id": v07.id,  # the log's id: a UUID, as use-eventspec.md shows
        "source": "https://vcenter-01:443/sdk",
        "type": "com.vmware.vsphere.VmPoweredOffEvent.v0",
        "time": v07.time,
        "datacontenttype": "application/json",
        "vsphereapiversion": "8.0.2.0",
        "eventclass": "event",
    }
    assert v08.data == v07.data and v08.data["Key"] == v07.data["Key"]
    # Binary mode: the attributes travel as ce- headers, the body is the vCenter event.
    headers, body = v08.to_binary()
    assert headers["ce-type"] == "com.vmware.vsphere.VmPoweredOffEvent.v0"
    assert headers["ce-eventclass"] == "event"
    assert "ce-subject" not in headers
    assert json.loads(body) == v07.data


def test_eventex_type_is_its_event_type_id() -> None:
    v08 = to_shape(eventex(), V08)
    assert v08.type == "com.vmware.vsphere.vim.event.ResourceExhaustionStatusChangedEvent.v0"
    assert v08.attributes["eventclass"] == "eventex"


@pytest.mark.parametrize("make", [powered_off, eventex])
def test_round_trip_both_ways(make: object) -> None:
    v07 = make()  # type: ignore[operator]
    v08 = to_shape(v07, V08)
    assert dict(to_shape(v08, V07).attributes) == dict(v07.attributes)
    assert dict(to_shape(to_shape(v08, V07), V08).attributes) == dict(v08.attributes)
    # Already in the asked shape: the very same event (no copy, its cached body kept).
    assert to_shape(v07, V07) is v07 and to_shape(v08, V08) is v08


def test_a_v08_event_without_eventclass_gets_a_kind_from_its_name() -> None:
    plain = {"specversion": "1.0", "id": "1", "source": "s", "type": "com.vmware.vsphere.X.v0"}
    assert shaped_attributes(plain, V07)["type"] == "com.vmware.event.router/event"
    dotted = dict(plain, type="com.vmware.vsphere.com.vmware.cis.tagging.attach.v0")
    converted = shaped_attributes(dotted, V07)
    assert converted["type"] == "com.vmware.event.router/eventex"
    assert converted["subject"] == "com.vmware.cis.tagging.attach"


def test_events_that_are_not_vspheres_pass_unchanged() -> None:
    other = Event({"specversion": "1.0", "id": "1", "source": "ci", "type": "build.done"}, {"a": 1})
    with_subject = Event(dict(other.attributes, subject="VmPoweredOffEvent"), None)
    horizon = Event(dict(other.attributes, type="com.vmware.event.router/horizon", subject="X"))
    for event in (other, with_subject, horizon):
        assert to_shape(event, V07) is event and to_shape(event, V08) is event
        assert vsphere_name(event.attributes) is None


def test_shape_spellings() -> None:
    assert parse_shape("v0.8") == V08 and parse_shape(" 0.7 ") == V07
    with pytest.raises(ValueError, match=r"^unknown event shape 'v1'; expected v0.7 or v0.8"):
        parse_shape("v1")


# -- routing in either naming ---------------------------------------------------------


OFF_V07 = powered_off()
OFF_V08 = to_shape(OFF_V07, V08)
ON_V07 = vsphere_event(
    {"Key": 7, "CreatedTime": "2026-01-01T00:00:00Z"},
    event_class="VmPoweredOnEvent",
    source="https://vcenter-01:443/sdk",
    instance_uuid="vc-uuid",
)


@pytest.mark.parametrize(
    ("topic", "filters"),
    [
        ("VmPoweredOffEvent", None),
        ("com.vmware.vsphere.VmPoweredOffEvent.v0", None),
        (None, {"attributes": {"type": "com.vmware.vsphere.VmPoweredOffEvent.v0"}}),
        (None, [{"exact": {"subject": "VmPoweredOffEvent"}}]),
        (
            None,
            [
                {"exact": {"type": "com.vmware.event.router/event"}},
                {"suffix": {"subject": "OffEvent"}},
            ],
        ),
        (None, [{"prefix": {"type": "com.vmware.vsphere.VmPoweredOff"}}]),
        (None, [{"not": {"exact": {"type": "com.vmware.vsphere.VmPoweredOnEvent.v0"}}}]),
        (None, [{"exact": {"eventclass": "event"}}, {"suffix": {"type": "OffEvent.v0"}}]),
    ],
)
@pytest.mark.parametrize("shape", [V07, V08])
def test_either_naming_matches_the_event_in_either_shape(
    topic: str | None, filters: object, shape: str
) -> None:
    sub = compile_subscription("fn", topic, filters, shape=shape)  # type: ignore[arg-type]
    assert sub.matches(OFF_V07) and sub.matches(OFF_V08)
    assert not sub.matches(ON_V07) and not sub.matches(to_shape(ON_V07, V08))


def test_a_filter_in_neither_naming_is_read_in_the_subscriptions_shape() -> None:
    v08_fn = compile_subscription("fn", None, [{"prefix": {"type": "com.vmware.v"}}], shape=V08)
    v07_fn = compile_subscription("fn", None, [{"prefix": {"type": "com.vmware.v"}}], shape=V07)
    assert v08_fn.matches(OFF_V07) and not v07_fn.matches(OFF_V07)


def test_router_sends_one_logged_event_to_functions_of_both_namings() -> None:
    router = Router(
        [
            compile_subscription("v07-topic", "VmPoweredOffEvent"),
            compile_subscription(
                "v08-trigger",
                None,
                {"attributes": {"type": "com.vmware.vsphere.VmPoweredOffEvent.v0"}},
                shape=V08,
            ),
            compile_subscription("v08-topic", "com.vmware.vsphere.VmPoweredOffEvent.v0"),
        ]
    )
    assert sorted(router.route(OFF_V07)) == ["v07-topic", "v08-topic", "v08-trigger"]
    assert sorted(router.route(OFF_V08)) == ["v07-topic", "v08-topic", "v08-trigger"]
    assert router.route(ON_V07) == []
