"""Human views of what the API answers: `events show`, `dlq show`, `status`.

Times in the reader's local zone with how long ago, tracebacks as the
multi-line text they are, tables for lists. `-o json` (or `-o yaml`) prints the
API's answer as it is; without `-o`, a terminal gets these views and a pipe gets
JSON, so scripts that read the JSON keep working.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import typer
from rich.console import Group, RenderableType
from rich.json import JSON
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from veba.cli.client import Output, console, print_data

__all__ = [
    "ShowOutputOption",
    "dead_letter_view",
    "event_view",
    "local_time",
    "print_view",
    "status_view",
]

# `-o` as every command has it (cli/client.py's `Output`), but with no default:
# a terminal gets the view, a pipe gets JSON.
ShowOutputOption = typer.Option(
    None,
    "--output",
    "-o",
    case_sensitive=False,
    help="Output format (default: table on a terminal, json when piped)",
)


def print_view(answer: Any, view: Any, output: Output | None) -> None:
    """`answer` as JSON or YAML, or `view(answer)` for a human, as `output` (or
    the terminal) says."""
    if output is None:
        output = Output.table if console.is_terminal else Output.json
    if output != Output.table:
        print_data(answer, output)
        return
    console.print(view(answer))


# -- pieces --------------------------------------------------------------------------------


def local_time(value: float | str | None, *, now: float | None = None) -> str:
    """An epoch time or an RFC 3339 stamp as local time, with how long ago."""
    if value is None or value == "":
        return ""
    try:
        if isinstance(value, str):
            moment = datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone()
        else:
            moment = datetime.fromtimestamp(float(value)).astimezone()
    except (ValueError, OverflowError, OSError):
        return str(value)
    stamp = moment.strftime("%Y-%m-%d %H:%M:%S %Z")
    ago = (now if now is not None else time.time()) - moment.timestamp()
    return f"{stamp} ({_ago(ago)})"


def _ago(seconds: float) -> str:
    if seconds < 0:
        return "in the future"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} s ago"


def _duration(start: float | None, end: float | None) -> str:
    if start is None or end is None:
        return ""
    took = end - start
    return f"{took * 1000:.0f} ms" if took < 10 else f"{took:.1f} s"


def _fields(rows: Iterable[tuple[str, Any]]) -> Table:
    """Name / value lines, without a frame."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name, value in rows:
        if value is None or value == "":
            continue
        table.add_row(name, value if isinstance(value, Text) else Text(str(value)))
    return table


_STATUS_STYLE = {"delivered": "green", "dead": "red", "pending": "yellow", "leased": "cyan"}


def _status(value: str | None) -> Text:
    return Text(value or "", style=_STATUS_STYLE.get(value or "", ""))


def _attempts(history: Sequence[Mapping[str, Any]]) -> Table:
    table = Table("#", "started", "took", "outcome", "status", "error", title="attempts")
    for attempt in history:
        error = (attempt.get("error") or "").strip().splitlines()
        table.add_row(
            str(attempt.get("attempt", "")),
            local_time(attempt.get("started")),
            _duration(attempt.get("started"), attempt.get("finished")),
            Text(
                str(attempt.get("outcome") or ""),
                style="green" if attempt.get("outcome") == "ok" else "red",
            ),
            str(attempt.get("status") or ""),
            Text(error[-1] if error else ""),  # a traceback's last line; whole below
        )
    return table


def _traceback(error: str | None, title: str) -> Panel | None:
    if not error:
        return None
    return Panel(Text(error.rstrip()), title=title, title_align="left", border_style="red")


def _event_summary(event: Mapping[str, Any]) -> list[tuple[str, Any]]:
    return [
        ("id", event.get("id")),
        ("type", event.get("type")),
        ("subject", event.get("subject")),
        ("source", event.get("source")),
        ("time", local_time(event.get("time"))),
    ]


def _data(event: Mapping[str, Any]) -> RenderableType:
    data = event.get("data")
    if data is None:
        return Text("(no data)", style="dim")
    return Panel(JSON.from_data(data), title="data", title_align="left", border_style="dim")


# -- views -----------------------------------------------------------------------------------


def event_view(record: Mapping[str, Any]) -> RenderableType:
    """`veba events show`: the event, then each delivery with its attempts."""
    event = record.get("event") or {}
    parts: list[RenderableType] = [
        _fields(
            [
                ("seq", record.get("seq")),
                ("received", local_time(record.get("received"))),
                *_event_summary(event),
            ]
        ),
        _data(event),
    ]
    deliveries = record.get("deliveries") or []
    if not deliveries:
        parts.append(
            Text("no deliveries: no function subscribed to it when it arrived", style="dim")
        )
    for delivery in deliveries:
        parts.append(_delivery(delivery))
    return Group(*parts)


def _delivery(delivery: Mapping[str, Any]) -> RenderableType:
    head = Text.assemble(
        ("delivery ", "bold"),
        (str(delivery.get("id")), "bold"),
        f" to {delivery.get('subscription')}: ",
        _status(delivery.get("status")),
        f", {delivery.get('attempts')} attempt(s)",
    )
    parts: list[RenderableType] = [head]
    if delivery.get("history"):
        parts.append(_attempts(delivery["history"]))
    if delivery.get("status") == "dead":
        panel = _traceback(delivery.get("last_error"), "last error")
        if panel is not None:
            parts.append(panel)
        parts.append(Text(f"redrive it: veba dlq redrive {delivery.get('id')}", style="dim"))
    return Group(*parts)


def dead_letter_view(letter: Mapping[str, Any]) -> RenderableType:
    """`veba dlq show`: what failed, every attempt, the traceback, the event."""
    event = letter.get("event") or {}
    parts: list[RenderableType] = [
        _fields(
            [
                ("dead letter", letter.get("id")),
                ("function", letter.get("subscription")),
                ("status", _status(letter.get("status"))),
                ("attempts", letter.get("attempts")),
                ("last status", letter.get("last_status")),
                ("first tried", local_time(letter.get("created"))),
                ("gave up", local_time(letter.get("finished"))),
                ("event seq", letter.get("seq")),
                *_event_summary(event),
            ]
        )
    ]
    if letter.get("history"):
        parts.append(_attempts(letter["history"]))
    panel = _traceback(letter.get("last_error"), "last error")
    if panel is not None:
        parts.append(panel)
    parts.append(_data(event))
    parts.append(Text(f"redrive it: veba dlq redrive {letter.get('id')}", style="dim"))
    return Group(*parts)


def _workers(scale: Mapping[str, Any] | None) -> str:
    """`2 (1-8)`: workers now, and the bounds scaling keeps them in when they differ."""
    if not scale:
        return ""
    now, low, high = scale.get("workers"), scale.get("min"), scale.get("max")
    return f"{now}" if low == high else f"{now} ({low}-{high})"


def status_view(status: Mapping[str, Any]) -> RenderableType:
    """`veba status`: providers, functions (with their deliveries), processors."""
    parts: list[RenderableType] = []
    providers = Table(
        "provider", "state", "events", "last key", "lag", "last error", title="providers"
    )
    for p in status.get("providers") or []:
        state = p.get("state") or ("connected" if p.get("connected") else "not connected")
        lag = p.get("lag")
        parts_lag = [] if lag is None else [f"{lag} events"]
        if p.get("lag_seconds"):
            parts_lag.append(f"{p['lag_seconds']:.0f} s")
        providers.add_row(
            Text(str(p.get("name"))),
            Text(state, style="green" if p.get("connected") else "yellow"),
            str(p.get("events") or 0),
            "" if p.get("last_key") is None else str(p.get("last_key")),
            ", ".join(parts_lag),
            Text(str(p.get("last_error") or ""), style="red"),
        )
    parts.append(providers if status.get("providers") else Text("no providers", style="dim"))
    counts: Mapping[str, Mapping[str, int]] = status.get("deliveries") or {}
    workers: Mapping[str, Mapping[str, Any]] = status.get("workers") or {}
    functions = Table(
        "function", "status", "workers", "pending", "delivered", "dead", title="functions"
    )
    paused = set(status.get("paused") or ())
    for name, state in sorted((status.get("functions") or {}).items()):
        c = counts.get(name, {})
        dead = c.get("dead", 0)
        state = f"{state}, paused" if name in paused else state
        functions.add_row(
            Text(name),
            Text(str(state), style="green" if state == "ready" else "yellow"),
            _workers(workers.get(name)),
            str(c.get("pending", 0) + c.get("leased", 0)),
            str(c.get("delivered", 0)),
            Text(str(dead), style="red" if dead else ""),
        )
    parts.append(
        functions if status.get("functions") else Text("no functions deployed", style="dim")
    )
    processors = status.get("processors") or []
    if processors:
        table = Table(
            "processor", "address", "delivered", "retried", "dead", "last error", title="processors"
        )
        for p in processors:
            table.add_row(
                Text(str(p.get("name"))),
                Text(str(p.get("address") or "")),
                str(p.get("delivered", 0)),
                str(p.get("retried", 0)),
                str(p.get("dead", 0)),
                Text(str(p.get("last_error") or ""), style="red"),
            )
        parts.append(table)
    return Group(*parts)
