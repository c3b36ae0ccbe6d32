"""How the CLI finds and talks to an appliance."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.table import Table

from veba.settings import DEFAULT_LISTEN, read_token, resolve_data_dir

__all__ = ["Client", "console", "err", "fail", "print_rows"]

console = Console()
err = Console(stderr=True, soft_wrap=True)

GatewayOption = typer.Option(None, "--gateway", "-g", help="Appliance URL (else VEBA_URL)")
DataDirOption = typer.Option(None, "--data-dir", help="Data directory (else VEBA_DATA_DIR)")
OutputOption = typer.Option("table", "--output", "-o", help="table or json")


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def gateway_url(option: str | None, data_dir: Path, stack_gateway: str | None = None) -> str:
    """--gateway, VEBA_URL, the stack's provider.gateway, the address a local
    `veba serve` recorded in the data directory, then the default."""
    url = option or os.environ.get("VEBA_URL") or stack_gateway
    if not url:
        try:
            url = (data_dir / "url").read_text().strip()
        except OSError:
            url = f"http://{DEFAULT_LISTEN}"
    return url.rstrip("/")


class Client:
    def __init__(
        self, gateway: str | None, data_dir: Path | None, stack_gateway: str | None = None
    ):
        directory = resolve_data_dir(data_dir)
        self.url = gateway_url(gateway, directory, stack_gateway)
        token = read_token(directory)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=60.0)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.ConnectError:
            fail(f"cannot reach the appliance at {self.url}; is `veba serve` running?")
        except httpx.HTTPError as exc:
            fail(f"{self.url}: {exc}")
        if response.status_code == 401:
            fail(
                "the appliance refused the API token: set VEBA_TOKEN, or --data-dir / "
                "VEBA_DATA_DIR to the appliance's data directory"
            )
        if response.status_code >= 400:
            fail(error_text(response))
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    def stream_lines(self, method: str, path: str, **kwargs: Any) -> Iterator[str]:
        try:
            with self.http.stream(method, path, timeout=None, **kwargs) as response:
                if response.status_code >= 400:
                    response.read()
                    fail(error_text(response))
                yield from response.iter_lines()
        except httpx.ConnectError:
            fail(f"cannot reach the appliance at {self.url}; is `veba serve` running?")


def error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"{response.status_code}: {response.text.strip()}"
    if isinstance(body, dict):
        return str(body.get("error") or body.get("detail") or body)
    return str(body)


def print_rows(rows: list[dict[str, Any]], columns: list[str], output: str) -> None:
    if output == "json":
        sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
        return
    table = Table(*columns)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    console.print(table)


def parse_overrides(settings: list[str]) -> dict[str, Any]:
    """`--set PATH=VALUE` options: numbers, true/false/null and JSON objects as
    such; anything else is text."""
    overrides: dict[str, Any] = {}
    for item in settings:
        path, sep, raw = item.partition("=")
        if not sep or not path.strip():
            fail(f"--set {item!r}: expected PATH=VALUE, like data.Vm.Name=web-01")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        overrides[path.strip()] = value
    return overrides
