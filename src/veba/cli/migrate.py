"""`veba migrate`: a stopped appliance's state onto NATS JetStream (veba.migrate)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from veba.cli.client import DataDirOption, err, fail
from veba.settings import resolve_data_dir


def migrate(
    to: str = typer.Option(
        ...,
        "--to",
        help="The NATS location the cluster will run on, as `veba serve --event-log`"
        " takes it: nats://HOST:PORT,HOST:PORT.../NAME",
    ),
    data_dir: Path | None = DataDirOption,
    replicas: int = typer.Option(
        1,
        "--replicas",
        min=1,
        max=5,
        help="How many servers keep each stream and bucket made (as `veba serve --replicas`)",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Count what would be copied; write nothing"
    ),
    force: bool = typer.Option(
        False, "--force", help="Copy even if NAME holds functions already (a second run)"
    ),
) -> None:
    """Copy a stopped appliance's state from its data directory onto NATS JetStream.

    Deployed functions, secrets (encrypted; copy secret.key to every node), the
    functions' store, every event still to be delivered (and the dead letters),
    and the providers' checkpoints: then start the nodes with
    `veba serve --event-log` and the same location. Events already delivered
    stay behind. Safe to run again (with --force): nothing is copied twice.
    """
    from veba.migrate import MigrateError
    from veba.migrate import migrate as run
    from veba.natsurl import NatsConnectError, NatsURLError, parse_nats_url

    try:
        location = parse_nats_url(to)
    except NatsURLError as exc:
        from rich.markup import escape  # the message shows [,HOST:PORT...][/NAME]

        fail(escape(f"--to {exc}"))
    folder = resolve_data_dir(data_dir)
    try:
        report = asyncio.run(run(folder, location, replicas=replicas, dry_run=dry_run, force=force))
    except (MigrateError, NatsConnectError) as exc:
        fail(str(exc))
    what = "would copy" if dry_run else "copied"
    err.print(f"{folder} → {location}: {what}", highlight=False)
    for line in report.lines():
        typer.echo(line)
    if report.skipped_functions:
        fail("some functions were not copied (the lines 'not copied' say why); the rest was")
    if not dry_run:
        err.print(
            f"next: start every node with --event-log {location}"
            + (f" --replicas {replicas}" if replicas > 1 else ""),
            highlight=False,
        )
