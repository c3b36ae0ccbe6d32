"""The `veba` command line."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from veba import __version__
from veba.cli import catalog, events, functions, login, migrate, secrets, serve, templates
from veba.cli.client import (
    Client,
    DataDirOption,
    GatewayOption,
    TlsNoVerifyOption,
    TokenOption,
    err,
)

__all__ = ["app", "main"]

app = typer.Typer(
    help="veba: vCenter events to Python functions, at least once.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"veba {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        is_eager=True,
        callback=_print_version,
        help="Print veba's version and exit",
    ),
) -> None:
    """veba: vCenter events to Python functions, at least once."""


def version(
    gateway: str | None = GatewayOption,
    data_dir: Path | None = DataDirOption,
    token: str | None = TokenOption,
    tls_no_verify: bool = TlsNoVerifyOption,
) -> None:
    """Print this CLI's version, and the appliance's if one answers (as faas-cli version)."""
    sys.stdout.write(f"veba {__version__}\n")
    client = Client(gateway, data_dir, token=token, tls_no_verify=tls_no_verify)
    try:
        response = client.http.get("/system/info", timeout=3.0)
        release = response.json()["version"]["release"] if response.status_code == 200 else None
    except Exception:  # no appliance, or not a veba: the CLI's version is still the answer
        release = None
    if release:
        sys.stdout.write(f"appliance at {client.url}: veba {release}\n")
    else:
        err.print(f"(no appliance answered at {client.url})", highlight=False)


app.command()(serve.serve)
app.command()(migrate.migrate)
functions.register(app)
login.register(app)
app.add_typer(secrets.secret_app, name="secret")
app.add_typer(templates.template_app, name="template")
app.add_typer(events.events_app, name="events")
app.add_typer(events.dlq_app, name="dlq")
app.command()(events.replay)
app.command()(events.status)
app.command()(catalog.catalog)
app.command()(version)


def main() -> None:
    app()
