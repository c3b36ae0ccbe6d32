"""`veba login`, `veba logout`: save an appliance's API token for its address,
in faas-cli's shape (`faas-cli login --gateway URL -u admin --password-stdin`).

The "password" is the appliance's API token (file `token` in its data
directory); veba's API has one user, `admin`. A token is checked against the
gateway before it is saved, and later commands send it to that gateway only.
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import typer

from veba.cli.client import (
    DataDirOption,
    GatewayOption,
    TlsNoVerifyOption,
    err,
    fail,
    gateway_url,
    transport_error,
)
from veba.cli.credentials import GatewayURLError, Logins, gateway_key
from veba.settings import resolve_data_dir

USERNAME = "admin"  # the API's one user, as OpenFaaS's basic-auth user


def _gateway(gateway: str | None, data_dir: Path | None) -> str:
    url = gateway_url(gateway, resolve_data_dir(data_dir))
    try:
        gateway_key(url)
    except GatewayURLError as exc:
        fail(str(exc))
    return url


def login(
    gateway: str | None = GatewayOption,
    username: str = typer.Option(
        USERNAME, "--username", "-u", help="Only `admin`: veba's API has one user"
    ),
    password: str | None = typer.Option(
        None, "--password", "-p", help="The API token (visible to other users: prefer stdin)"
    ),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the API token from stdin"
    ),
    tls_no_verify: bool = TlsNoVerifyOption,
    data_dir: Path | None = DataDirOption,
) -> None:
    """Check an appliance's API token and save it for that gateway (faas-cli login).

    The token is the file `token` in the appliance's data directory:
    `veba login --gateway https://veba.example.com --password-stdin < token`.
    Later commands send it to that gateway, and to no other.
    """
    if username != USERNAME:
        fail(f"--username {username!r}: veba's API has one user, {USERNAME}")
    if password is not None and password_stdin:
        fail("--password and --password-stdin are exclusive")
    if password is not None:
        err.print(
            "WARNING! Using --password is insecure (other users can see it in the process"
            " list and it stays in shell history), consider: veba login --password-stdin",
            style="yellow",
            highlight=False,
        )
        token = password.strip()
    elif password_stdin:
        token = sys.stdin.read().strip()
    else:
        fail("give the API token with --password-stdin (or --password)")
    if not token:
        fail("the API token is empty")
    url = _gateway(gateway, data_dir)
    err.print(f"checking the token with {url} ...", highlight=False)
    try:
        with httpx.Client(base_url=url, timeout=30.0, verify=not tls_no_verify) as http:
            response = http.get("/system/info", headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        fail(transport_error(url, exc))
    if response.status_code == 401:
        fail(
            f"the appliance at {url} refused this token; nothing saved (the token is the"
            " file 'token' in the appliance's data directory)"
        )
    if response.status_code != 200:
        fail(f"{url} answered {response.status_code} to /system/info: is it a veba appliance?")
    logins = Logins()
    try:
        logins.save(url, token, username)
    except OSError as exc:
        fail(f"cannot save the token: {exc}")
    err.print(f"credentials saved for {username} at {url} in {logins.path}", highlight=False)


def logout(
    gateway: str | None = GatewayOption,
    data_dir: Path | None = DataDirOption,
) -> None:
    """Forget the token `veba login` saved for a gateway."""
    url = _gateway(gateway, data_dir)
    try:
        removed = Logins().forget(url)
    except OSError as exc:
        fail(str(exc))
    if not removed:
        fail(f"no token saved for {url}")
    err.print(f"credentials removed for {url}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(login)
    app.command()(logout)
