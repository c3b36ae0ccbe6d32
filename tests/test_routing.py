"""Which functions get which events: `topic` annotations and Knative-style filters."""

from __future__ import annotations

from typing import Any

import pytest

from veba.events import Event, vsphere_event
from veba.routing import Router, SubscriptionError, compile_subscription, dotted_to_class


def vm_event(event_class: str = "VmPoweredOnEvent", key: int = 1, source: str = "vc1") -> Event:
    data = {"Key": key, "CreatedTime": "2026-01-01T00:00:00Z", "Vm": {"Name": "web-01"}}
    return vsphere_event(data, event_class=event_class, source=source, instance_uuid=source)


def eventex(type_id: str, key: int = 2) -> Event:
    data = {"Key": key, "EventTypeId": type_id, "CreatedTime": "2026-01-01T00:00:00Z"}
    return vsphere_event(
        data, event_class="EventEx", source="vc1", instance_uuid="vc1", kind="eventex"
    )


POWERED_ON = vm_event("VmPoweredOnEvent")
POWERED_OFF = vm_event("VmPoweredOffEvent")
TAG_ATTACH = eventex("com.vmware.cis.tagging.attach")
TAG_DETACH = eventex("com.vmware.cis.tagging.detach")
ALL = [POWERED_ON, POWERED_OFF, TAG_ATTACH, TAG_DETACH]


def matching(topic: str | None, filters: Any = None) -> list[str]:
    sub = compile_subscription("fn", topic, filters)
    return [e.subject for e in ALL if sub.matches(e)]


# -- topics -----------------------------------------------------------------------


def test_topic_names_event_classes() -> None:
    assert matching("VmPoweredOnEvent") == ["VmPoweredOnEvent"]
    assert matching("VmPoweredOnEvent,VmPoweredOffEvent") == [
        "VmPoweredOnEvent",
        "VmPoweredOffEvent",
    ]
    assert matching(" VmPoweredOnEvent ,  VmPoweredOffEvent, ") == [
        "VmPoweredOnEvent",
        "VmPoweredOffEvent",
    ]
    assert matching("VmCreatedEvent") == []


def test_star_matches_every_event() -> None:
    assert matching("*") == [e.subject for e in ALL]
    assert matching("VmPoweredOnEvent, *") == [e.subject for e in ALL]


@pytest.mark.parametrize(
    ("topic", "event_class"),
    [
        ("vm.powered.on", "VmPoweredOnEvent"),
        ("vm.powered.off", "VmPoweredOffEvent"),
        ("drs.vm.powered.on", "DrsVmPoweredOnEvent"),
        ("vm.reconfigured", "VmReconfiguredEvent"),
    ],
)
def test_legacy_dotted_topics_match_the_event_class(topic: str, event_class: str) -> None:
    assert dotted_to_class(topic) == event_class
    sub = compile_subscription("fn", topic)
    assert sub.matches(vm_event(event_class))
    assert not sub.matches(vm_event("VmCreatedEvent"))


def test_eventex_ids_with_dots_still_match_literally() -> None:
    assert matching("com.vmware.cis.tagging.attach") == ["com.vmware.cis.tagging.attach"]
    assert matching("com.vmware.cis.tagging.attach,vm.powered.on") == [
        "VmPoweredOnEvent",
        "com.vmware.cis.tagging.attach",
    ]


def test_no_topic_and_no_filters_means_no_events() -> None:
    for topic in (None, "", "   ", " , "):
        sub = compile_subscription("fn", topic)
        assert [e for e in ALL if sub.matches(e)] == [], topic
        assert Router([sub]).route(POWERED_ON) == []


def test_topic_must_be_a_string() -> None:
    with pytest.raises(SubscriptionError, match=r"^fn\.annotations\.topic: expected"):
        compile_subscription("f", ["VmPoweredOnEvent"], where="fn")  # type: ignore[arg-type]


# -- filters ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ([{"exact": {"subject": "VmPoweredOnEvent"}}], ["VmPoweredOnEvent"]),
        (
            [{"exact": {"type": "com.vmware.event.router/eventex"}}],
            [TAG_ATTACH.subject, TAG_DETACH.subject],
        ),
        ([{"exact": {"subject": "VmPoweredOnEvent", "source": "vc2"}}], []),
        (
            [{"prefix": {"subject": "com.vmware.cis.tagging."}}],
            [TAG_ATTACH.subject, TAG_DETACH.subject],
        ),
        ([{"prefix": {"subject": "VmPowered"}}], ["VmPoweredOnEvent", "VmPoweredOffEvent"]),
        ([{"suffix": {"subject": "OffEvent"}}], ["VmPoweredOffEvent"]),
        ([{"suffix": {"subject": ".attach"}}], ["com.vmware.cis.tagging.attach"]),
        # prefix/suffix on a missing attribute never match, even with an empty value
        ([{"prefix": {"dataschema": ""}}], []),
        ([{"exact": {"dataschema": ""}}], []),
        # attribute names are case-insensitive, as CloudEvents attribute names are lower case
        ([{"exact": {"Subject": "VmPoweredOnEvent"}}], ["VmPoweredOnEvent"]),
        # extension attributes can be filtered on
        ([{"exact": {"vsphereapiversion": "8.0.2.0"}}], [e.subject for e in ALL]),
        (
            [{"all": [{"prefix": {"subject": "VmPowered"}}, {"suffix": {"subject": "OnEvent"}}]}],
            ["VmPoweredOnEvent"],
        ),
        (
            [
                {
                    "any": [
                        {"exact": {"subject": "VmPoweredOffEvent"}},
                        {"suffix": {"subject": "detach"}},
                    ]
                }
            ],
            ["VmPoweredOffEvent", "com.vmware.cis.tagging.detach"],
        ),
        ([{"not": {"prefix": {"subject": "Vm"}}}], [TAG_ATTACH.subject, TAG_DETACH.subject]),
        (
            [
                {
                    "not": {
                        "any": [{"suffix": {"subject": "Event"}}, {"suffix": {"subject": "attach"}}]
                    }
                }
            ],
            ["com.vmware.cis.tagging.detach"],
        ),
        # several filters must all hold
        (
            [
                {"prefix": {"subject": "VmPowered"}},
                {"not": {"exact": {"subject": "VmPoweredOnEvent"}}},
            ],
            ["VmPoweredOffEvent"],
        ),
    ],
)
def test_filters(filters: list[dict[str, Any]], expected: list[str]) -> None:
    assert matching(None, filters) == expected


def test_filters_given_as_json_text() -> None:
    assert matching(None, '[{"suffix": {"subject": "OffEvent"}}]') == ["VmPoweredOffEvent"]


def test_knative_filter_attributes_form_is_exact_matching() -> None:
    knative = {
        "attributes": {"type": "com.vmware.event.router/event", "subject": "VmPoweredOnEvent"}
    }
    assert matching(None, knative) == ["VmPoweredOnEvent"]
    assert matching(None, {"attributes": {"type": "com.vmware.event.router/eventex"}}) == [
        TAG_ATTACH.subject,
        TAG_DETACH.subject,
    ]


def test_topic_and_filters_must_both_hold() -> None:
    assert matching(
        "VmPoweredOnEvent,VmPoweredOffEvent", [{"suffix": {"subject": "OffEvent"}}]
    ) == ["VmPoweredOffEvent"]
    assert matching("vm.powered.on", [{"exact": {"source": "vc2"}}]) == []


def _nested_not(depth: int) -> dict[str, Any]:
    expr: dict[str, Any] = {"exact": {"subject": "VmPoweredOnEvent"}}
    for _ in range(depth):
        expr = {"not": expr}
    return expr


def test_filters_nested_up_to_the_limit_match() -> None:
    assert matching(None, [_nested_not(32)]) == ["VmPoweredOnEvent"]


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        (
            [{"cesql": "subject LIKE 'Vm%'"}],
            r"^fn\.filters\[0\]\.cesql: CESQL filters are not supported",
        ),
        ([{"regex": {"subject": ".*"}}], r"^fn\.filters\[0\]: unknown filter 'regex'"),
        ([{"exact": "VmPoweredOnEvent"}], r"^fn\.filters\[0\]\.exact: expected a mapping"),
        ([{"prefix": {}}], r"^fn\.filters\[0\]\.prefix: expected a mapping"),
        ([{"all": {"exact": {"a": "b"}}}], r"^fn\.filters\[0\]\.all: expected a non-empty list"),
        ([{"any": []}], r"^fn\.filters\[0\]\.any: expected a non-empty list"),
        (
            [{"exact": {"a": "b"}}, {"any": [{"exact": {"a": "b"}}, {"nope": {}}]}],
            r"^fn\.filters\[1\]\.any\[1\]: unknown filter 'nope'",
        ),
        ([{"not": {"suffix": ["Event"]}}], r"^fn\.filters\[0\]\.not\.suffix: expected a mapping"),
        (
            [{"exact": {"a": "b"}, "prefix": {"a": "b"}}],
            r"^fn\.filters\[0\]: each filter must be a mapping with one key",
        ),
        (["subject=VmPoweredOnEvent"], r"^fn\.filters\[0\]: each filter must be a mapping"),
        ({"exact": {"subject": "x"}}, r"^fn\.filters: expected a list of filters"),
        ("[{not json", r"^fn\.filters: not valid JSON"),
        ("[" * 5000 + "]" * 5000, r"^fn\.filters: not valid JSON"),
        # Every event is matched through the nesting: it is bounded.
        ([_nested_not(33)], r"^fn\.filters\[0\](\.not){33}: filters nested deeper than 32"),
    ],
)
def test_bad_filters_are_rejected_naming_the_field(filters: Any, message: str) -> None:
    with pytest.raises(SubscriptionError, match=message):
        compile_subscription("f", None, filters, where="fn")


# -- the router -------------------------------------------------------------------


def test_router_sends_each_event_to_every_interested_function() -> None:
    router = Router(
        [
            compile_subscription("on", "VmPoweredOnEvent"),
            compile_subscription("legacy-on", "vm.powered.on"),
            compile_subscription("power", "VmPoweredOnEvent, VmPoweredOffEvent"),
            compile_subscription(
                "tags", None, [{"prefix": {"subject": "com.vmware.cis.tagging."}}]
            ),
            compile_subscription("everything", "*"),
            compile_subscription("invoke-only", None),
        ]
    )
    assert sorted(router.route(POWERED_ON)) == ["everything", "legacy-on", "on", "power"]
    assert sorted(router.route(POWERED_OFF)) == ["everything", "power"]
    assert sorted(router.route(TAG_ATTACH)) == ["everything", "tags"]
    assert router.route(vm_event("VmCreatedEvent")) == ["everything"]
    assert [s.name for s in router.subscriptions][-1] == "invoke-only"


def test_an_empty_router_routes_nothing() -> None:
    assert Router().route(POWERED_ON) == []
