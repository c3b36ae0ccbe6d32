"""Which event is being handled, and the W3C trace context it travels with.

`EventScope` is bound in a context variable where an event is handled: around
`Appliance.publish` (the events of that call), and by the `Dispatcher` for each
delivery and each attempt (function, delivery id, attempt, trace context). Since
asyncio copies the context into every task, whatever runs under it sees it:

* the appliance's log lines (`add_event_scope` for structlog, `ScopeFilter` for
  stdlib `logging`) carry ``event_id``, ``function``, ``delivery_id``, ``attempt``;
* a `FunctionPool` remembers the scope of each call, so the lines the worker
  prints while running it are written to the function's log tagged with it;
* the OpenTelemetry export (`veba.otlp`) reads the attempt's span from it.

Trace context (the CloudEvents distributed-tracing extension, W3C Trace
Context): every attempt gets a ``traceparent``. Its trace id is the incoming
event's own (its ``traceparent`` attribute) or, without one, derived from the
event's (source, id), so every attempt, every restart and every node agree
without storing anything; its span id is fresh per attempt; its parent is the
incoming span. ``tracestate`` is passed on as it came.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any, NamedTuple

from veba.events import Event

__all__ = [
    "EventScope",
    "PackedScope",
    "ScopeFilter",
    "TraceContext",
    "add_event_scope",
    "current_scope",
    "event_scope",
    "parse_traceparent",
    "set_scope",
    "trace_for",
    "trace_headers",
    "trace_id_of",
    "with_trace",
]

_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


class TraceContext(NamedTuple):
    """One attempt's place in a trace. (Tuples: made for every attempt, and a
    frozen dataclass costs several times as much to build.)"""

    trace_id: str  # 32 lowercase hex digits
    span_id: str  # 16 hex digits: this attempt's span, fresh per attempt
    parent_id: str | None  # the incoming event's span, if it came with a traceparent
    flags: str = "01"  # trace-flags as two hex digits; 01: sampled
    state: str | None = None  # the incoming tracestate, passed on as it came

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


# `EventScope.packed()`: its fields in order, the trace as a plain tuple too.
PackedScope = tuple[Any, ...]


class EventScope(NamedTuple):
    """What is being handled: an event (or the events of one publish call), and
    while delivering, to which function, which delivery and which attempt."""

    event_id: str | None
    events: tuple[str, ...] = ()  # a batch's ids, when it is more than one event
    function: str | None = None
    delivery: int | None = None
    attempt: int | None = None
    trace: TraceContext | None = None
    started: float | None = None  # time.time() the attempt started

    @classmethod
    def of(cls, event_ids: list[str]) -> EventScope | None:
        """The scope of one call about these events (a publish, a batch)."""
        if not event_ids:
            return None
        if len(event_ids) == 1:
            return cls(event_ids[0])
        return cls(None, tuple(event_ids))

    def packed(self) -> PackedScope:
        """This scope as plain tuples, for keeping many of them a while: the
        collector stops tracking a plain tuple of strings and numbers, never a
        NamedTuple, so kept scopes would otherwise be scanned in every collection."""
        trace = None if self.trace is None else tuple(self.trace)
        return (self.event_id, self.events, self.function, self.delivery, self.attempt,
                trace, self.started)  # fmt: skip

    @classmethod
    def unpacked(cls, packed: PackedScope) -> EventScope:
        event_id, events, function, delivery, attempt, trace, started = packed
        trace_context = None if trace is None else TraceContext(*trace)
        return cls(event_id, events, function, delivery, attempt, trace_context, started)

    def fields(self) -> dict[str, Any]:
        """The fields a log line about this scope carries."""
        out: dict[str, Any] = {}
        if self.event_id is not None:
            out["event_id"] = self.event_id
        if self.events:
            out["event_ids"] = list(self.events)
        if self.function is not None:
            out["function"] = self.function
        if self.delivery is not None:
            out["delivery_id"] = self.delivery
        if self.attempt is not None:
            out["attempt"] = self.attempt
        if self.trace is not None:
            out["trace_id"] = self.trace.trace_id
            out["span_id"] = self.trace.span_id
        return out


_SCOPE: ContextVar[EventScope | None] = ContextVar("veba_event_scope", default=None)


def current_scope() -> EventScope | None:
    return _SCOPE.get()


def set_scope(scope: EventScope | None) -> Token[EventScope | None]:
    """Bind `scope` until the token is reset (or the task ends)."""
    return _SCOPE.set(scope)


@contextmanager
def event_scope(scope: EventScope | None) -> Iterator[EventScope | None]:
    token = _SCOPE.set(scope)
    try:
        yield scope
    finally:
        _SCOPE.reset(token)


# -- trace context --------------------------------------------------------------


def parse_traceparent(value: str | None) -> tuple[str, str, str] | None:
    """(trace id, parent span id, flags) of a valid version-00 ``traceparent``."""
    if not value:
        return None
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    trace_id, span_id, flags = match.groups()
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return trace_id, span_id, flags


def trace_id_of(event: Event) -> str:
    """The event's trace id: its own traceparent's, else one derived from (source, id)."""
    incoming = parse_traceparent(event.attributes.get("traceparent"))
    return incoming[0] if incoming is not None else _derived(event)


def _derived(event: Event) -> str:
    digest = hashlib.blake2b(f"{event.source}\n{event.id}".encode(), digest_size=16).hexdigest()
    return digest if digest != _ZERO_TRACE else "1".rjust(32, "0")


def _span_id() -> str:
    # Unique, not secret: W3C asks for randomness, not a CSPRNG (and a syscall each).
    return f"{random.getrandbits(64) or 1:016x}"


def trace_for(event: Event, *, sampled: bool = True) -> TraceContext:
    """A new attempt's trace context for `event` (as logged: its id and source)."""
    incoming = parse_traceparent(event.attributes.get("traceparent"))
    if incoming is not None:
        trace_id, parent, flags = incoming
    else:
        trace_id, parent, flags = _derived(event), None, "01" if sampled else "00"
    return TraceContext(trace_id, _span_id(), parent, flags, event.attributes.get("tracestate"))


def with_trace(event: Event, trace: TraceContext) -> Event:
    """`event` carrying the attempt's ``traceparent`` (the log keeps it without)."""
    return event.with_attribute("traceparent", trace.traceparent)


def trace_headers(event: Event) -> dict[str, str]:
    """The plain W3C ``traceparent``/``tracestate`` HTTP headers of an event that
    carries them, for receivers that read HTTP's rather than the CloudEvent's."""
    out = {}
    for name in ("traceparent", "tracestate"):
        value = event.attributes.get(name)
        if value:
            out[name] = value
    return out


# -- log lines ------------------------------------------------------------------


def add_event_scope(
    logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: the bound scope's fields, unless the line set its own."""
    scope = _SCOPE.get()
    if scope is not None:
        for key, value in scope.fields().items():
            event_dict.setdefault(key, value)
    return event_dict


class ScopeFilter(logging.Filter):
    """Gives stdlib log records the bound scope: ``record.scope`` (the fields) and
    ``record.scope_text`` (`` event_id=... function=...``, for a text format)."""

    def filter(self, record: logging.LogRecord) -> bool:
        scope = _SCOPE.get()
        fields = scope.fields() if scope is not None else {}
        record.scope = fields
        record.scope_text = "".join(f" {key}={value}" for key, value in fields.items())
        return True
