"""Routing as properties: compiled filters agree with a plain reference evaluator
written from Knative's definitions, and `Router.route` with checking every
subscription one by one."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from tests.properties.strategies import json_values
from veba.events import Event
from veba.routing import Router, Subscription, SubscriptionError, compile_subscription

# Few names and short values over a small alphabet, so that filters match often.
ATTRIBUTE_NAMES = ["type", "source", "subject", "id", "ext"]
values = st.text("ab.", max_size=3)
attribute_names = st.sampled_from([*ATTRIBUTE_NAMES, "Type", "SUBJECT"])


@st.composite
def attribute_sets(draw: st.DrawFn) -> dict[str, str]:
    names = draw(st.lists(st.sampled_from(ATTRIBUTE_NAMES), unique=True))
    return {name: draw(values) for name in names}


leaf_filters = st.builds(
    lambda kind, pairs: {kind: pairs},
    st.sampled_from(["exact", "prefix", "suffix"]),
    st.dictionaries(attribute_names, values, min_size=1, max_size=2),
)
filters = st.recursive(
    leaf_filters,
    lambda inner: st.one_of(
        st.builds(lambda items: {"all": items}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda items: {"any": items}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda item: {"not": item}, inner),
    ),
    max_leaves=6,
)


def reference(expr: Mapping[str, Any], attributes: Mapping[str, str]) -> bool:
    """Knative's filter dialects, read straight from their definitions: exact,
    prefix and suffix hold when every named attribute exists and its value
    equals / starts with / ends with the given one (names are case-insensitive)."""
    ((kind, arg),) = expr.items()
    if kind == "all":
        return all(reference(e, attributes) for e in arg)
    if kind == "any":
        return any(reference(e, attributes) for e in arg)
    if kind == "not":
        return not reference(arg, attributes)
    for name, want in arg.items():
        have = attributes.get(name.lower())
        if have is None:
            return False
        if kind == "exact" and have != want:
            return False
        if kind == "prefix" and not have.startswith(want):
            return False
        if kind == "suffix" and not have.endswith(want):
            return False
    return True


SUBJECTS = ["VmPoweredOnEvent", "VmPoweredOffEvent", "vm.powered.on", "com.vmware.x", "a", ""]
topics = st.none() | st.lists(st.sampled_from([*SUBJECTS, "*", " "]), max_size=3).map(",".join)


def reference_subjects(topic: str | None, filtered: bool) -> set[str] | None:
    """The subjects a `topic` annotation names; None for every subject."""
    names = [name.strip() for name in (topic or "").split(",") if name.strip()]
    if not names:
        return None if filtered else set()
    if "*" in names:
        return None
    out = set(names)
    # VEBA's dotted topics name event classes: vm.powered.on is VmPoweredOnEvent.
    out |= {
        "".join(p[:1].upper() + p[1:] for p in n.split(".")) + "Event" for n in names if "." in n
    }
    return out


def reference_match(topic: str | None, exprs: list[Any], attributes: Mapping[str, str]) -> bool:
    subjects = reference_subjects(topic, bool(exprs))
    if subjects is not None and attributes.get("subject", "") not in subjects:
        return False
    return all(reference(e, attributes) for e in exprs)


def event(attributes: Mapping[str, str]) -> Event:
    return Event({"specversion": "1.0", **attributes})


@given(filters, attribute_sets())
@example({"exact": {"ext": ""}}, {})
@example({"prefix": {"ext": ""}}, {})
@example({"not": {"suffix": {"ext": ""}}}, {"ext": "a"})
def test_a_compiled_filter_agrees_with_the_reference(expr: Any, attributes: dict[str, str]) -> None:
    sub = compile_subscription("fn", None, [expr])
    assert sub.matches(event(attributes)) == reference(expr, attributes)


@given(topics, st.lists(filters, max_size=2), attribute_sets())
@example("vm.powered.on", [], {"subject": "VmPoweredOnEvent"})
@example(" , ", [], {"subject": ""})
# Found by this property: a topic naming no subject (",") with filters matched
# nothing, where no topic with the same filters lets the filters decide.
@example(",", [{"exact": {"type": ""}}], {"type": ""})
def test_a_subscription_agrees_with_the_reference(
    topic: str | None, exprs: list[Any], attributes: dict[str, str]
) -> None:
    sub = compile_subscription("fn", topic, exprs or None)
    want = reference_match(topic, exprs, attributes)
    assert sub.matches(event(attributes)) == want


subscriptions = st.builds(
    lambda name, topic, exprs: compile_subscription(name, topic, exprs or None),
    st.sampled_from(["f1", "f2", "f3", "f4"]),
    topics,
    st.lists(filters, max_size=2),
)


@given(st.lists(subscriptions, max_size=6), st.lists(attribute_sets(), min_size=1, max_size=5))
def test_the_router_routes_as_checking_every_subscription(
    subs: list[Subscription], attribute_list: list[dict[str, str]]
) -> None:
    router = Router(subs)
    for attributes in attribute_list:
        e = event(attributes)
        expected = Counter(s.name for s in subs if s.matches(e))
        assert Counter(router.route(e)) == expected


@given(st.none() | json_values(8) | st.lists(filters | json_values(4), max_size=3))
@example([{"exact": {}}])
@example([{"all": []}])
@example([{"cesql": "type = 'x'"}])
@example("[{")
def test_any_filters_value_compiles_or_is_refused_naming_the_field(raw: Any) -> None:
    try:
        compile_subscription("fn", "a", raw, where="functions.fn")
    except SubscriptionError as exc:
        assert str(exc).startswith("functions.fn.filters"), exc
