"""`veba secret create|list|remove`."""

from __future__ import annotations

import base64
from pathlib import Path

import typer

from veba.cli.client import (
    Client,
    DataDirOption,
    GatewayOption,
    OutputOption,
    err,
    fail,
    print_rows,
)

secret_app = typer.Typer(help="Function secrets (encrypted at rest)", no_args_is_help=True)


@secret_app.command("create")
def create(
    name: str,
    from_file: Path | None = typer.Option(None, "--from-file"),
    from_literal: str | None = typer.Option(None, "--from-literal"),
    replace: bool = typer.Option(False, "--replace", help="Overwrite an existing secret"),
    gateway: str | None = GatewayOption,
    data_dir: Path | None = DataDirOption,
) -> None:
    """Store a secret for functions that declare it."""
    if (from_file is None) == (from_literal is None):
        fail("give exactly one of --from-file or --from-literal")
    if from_file is not None:
        try:
            value = from_file.read_bytes()
        except OSError as exc:
            fail(f"--from-file {from_file}: {exc.strerror}")
    else:
        value = str(from_literal).encode()
    body = {"name": name, "rawValue": base64.b64encode(value).decode(), "replace": replace}
    Client(gateway, data_dir).request("PUT" if replace else "POST", "/system/secrets", json=body)
    err.print(f"secret {name} {'replaced' if replace else 'created'}", highlight=False)


@secret_app.command("list")
def list_secrets(
    gateway: str | None = GatewayOption,
    data_dir: Path | None = DataDirOption,
    output: str = OutputOption,
) -> None:
    """Secret names (never their values)."""
    print_rows(Client(gateway, data_dir).json("GET", "/system/secrets"), ["name"], output)


@secret_app.command("remove")
def remove(
    name: str, gateway: str | None = GatewayOption, data_dir: Path | None = DataDirOption
) -> None:
    """Delete a secret that no function uses."""
    Client(gateway, data_dir).request("DELETE", "/system/secrets", json={"name": name})
    err.print(f"secret {name} removed", highlight=False)
