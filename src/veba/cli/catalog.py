"""`veba catalog [SEARCH]`, `veba catalog show TYPE`: which event types there are.

The appliance's catalogue (`/api/v1/catalog`) has everything: pyVmomi's event
classes with their fields, the EventEx / ExtendedEvent ids each connected
vCenter's EventManager describes, and how often the log has seen each type.
Without a running appliance the command still lists pyVmomi's classes (and the
built-in simulator's types), offline, and says so.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.markup import escape

from veba.cli.client import (
    Client,
    DataDirOption,
    GatewayOption,
    Output,
    OutputOption,
    TlsNoVerifyOption,
    TokenOption,
    err,
    error_text,
    fail,
    parse_overrides,
    print_data,
    refusal,
    transport_error,
    untrusted_certificate,
)
from veba.cli.client import console as out

__all__ = ["catalog", "complete_topic", "warn_unknown_topics"]

Connect = Callable[[], Client]  # the gateway the command's options name

_COMPLETION_TIMEOUT = 1.5  # seconds a shell's TAB waits for the appliance


def _note(text: str, style: str | None = None) -> None:
    """A line on stderr, as it is (names like `vcenter:a:` are no emoji codes)."""
    err.print(text, style=style, highlight=False, emoji=False, markup=False)


def _ask(
    path: str, params: dict[str, Any], connect: Connect, *, timeout: float = 120.0
) -> tuple[Any, str | None]:
    """The appliance's answer, or (None, why there is none); fails on other errors."""
    client = connect()
    try:
        response = client.http.get(path, params=params, timeout=timeout)
    except httpx.HTTPError as exc:
        if untrusted_certificate(exc):
            return None, transport_error(client.url, exc)
        return None, f"no appliance at {client.url}"
    if response.status_code == 401:
        return None, refusal(client.url, client.credential, client.data_dir)
    if response.status_code == 404:
        detail = error_text(response)
        if detail.startswith("unknown event type"):
            fail(detail)
        return None, f"the appliance at {client.url} has no catalogue (an older veba)"
    if response.status_code >= 400:
        fail(error_text(response))
    return response.json(), None


def _field_text(entry: dict[str, Any]) -> str:
    from veba.catalog import BASE_FIELDS

    own = [f for f in entry.get("fields") or () if f["name"] not in BASE_FIELDS]
    return ", ".join(f"{f['name']}: {f['type']}" for f in own)


def _offline_list(search: str | None) -> dict[str, Any]:
    from veba import catalog as cat

    merged = cat.Catalog(cat.search(cat.build(), search), offline=True)
    return merged.to_dict()


def _list(search: str | None, offline: bool, connect: Connect, output: str) -> None:
    answer: Any = None
    why: str | None = "--offline"
    if not offline:
        params = {"search": search} if search else {}
        answer, why = _ask("/api/v1/catalog", params, connect)
    if answer is None:
        answer = _offline_list(search)
    types: list[dict[str, Any]] = answer["types"]
    if output != Output.table:
        print_data(types, output)
    else:
        _table(types, online=why is None)
    _footer(answer, why, search)


def _table(types: list[dict[str, Any]], *, online: bool) -> None:
    from rich.table import Table
    from rich.text import Text

    columns = ["type", "kind", "seen", "description"] if online else ["type", "kind", "description"]
    rows = [
        [
            t["type"],
            t["kind"],
            *([str(t["seen"] or "")] if online else []),
            t["description"] or "",
            _field_text(t),
        ]
        for t in types
    ]
    if not out.is_terminal:  # piped (to grep, say): one line per type, tab-separated
        sys.stdout.write("".join("\t".join(row) + "\n" for row in rows))
        return
    table = Table()
    for column in columns:
        table.add_column(column, overflow="fold")
    table.add_column("fields", overflow="fold", ratio=1)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))  # as they are: no markup, no emoji
    out.print(table)


def _footer(answer: dict[str, Any], why: str | None, search: str | None) -> None:
    from veba.catalog import BASE_FIELDS

    count = answer["count"]
    what = f"{count} event type{'s' if count != 1 else ''}" + (
        f" matching {search!r}" if search else ""
    )
    _note(
        f"{what}; every event also has {', '.join(BASE_FIELDS)}"
        " (Tgw and AuditId from vSphere 9.1 on)",
        "dim",
    )
    if why is not None:
        _note(
            f"offline ({why}): pyVmomi {answer['pyvmomi']}'s event classes, the built-in"
            " simulator's types and veba's descriptions of the common ones. A running appliance"
            " (`veba serve`) adds the EventEx and ExtendedEvent ids its vCenters describe,"
            " and how often it has seen each type."
        )
        return
    seen = sum(1 for t in answer["types"] if t["seen"])
    _note(f"seen by the appliance: {seen} of these types", "dim")
    if not answer["vcenters"]:
        _note(
            "no vCenter connected: EventEx and ExtendedEvent ids come from a vCenter's"
            " EventManager (`veba serve --vcenter ...`)"
        )
    for vc in answer["vcenters"]:
        if vc["error"]:
            _note(f"{vc['name']}: no descriptions: {vc['error']}", "yellow")
        else:
            _note(f"{vc['name']}: {vc['types']} types described")


def _show(
    name: str,
    settings: list[str],
    adds: list[str],
    offline: bool,
    connect: Connect,
    output: str,
) -> None:
    answer: Any = None
    why: str | None = "--offline"
    if not offline:
        params = {k: v for k, v in (("set", settings), ("add", adds)) if v}
        answer, why = _ask(f"/api/v1/catalog/{name}", params, connect)
    if answer is None:
        answer = _offline_show(name, parse_overrides(settings), parse_overrides(adds, "--add"))
    if output != Output.table:
        print_data(answer, output)
    else:
        sys.stdout.write(json.dumps(answer["sample"], indent=2) + "\n")
        _summary(answer)
    if why is not None:
        _note(f"offline ({why}): sample made here, not by the appliance")


def _offline_show(name: str, overrides: dict[str, Any], added: dict[str, Any]) -> dict[str, Any]:
    from veba import catalog as cat
    from veba.providers.simulator import SimulationError

    merged = cat.Catalog(cat.build(), offline=True)
    try:
        entry = merged.get(name)
    except cat.UnknownEventType as exc:
        if "." not in name:
            fail(str(exc))
        # A dotted id none of the offline sources knows: vCenter's EventManager may.
        entry = cat.extensible(name, "eventex")
        _note(f"{name} is not in the offline catalogue; showing it as an EventEx", "yellow")
    try:
        event, origin = cat.sample(entry, added=added, **overrides)
    except cat.UnknownPath as exc:
        fail(f"--set {exc}")
    except (SimulationError, TypeError, ValueError, KeyError, IndexError) as exc:
        fail(f"{entry.type}: {exc}")
    return {**entry.to_dict(), "sample": event.to_dict(), "sample_origin": origin}


def _summary(entry: dict[str, Any]) -> None:
    lines = [f"{entry['type']}: {entry['kind']}"]
    if entry.get("class") and entry["class"] != entry["type"]:
        lines[0] += f" (class {entry['class']})"
    elif entry.get("extends"):
        lines[0] += f" (extends {entry['extends']})"
    if entry.get("description"):
        lines.append(
            f"  {entry['description']}" + (f" [{entry['category']}]" if entry["category"] else "")
        )
    if entry.get("seen"):
        lines.append(f"  seen {entry['seen']} times by the appliance")
    origins = {
        "simulator": "made by the built-in simulator",
        "generic": "built from the pyVmomi class; values are plausible, not real",
        "log": "the newest logged event of this type",
    }
    lines.append(f"  sample: {origins.get(entry.get('sample_origin', ''), '')}")
    for line in lines:
        _note(line, "dim")


def catalog(
    words: list[str] = typer.Argument(
        None, metavar="[SEARCH]... | show TYPE", help="Words to search for, or: show TYPE"
    ),
    settings: list[str] = typer.Option(
        [], "--set", help="With show: PATH=VALUE on the sample (data.Vm.Name=web-01); repeatable"
    ),
    adds: list[str] = typer.Option(
        [], "--add", help="With show: PATH=VALUE, a field the type does not have; repeatable"
    ),
    offline: bool = typer.Option(
        False, "--offline", help="Do not ask the appliance: pyVmomi's classes only"
    ),
    gateway: str | None = GatewayOption,
    data_dir: Path | None = DataDirOption,
    token: str | None = TokenOption,
    tls_no_verify: bool = TlsNoVerifyOption,
    output: Output = OutputOption,
) -> None:
    """Event types to subscribe to, with their data fields.

    `veba catalog power` lists the types whose name or description has "power";
    `veba catalog show VmPoweredOnEvent` prints a sample event of one (stdout;
    what it is on stderr).
    """
    words = list(words or [])
    connect = partial(Client, gateway, data_dir, token=token, tls_no_verify=tls_no_verify)
    if words and words[0] == "show":
        if len(words) != 2:
            fail("usage: veba catalog show TYPE")
        _show(words[1], settings, adds, offline, connect, output)
        return
    if settings or adds:
        fail("--set and --add go with `veba catalog show TYPE`")
    _list(" ".join(words) or None, offline, connect, output)


# -- the known types: `veba new --topic` completion, topic warnings -------------------------


def _known_types(
    client: Client | None = None, timeout: float = _COMPLETION_TIMEOUT
) -> list[tuple[str, str]]:
    """(type, description) pairs: the appliance's if it answers in time (it knows
    its vCenters' EventEx ids and what it has seen), else pyVmomi's and the
    simulator's, offline."""
    try:
        client = client or Client(None, None)
        response = client.http.get("/api/v1/catalog", params={"fields": "false"}, timeout=timeout)
        if response.status_code == 200:
            return [(t["type"], t["description"] or t["kind"]) for t in response.json()["types"]]
    except Exception:
        pass
    from veba import catalog as cat

    return [(t.type, t.description or t.kind) for t in cat.build()]


def warn_unknown_topics(
    file: Path, topics: dict[str, str | None], client: Client | None = None
) -> None:
    """A warning on stderr for each topic name that is no known event type (see
    `veba.catalog.unknown_topics`); `topics` maps function names to their topic."""
    from veba.catalog import unknown_topics

    if not any(topics.values()):
        return
    known = {name for name, _ in _known_types(client, timeout=10.0)}
    for function, topic in topics.items():
        for message in unknown_topics(topic or "", known):
            where = escape(f"{file}: functions.{function}.annotations.topic: {message}")
            err.print(f"[yellow]warning:[/yellow] {where}", highlight=False, emoji=False)


def complete_topic(incomplete: str) -> list[tuple[str, str]]:
    """Completions for a comma-separated topic list: the last item is completed."""
    try:
        head, sep, last = incomplete.rpartition(",")
        prefix, low = head + sep, last.strip().casefold()
        chosen = {item.strip() for item in head.split(",")}
        known = _known_types()
        matches = [t for t in known if t[0].casefold().startswith(low) and t[0] not in chosen]
        return [(prefix + name, help_) for name, help_ in matches]
    except Exception:  # a completion must never break the shell
        return []
