"""Which functions an event goes to: `topic` annotations and Knative-style filters.

A subscription is compiled once at deploy time; matching an event is then a set
lookup on its subject plus, for filtered subscriptions, a small predicate tree.

Both of VEBA's namings match (see `veba.shapes`): a topic `VmPoweredOffEvent`
or `com.vmware.vsphere.VmPoweredOffEvent.v0`, a filter on `subject` or on the
v0.8 `type`. Each filter leaf is evaluated on the event in the shape its own
attributes name (`subject`, a `com.vmware.event.router/` type: v0.7;
`eventclass`, a `com.vmware.vsphere.` type: v0.8), else in the subscription's
shape, so `not` means what it says in either naming.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from veba.events import EVENT_TYPE_PREFIX, Event
from veba.shapes import (
    DEFAULT_SHAPE,
    EVENT_CLASS,
    V07,
    V08,
    V08_TYPE_PREFIX,
    V08_TYPE_SUFFIX,
    Shape,
    shaped_attributes,
    subject_of,
)

__all__ = [
    "EventViews",
    "Router",
    "Subscription",
    "SubscriptionError",
    "compile_subscription",
    "dotted_to_class",
    "topic_items",
]


class EventViews:
    """One event's attributes in each shape, each computed at most once."""

    __slots__ = ("_shaped", "attributes", "subject")

    def __init__(self, attributes: Mapping[str, str]) -> None:
        self.attributes = attributes
        self.subject = subject_of(attributes)
        self._shaped: dict[Shape, Mapping[str, str]] = {}

    def __getitem__(self, shape: Shape) -> Mapping[str, str]:
        view = self._shaped.get(shape)
        if view is None:
            view = self._shaped[shape] = shaped_attributes(self.attributes, shape)
        return view


Predicate = Callable[[EventViews], bool]


class SubscriptionError(ValueError):
    """A topic or filter that cannot be understood; the message names the field."""


def dotted_to_class(topic: str) -> str:
    """VEBA's legacy dotted topics: `vm.powered.on` -> `VmPoweredOnEvent`."""
    return "".join(part[:1].upper() + part[1:] for part in topic.split(".") if part) + "Event"


_DOTTED = re.compile(r"^[a-z0-9]+(\.[a-z0-9]+)+$")


def topic_items(topic: str) -> list[tuple[str, frozenset[str]]]:
    """Each name a topic lists, as written, with the subjects it may mean (`*`: none)."""
    items = []
    for raw in topic.split(","):
        name = raw.strip()
        if not name:
            continue
        names = {name}
        # A dotted lower-case name is either a legacy topic or an EventEx id
        # (com.vmware.cis.tagging.attach); accept both readings.
        if _DOTTED.match(name):
            names.add(dotted_to_class(name))
        # VEBA v0.8's naming of the same event.
        if name.startswith(V08_TYPE_PREFIX) and name.endswith(V08_TYPE_SUFFIX):
            names.add(name[len(V08_TYPE_PREFIX) : -len(V08_TYPE_SUFFIX)])
        items.append((name, frozenset(() if name == "*" else names)))
    return items


def _subjects(topic: str) -> frozenset[str] | None:
    """The subjects a topic names; None means every subject (`*`)."""
    items = topic_items(topic)
    if any(name == "*" for name, _ in items):
        return None
    return frozenset().union(*(subjects for _, subjects in items))


def _leaf_shape(pairs: list[tuple[str, str]], default: Shape) -> Shape:
    """The shape whose naming a filter leaf uses; the subscription's if it uses neither."""
    for key, value in pairs:
        if key == "subject" or (key == "type" and value.startswith(EVENT_TYPE_PREFIX)):
            return V07
        if key == EVENT_CLASS or (
            key == "type" and (value.startswith(V08_TYPE_PREFIX) or value.endswith(V08_TYPE_SUFFIX))
        ):
            return V08
    return default


_FILTER_DEPTH = 32  # all/any/not nesting; every event is matched through it, recursively


def _compile_filter(expr: Any, where: str, shape: Shape, depth: int = 0) -> Predicate:
    if depth > _FILTER_DEPTH:
        raise SubscriptionError(f"{where}: filters nested deeper than {_FILTER_DEPTH}")
    if not isinstance(expr, Mapping) or len(expr) != 1:
        raise SubscriptionError(
            f"{where}: each filter must be a mapping with one key of exact, prefix,"
            f" suffix, all, any, not; got {json.dumps(expr, default=str)}"
        )
    ((kind, arg),) = expr.items()
    if kind in ("exact", "prefix", "suffix"):
        if not isinstance(arg, Mapping) or not arg:
            raise SubscriptionError(f"{where}.{kind}: expected a mapping of attribute: value")
        pairs = [(str(k).lower(), str(v)) for k, v in arg.items()]
        view = _leaf_shape(pairs, shape)
        if kind == "exact":
            return lambda e: all(e[view].get(k) == v for k, v in pairs)
        if kind == "prefix":
            return lambda e: all(k in e[view] and e[view][k].startswith(v) for k, v in pairs)
        return lambda e: all(k in e[view] and e[view][k].endswith(v) for k, v in pairs)
    if kind in ("all", "any"):
        if not isinstance(arg, Sequence) or isinstance(arg, str) or not arg:
            raise SubscriptionError(f"{where}.{kind}: expected a non-empty list of filters")
        parts = [
            _compile_filter(e, f"{where}.{kind}[{i}]", shape, depth + 1) for i, e in enumerate(arg)
        ]
        if kind == "all":
            return lambda a: all(p(a) for p in parts)
        return lambda a: any(p(a) for p in parts)
    if kind == "not":
        inner = _compile_filter(arg, f"{where}.not", shape, depth + 1)
        return lambda a: not inner(a)
    if kind == "cesql":
        raise SubscriptionError(f"{where}.cesql: CESQL filters are not supported")
    raise SubscriptionError(
        f"{where}: unknown filter {kind!r}; expected exact, prefix, suffix, all, any or not"
    )


@dataclass(frozen=True)
class Subscription:
    """A function's interest: subjects from its topic (None = all) and filters (all must hold)."""

    name: str
    subjects: frozenset[str] | None
    filters: tuple[Predicate, ...] = ()

    def matches(self, event: Event) -> bool:
        return self.matches_views(EventViews(event.attributes))

    def matches_views(self, views: EventViews) -> bool:
        if self.subjects is not None and views.subject not in self.subjects:
            return False
        return all(f(views) for f in self.filters)


def compile_subscription(
    name: str,
    topic: str | None,
    filters: Any = None,
    *,
    where: str = "function",
    shape: Shape = DEFAULT_SHAPE,
) -> Subscription:
    """Build a subscription. No topic and no filters means no events (invoke only)."""
    if isinstance(filters, str):
        try:
            filters = json.loads(filters)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise SubscriptionError(f"{where}.filters: not valid JSON: {exc}") from None
    if isinstance(filters, Mapping) and "attributes" in filters and len(filters) == 1:
        # Knative's older `filter: {attributes: {type: ...}}` form: exact matches.
        filters = [{"exact": filters["attributes"]}]
    if filters is not None and (not isinstance(filters, Sequence) or isinstance(filters, str)):
        raise SubscriptionError(f"{where}.filters: expected a list of filters")
    predicates = tuple(
        _compile_filter(f, f"{where}.filters[{i}]", shape) for i, f in enumerate(filters or [])
    )
    if topic is not None and not isinstance(topic, str):
        raise SubscriptionError(f"{where}.annotations.topic: expected a comma-separated string")
    if topic is None or not topic.strip():
        subjects: frozenset[str] | None = None if predicates else frozenset()
    else:
        subjects = _subjects(topic)
    return Subscription(name, subjects, predicates)


class Router:
    """Routes events to subscriptions; rebuilt whenever functions change."""

    def __init__(self, subscriptions: Iterable[Subscription] = ()) -> None:
        self._all: list[Subscription] = []
        self._by_subject: dict[str, list[str]] = {}
        self._filtered: list[Subscription] = []
        for sub in subscriptions:
            self._all.append(sub)
            if sub.filters or sub.subjects is None:
                self._filtered.append(sub)
            else:
                for subject in sub.subjects:
                    self._by_subject.setdefault(subject, []).append(sub.name)

    @property
    def subscriptions(self) -> list[Subscription]:
        return list(self._all)

    def route(self, event: Event) -> list[str]:
        views = EventViews(event.attributes)
        names = self._by_subject.get(views.subject, [])
        if not self._filtered:
            return list(names)
        return [*names, *(s.name for s in self._filtered if s.matches_views(views))]
