"""How the CLI finds and talks to an appliance."""

from __future__ import annotations

import json
import os
import ssl
import sys
from collections.abc import Collection, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn

import httpx
import typer
import yaml
from rich.console import Console
from rich.table import Table

from veba.cli.credentials import Credential, GatewayURLError, choose_credential, gateway_key
from veba.settings import DEFAULT_LISTEN, read_recorded_url, resolve_data_dir

__all__ = ["Client", "Output", "console", "err", "fail", "print_data", "print_item", "print_rows"]

console = Console()
err = Console(stderr=True, soft_wrap=True)

GatewayOption = typer.Option(
    None, "--gateway", "-g", help="Appliance URL (else VEBA_URL, OPENFAAS_URL, the stack's)"
)
DataDirOption = typer.Option(None, "--data-dir", help="Data directory (else VEBA_DATA_DIR)")


class Output(StrEnum):
    """What `-o` may ask for: a table for people, json or yaml for programs."""

    table = "table"
    json = "json"
    yaml = "yaml"


# An Enum, so a typo (`-o xml`) is refused listing the choices; `-o JSON` is json.
OutputOption = typer.Option(
    Output.table, "--output", "-o", case_sensitive=False, help="Output format"
)
TokenOption = typer.Option(
    None,
    "--token",
    help="API token for this gateway (else VEBA_TOKEN, `veba login`, or the data directory's"
    " token if the gateway is that appliance)",
)
TlsNoVerifyOption = typer.Option(
    False, "--tls-no-verify", help="Do not check the gateway's TLS certificate (this call only)"
)


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def gateway_url(option: str | None, data_dir: Path, stack_gateway: str | None = None) -> str:
    """--gateway, VEBA_URL, OPENFAAS_URL (as VEBA's guides export it for
    faas-cli), the stack's provider.gateway, the address a local `veba serve`
    recorded in the data directory, then the default."""
    url = (
        option
        or os.environ.get("VEBA_URL")
        or os.environ.get("OPENFAAS_URL")
        or stack_gateway
        or read_recorded_url(data_dir)
        or f"http://{DEFAULT_LISTEN}"
    )
    return url.rstrip("/")


class Client:
    """One gateway, with the token that belongs to it (`veba.cli.credentials`)."""

    def __init__(
        self,
        gateway: str | None,
        data_dir: Path | None,
        stack_gateway: str | None = None,
        *,
        token: str | None = None,
        tls_no_verify: bool = False,
    ):
        directory = resolve_data_dir(data_dir)
        self.url = gateway_url(gateway, directory, stack_gateway)
        try:
            gateway_key(self.url)
        except GatewayURLError as exc:
            fail(str(exc))
        self.data_dir = directory
        self.credential = choose_credential(self.url, directory, token)
        headers = {}
        if self.credential.token:
            headers["Authorization"] = f"Bearer {self.credential.token}"
        self.http = httpx.Client(
            base_url=self.url, headers=headers, timeout=60.0, verify=not tls_no_verify
        )

    def request(
        self, method: str, path: str, *, allow: Collection[int] = (), **kwargs: Any
    ) -> httpx.Response:
        """The answer; fails with one line on an error status but those in `allow`,
        which the caller handles."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            fail(transport_error(self.url, exc))
        if response.status_code in allow:
            return response
        if response.status_code == 401:
            fail(refusal(self.url, self.credential, self.data_dir))
        if response.status_code >= 400:
            fail(error_text(response))
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    def stream_lines(self, method: str, path: str, **kwargs: Any) -> Iterator[str]:
        try:
            with self.http.stream(method, path, timeout=None, **kwargs) as response:
                if response.status_code == 401:
                    fail(refusal(self.url, self.credential, self.data_dir))
                if response.status_code >= 400:
                    response.read()
                    fail(error_text(response))
                yield from response.iter_lines()
        except httpx.HTTPError as exc:
            fail(transport_error(self.url, exc))


def untrusted_certificate(exc: BaseException) -> str | None:
    """Why TLS verification failed, if that is what `exc` is about."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return cause.verify_message or "certificate verify failed"
        cause = cause.__cause__ or cause.__context__
    return "certificate verify failed" if "CERTIFICATE_VERIFY_FAILED" in str(exc) else None


def transport_error(url: str, exc: httpx.HTTPError) -> str:
    """One line on why the gateway could not be talked to."""
    reason = untrusted_certificate(exc)
    if reason:
        return (
            f"{url}: its TLS certificate is not trusted ({reason}); pass --tls-no-verify"
            " to skip the check for this call, or trust its CA with SSL_CERT_FILE"
        )
    if isinstance(exc, httpx.ConnectError):
        return f"cannot reach the appliance at {url}; is `veba serve` running?"
    return f"{url}: {exc}"


def refusal(url: str, credential: Credential, data_dir: Path) -> str:
    """Why the gateway answered 401, and what to do about it."""
    login = f"`veba login --gateway {url} --password-stdin`"
    if credential.source == "none":
        why = f"the appliance at {url} wants an API token and none is known for it"
        if credential.withheld_for:
            why += (
                f" (the token in {data_dir} belongs to {credential.withheld_for}"
                " and goes nowhere else)"
            )
        return (
            f"{why}: run {login} with the appliance's token (file 'token' in its data"
            " directory) on stdin, or pass --token / set VEBA_TOKEN"
        )
    if credential.source == "veba login":
        return f"the appliance at {url} refused the token saved by `veba login`; run {login} again"
    if credential.source == "data dir":
        return (
            f"the appliance at {url} refused the token in {data_dir}; is that its data"
            " directory? (--data-dir / VEBA_DATA_DIR)"
        )
    return f"the appliance at {url} refused the token given by {credential.source}"


def error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"{response.status_code}: {response.text.strip()}"
    if isinstance(body, dict):
        return str(body.get("error") or body.get("detail") or body)
    return str(body)


def print_data(value: Any, output: str) -> None:
    """`value` as one JSON or YAML document on stdout (`-o json|yaml`)."""
    if output == Output.yaml:
        sys.stdout.write(yaml.safe_dump(value, sort_keys=False, allow_unicode=True))
    else:
        sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def print_item(value: Any, output: str) -> None:
    """One item of a stream (`logs --follow`, `events tail`): a JSON line, or a YAML
    document of a multi-document stream, flushed at once."""
    if output == Output.yaml:
        sys.stdout.write(
            yaml.safe_dump(value, sort_keys=False, allow_unicode=True, explicit_start=True)
        )
    else:
        sys.stdout.write(json.dumps(value, default=str) + "\n")
    sys.stdout.flush()


def print_rows(rows: list[dict[str, Any]], columns: list[str], output: str) -> None:
    if output != Output.table:
        print_data(rows, output)
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
