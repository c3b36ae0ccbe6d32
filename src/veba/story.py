"""One event's story, in time order: received, logged, each delivery, each
attempt with its outcome, and what the function printed during that attempt.

Nothing is stored for it. The log already keeps when the event arrived, every
delivery (created, finished) and every attempt (failed ones in the attempts
table, the one that succeeded on its delivery); the functions' log files keep
their output lines tagged with the event, delivery and attempt (`LogHub`). A
story is derived from those when asked, so it costs the hot path nothing and
survives a restart as long as the log and the log files keep the event.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

from veba.eventlog.base import Attempt, DeliveryInfo, EventLog, EventRecord
from veba.functionlogs import LogHub, LogLine
from veba.tracing import trace_id_of

__all__ = ["Chapter", "Story", "tell"]

Kind = Literal["received", "logged", "delivery", "attempt", "outcome", "output", "next", "dead"]
# Among things at the same moment, what comes first.
_RANK: dict[str, int] = {
    "received": 0,
    "logged": 1,
    "delivery": 2,
    "attempt": 3,
    "output": 4,
    "outcome": 5,
    "next": 6,
    "dead": 7,
}
# user:password@ in a URL an error names (a processor's address).
_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)
_MAX_DELIVERIES = 1000


@dataclass(frozen=True, slots=True)
class Chapter:
    """One thing that happened to the event; `text` says it for a person, beside
    who it happened at (`function`, else veba itself)."""

    at: float
    kind: Kind
    text: str
    function: str | None = None  # the subscriber (a function or a RouterConfig processor)
    delivery: int | None = None
    attempt: int | None = None
    stream: str | None = None  # output: stdout, stderr or system
    outcome: str | None = None  # outcome: ok, error, timeout, crash, transport
    status: int | None = None
    duration: float | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Story:
    event_id: str
    seq: int
    source: str
    type: str
    subject: str
    trace_id: str
    chapters: tuple[Chapter, ...]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["chapters"] = [c.to_dict() for c in self.chapters]
        return out


async def tell(log: EventLog, logs: LogHub, record: EventRecord) -> Story:
    """The story of the logged event `record`."""
    event = record.event
    deliveries = [
        d
        for d in await log.deliveries(event_id=event.id, with_history=True, limit=_MAX_DELIVERIES)
        if d.seq == record.seq  # the same id from another source is another event
    ]
    deliveries.sort(key=lambda d: d.id)
    subscribers = sorted({d.subscription for d in deliveries})
    output = await asyncio.to_thread(_output, logs, subscribers, event.id, record.received)
    chapters = [*_arrival(record, subscribers)]
    for delivery in deliveries:
        chapters += _delivery(delivery, output.get(delivery.subscription, []), logs)
    chapters.sort(key=lambda c: (c.at, _RANK[c.kind]))
    return Story(
        event.id,
        record.seq,
        event.source,
        event.type,
        event.subject,
        trace_id_of(event),
        tuple(chapters),
    )


def _output(
    logs: LogHub, subscribers: list[str], event_id: str, since: float
) -> dict[str, list[LogLine]]:
    return {name: logs.event_lines(name, event_id, since) for name in subscribers}


def _arrival(record: EventRecord, subscribers: list[str]) -> list[Chapter]:
    event = record.event
    what = " ".join(part for part in (event.type, event.subject) if part)
    when = f" (event time {event.time})" if event.time else ""
    to = ", ".join(subscribers) if subscribers else "no subscriber"
    return [
        Chapter(record.received, "received", f"received from {event.source}: {what}{when}"),
        Chapter(record.received, "logged", f"logged as seq {record.seq}, for {to}"),
    ]


def _delivery(d: DeliveryInfo, lines: list[LogLine], logs: LogHub) -> list[Chapter]:
    name = d.subscription
    out = [Chapter(d.created, "delivery", f"delivery {d.id} to {name}", name, d.id)]
    history = sorted(d.history, key=lambda a: (a.started, a.attempt))
    for attempt in history:
        out.append(
            Chapter(
                attempt.started,
                "attempt",
                f"attempt {attempt.attempt} started",
                name,
                d.id,
                attempt.attempt,
            )
        )
        out.append(_outcome(d, attempt, logs))
    for line in lines:
        if line.delivery is not None and line.delivery != d.id:
            continue
        out.append(
            Chapter(
                _anchored(line, history),
                "output",
                line.text,
                name,
                d.id,
                line.attempt,
                stream=line.stream,
            )
        )
    if d.status == "dead" and d.finished is not None:
        out.append(
            Chapter(
                d.finished,
                "dead",
                f"dead letter after {d.attempts} attempt(s): veba dlq show {d.id}",
                name,
                d.id,
            )
        )
    elif d.status == "pending" and history:
        out.append(
            Chapter(
                max(d.available_at, history[-1].finished),
                "next",
                f"attempt {d.attempts + 1} due",
                name,
                d.id,
                d.attempts + 1,
            )
        )
    elif d.status == "leased":
        out.append(
            Chapter(
                max([time.time(), *(a.finished for a in history)]),
                "next",
                f"attempt {d.attempts} under way",
                name,
                d.id,
                d.attempts,
            )
        )
    return out


def _outcome(d: DeliveryInfo, attempt: Attempt, logs: LogHub) -> Chapter:
    name = d.subscription
    took = max(attempt.finished - attempt.started, 0.0)
    error = _clean(logs, name, attempt.error) if attempt.error else None
    said = f": {error.strip().splitlines()[-1][:300]}" if error and error.strip() else ""
    status = f" {attempt.status}" if attempt.status else ""
    return Chapter(
        attempt.finished,
        "outcome",
        f"attempt {attempt.attempt} {attempt.outcome}{status} in {took * 1000:.0f} ms{said}",
        name,
        d.id,
        attempt.attempt,
        outcome=attempt.outcome,
        status=attempt.status,
        duration=took,
        error=error,
    )


def _anchored(line: LogLine, history: list[Attempt]) -> float:
    """A line's time inside its attempt: the file keeps milliseconds, the log more,
    so a line printed at once may read as just before its attempt began."""
    for attempt in history:
        if attempt.attempt == line.attempt:
            return min(max(line.timestamp, attempt.started), attempt.finished)
    return line.timestamp


def _clean(logs: LogHub, name: str, text: str) -> str:
    """No secret of the function's, nor credentials in a URL, in what is shown."""
    return _USERINFO.sub(r"\1***@", logs.scrub(name, text))
