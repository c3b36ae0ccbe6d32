"""`veba events|dlq|replay|status`: look into the log and act on it."""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import typer

from veba.cli.client import (
    Client,
    DataDirOption,
    GatewayOption,
    Output,
    OutputOption,
    TlsNoVerifyOption,
    TokenOption,
    console,
    fail,
    print_data,
    print_item,
    print_rows,
)
from veba.cli.completion import complete_function
from veba.cli.views import ShowOutputOption, dead_letter_view, event_view, print_view, status_view

events_app = typer.Typer(help="Events in the log", no_args_is_help=True)
dlq_app = typer.Typer(help="The dead-letter queue", no_args_is_help=True)


def _event_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "seq": r["seq"],
            "id": r["event"]["id"],
            "subject": r["event"].get("subject"),
            "source": r["event"]["source"],
            "time": r["event"].get("time"),
        }
        for r in records
    ]


@events_app.command("list")
def events_list(
    subject: str | None = typer.Option(None, "--subject", help="Only events of this type"),
    limit: int = typer.Option(20, "--limit", help="At most this many events, newest first"),
    gateway: str | None = GatewayOption,
    data_dir: Path | None = DataDirOption,
    token: str | None = TokenOption,
    tls_no_verify: bool = TlsNoVerifyOption,
    output: Output = OutputOption,
) -> None:
    """The newest events in the log."""
    params = {"limit": limit, "newest_first": "true", **({"subject": subject} if subject else {})}
    records = Client(gateway, data_dir, token=token, tls_no_verify=tls_no_verify).json(
        "GET", "/api/v1/events", params=params
    )
    if output != Output.table:
        print_data(records, output)
    else:
        print_rows(_event_rows(records), ["seq", "id", "subject", "source", "time"], output)


@events_app.command("show")
def events_show(
    event: str = typer.Argument(..., help="Its seq (as `events list` shows) or its id"),
    gateway: str | None = GatewayOption,
    data_dir: Path | None = DataDirOption,
    token: str | None = TokenOption,
    tls_no_verify: bool = TlsNoVerifyOption,
    output: Output | None = ShowOutputOption,
) -> None:
    """One event with its deliveries and their attempts."""
    record = Client(gateway, data_dir, token=token, tls_no_verify=tls_no_verify).json(
        "GET", f"/api/v1/events/{quote(event, safe='')}"
    )
    print_view(record, event_view, output)


@events_app.command("tail")
def events_tail(
    subject: str | None = typer.Option(None, "--subject", help="Only events of this type"),
    gateway: str | None = GatewayOption,
    data_dir: Path | None = DataDirOption,
    token: str | None = TokenOption,
    tls_no_verify: bool = TlsNoVerifyOption,
    output: Output = OutputOption,
) -> None:
    """Follow new events as they are logged."""
    client = Client(gateway, data_dir, token=token, tls_no_verify=tls_no_verify)
    newest = client.json("GET", "/api/v1/events", params={"limit": 1, "newest_first": "true"})
    after = newest[0]["seq"] if newest else 0
    try:
        while True:
            params = {"after": after, "limit": 500, **({"subject": subject} if subject else {})}
            records = client.json("GET", "/api/v1/events", params=params)
            for r in records:
                after = max(after, r["seq"])
                e = r["event"]
                if output != Output.table:
                    print_item(r, output)
                else:
                    sys.stdout.write(
                        f"{r['seq']:>8} {e.get('time', '')} {e.get('subject', '')} {e['id']}\n"
                    )
                    sys.stdout.flush()
            if not records:
                time.sleep(0.5)
    except KeyboardInterrupt:
        pass


@dlq_app.command("list")
def dlq_list(
    function: str | None = typer.Option(
        None, "--function", help="Only this function's", autocompletion=complete_function
    ),
    limit: int = typer.Option(100, "--limit", help="At most this many dead letters"),
    gateway: str | None = GatewayOption,
    data_dir: Path | None = DataDirOption,
    token: str | None = TokenOption,
    tls_no_verify: bool = TlsNoVerifyOption,
    output: Output = OutputOption,
) -> None:
    """Dead-lettered deliveries."""
    params = {"limit": limit, **({"function": function} if function else {})}
    rows = Client(gateway, data_dir, token=token, tls_no_verify=tls_no_verify).json(
        "GET", "/api/v1/dlq", params=params
    )
    for row in rows:
        row["error"] = (
            (row.get("last_error") or "").splitlines()[0][:80] if row.get("last_error") else ""
        )
    print_rows(
        rows,
        ["id", "subscription", "subject", "event_id", "attempts", "last_status", "error"],
        output,
    )


@dlq_app.command("show")
def dlq_show(
    delivery_id: int = typer.Argument(help="Dead-letter id (the id column of `veba dlq list`)"),
    gateway: str | None = GatewayOption,
    data_dir: Path | None = DataDirOption,
    token: str | None = TokenOption,
    tls_no_verify: bool = TlsNoVerifyOption,
    output: Output | None = ShowOutputOption,
) -> None:
    """A dead letter: its event, every attempt, and the last error with its traceback."""
    record = Client(gateway, data_dir, token=token, tls_no_verify=tls_no_verify).json(
        "GET", f"/api/v1/dlq/{delivery_id}"
    )
    print_view(record, dead_letter_view, output)


@dlq_app.command("redrive")
def dlq_redrive(
    ids: list[int] = typer.Argument(None, help="Dead-letter ids"),
    function: str | None = typer.Option(
        None,
        "--function",
        help="Every dead letter of this function",
        autocompletion=complete_function,
    ),
    all_: bool = typer.Option(False, "--all", help="Every dead letter"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only say what would be redriven"),
    gateway: str | None = GatewayOption,
    data_dir: Path | None = DataDirOption,
    token: str | None = TokenOption,
    tls_no_verify: bool = TlsNoVerifyOption,
) -> None:
    """Send dead letters back for delivery, with a fresh attempt count."""
    if ids:
        body: dict[str, object] = {"ids": ids}
        what = "dead letter" + ("s " if len(ids) > 1 else " ") + ", ".join(map(str, ids))
    elif function:
        body, what = {"function": function}, f"dead letters of {function}"
    elif all_:
        body, what = {"all": True}, "dead letters"
    else:
        fail("say what to redrive: IDS, --function NAME or --all")
    result = Client(gateway, data_dir, token=token, tls_no_verify=tls_no_verify).json(
        "POST", "/api/v1/dlq/redrive", json={**body, "dry_run": dry_run}
    )
    if result["dead"] == 0:
        console.print(f"nothing to redrive: no {what}")
    elif dry_run:
        console.print(f"would redrive {result['dead']} {what} (dry run: nothing sent)")
    else:
        console.print(f"redriven: {result['redriven']}")


def _when(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        fail(f"{value!r} is not a time: use ISO-8601 (2026-11-26T10:00:00Z) or epoch seconds")


def replay(
    function: str = typer.Argument(
        ..., help="Function to deliver the events to", autocompletion=complete_function
    ),
    since: str | None = typer.Option(None, "--since", help="ISO-8601 time or epoch seconds"),
    until: str | None = typer.Option(
        None, "--until", help="ISO-8601 time or epoch seconds (default: now)"
    ),
    types: list[str] = typer.Option(None, "--type", help="Only these subjects (repeatable)"),
    force: bool = typer.Option(
        False, "--force", help="Every event of the range, even those the function does not take"
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only count what would be replayed"),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation"),
    gateway: str | None = GatewayOption,
    data_dir: Path | None = DataDirOption,
    token: str | None = TokenOption,
    tls_no_verify: bool = TlsNoVerifyOption,
) -> None:
    """Deliver logged events again to a function: those of the range (time
    received, --type) that its subscription takes. Counts first and asks."""
    body = {
        "function": function,
        "since": _when(since),
        "until": _when(until),
        "types": types or None,
        "force": force,
    }
    client = Client(gateway, data_dir, token=token, tls_no_verify=tls_no_verify)
    counted = client.json("POST", "/api/v1/replay", json={**body, "dry_run": True})["events"]
    which = (
        "of the range, whatever its subscription (--force)"
        if force
        else "that its subscription takes"
    )
    if counted == 0:
        console.print(f"nothing to replay: no logged event {which}")
        return
    plan = f"{counted} event{'s' if counted != 1 else ''} {which} to {function}"
    if dry_run:
        console.print(f"would replay {plan} (dry run: nothing sent)")
        return
    if not yes:
        if not sys.stdin.isatty():
            fail(f"would replay {plan}; not a terminal, so nothing done: add --yes to go ahead")
        if not typer.confirm(f"Replay {plan}?"):
            fail("nothing replayed")
    result = client.json("POST", "/api/v1/replay", json=body)
    console.print(f"replayed: {result['replayed']}")


def status(
    gateway: str | None = GatewayOption,
    data_dir: Path | None = DataDirOption,
    token: str | None = TokenOption,
    tls_no_verify: bool = TlsNoVerifyOption,
    output: Output | None = ShowOutputOption,
) -> None:
    """Providers and functions at a glance."""
    answer = Client(gateway, data_dir, token=token, tls_no_verify=tls_no_verify).json(
        "GET", "/api/v1/status"
    )
    print_view(answer, status_view, output)
