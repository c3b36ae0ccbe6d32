"""Which functions an event goes to: `topic` annotations and Knative-style filters.

A subscription is compiled once at deploy time; matching an event is then a set
lookup on its subject plus, for filtered subscriptions, a small predicate tree.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from veba.events import Event

__all__ = ["Router", "Subscription", "SubscriptionError", "compile_subscription", "dotted_to_class"]

Predicate = Callable[[Mapping[str, str]], bool]


class SubscriptionError(ValueError):
    """A topic or filter that cannot be understood; the message names the field."""


def dotted_to_class(topic: str) -> str:
    """VEBA's legacy dotted topics: `vm.powered.on` -> `VmPoweredOnEvent`."""
    return "".join(part[:1].upper() + part[1:] for part in topic.split(".") if part) + "Event"


_DOTTED = re.compile(r"^[a-z0-9]+(\.[a-z0-9]+)+$")


def _subjects(topic: str) -> frozenset[str] | None:
    """The subjects a topic names; None means every subject (`*`)."""
    names: set[str] = set()
    for raw in topic.split(","):
        name = raw.strip()
        if not name:
            continue
        if name == "*":
            return None
        names.add(name)
        # A dotted lower-case name is either a legacy topic or an EventEx id
        # (com.vmware.cis.tagging.attach); accept both readings.
        if _DOTTED.match(name):
            names.add(dotted_to_class(name))
    return frozenset(names)


def _compile_filter(expr: Any, where: str) -> Predicate:
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
        if kind == "exact":
            return lambda a: all(a.get(k) == v for k, v in pairs)
        if kind == "prefix":
            return lambda a: all(a.get(k, "").startswith(v) and k in a for k, v in pairs)
        return lambda a: all(a.get(k, "").endswith(v) and k in a for k, v in pairs)
    if kind in ("all", "any"):
        if not isinstance(arg, Sequence) or isinstance(arg, str) or not arg:
            raise SubscriptionError(f"{where}.{kind}: expected a non-empty list of filters")
        parts = [_compile_filter(e, f"{where}.{kind}[{i}]") for i, e in enumerate(arg)]
        if kind == "all":
            return lambda a: all(p(a) for p in parts)
        return lambda a: any(p(a) for p in parts)
    if kind == "not":
        inner = _compile_filter(arg, f"{where}.not")
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
        if self.subjects is not None and event.subject not in self.subjects:
            return False
        return all(f(event.attributes) for f in self.filters)


def compile_subscription(
    name: str, topic: str | None, filters: Any = None, *, where: str = "function"
) -> Subscription:
    """Build a subscription. No topic and no filters means no events (invoke only)."""
    if isinstance(filters, str):
        try:
            filters = json.loads(filters)
        except json.JSONDecodeError as exc:
            raise SubscriptionError(f"{where}.filters: not valid JSON: {exc}") from exc
    if isinstance(filters, Mapping) and "attributes" in filters and len(filters) == 1:
        # Knative's older `filter: {attributes: {type: ...}}` form: exact matches.
        filters = [{"exact": filters["attributes"]}]
    if filters is not None and (not isinstance(filters, Sequence) or isinstance(filters, str)):
        raise SubscriptionError(f"{where}.filters: expected a list of filters")
    predicates = tuple(
        _compile_filter(f, f"{where}.filters[{i}]") for i, f in enumerate(filters or [])
    )
    if topic is not None and not isinstance(topic, str):
        raise SubscriptionError(f"{where}.annotations.topic: expected a comma-separated string")
    subjects = frozenset() if topic is None else _subjects(topic)
    if subjects is not None and not subjects:
        # No topic, or one naming no subject (" , "): the filters alone decide.
        subjects = None if predicates else frozenset()
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
        names = self._by_subject.get(event.subject, [])
        if not self._filtered:
            return list(names)
        return [*names, *(s.name for s in self._filtered if s.matches(event))]
