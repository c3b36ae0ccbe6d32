"""`veba secret create|list|remove`.

One rule decides what `create` makes: **an `=` makes a key.** `--from-literal
KEY=VALUE` and `--from-file KEY=PATH` (kubectl's forms, repeatable) give a secret
with several keys, one file each for a function; `--from-file PATH` among
others gives the key PATH's file name. faas-cli's forms stay what they were:
one `--from-file PATH`, one `--from-literal VALUE` without `=`, or the value on
stdin make a single-value secret that a function sees as one file named after
the secret.
"""

from __future__ import annotations

import base64
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from veba.cli.client import (
    Client,
    DataDirOption,
    GatewayOption,
    Output,
    OutputOption,
    TlsNoVerifyOption,
    TokenOption,
    err,
    fail,
    print_rows,
)
from veba.secrets import valid_secret_key

secret_app = typer.Typer(help="Function secrets (encrypted at rest)", no_args_is_help=True)

_STDIN = "-"


@dataclass
class SecretInput:
    """What the flags of `secret create` ask for: one value, or keys."""

    value: bytes | None = None
    keys: dict[str, bytes] = field(default_factory=dict)
    _stdin_used: bool = False

    def read_stdin(self, flag: str) -> bytes:
        if self._stdin_used:
            fail(f"{flag}: stdin can be read once only")
        self._stdin_used = True
        return sys.stdin.buffer.read()

    def add_key(self, flag: str, key: str, value: bytes) -> None:
        if not valid_secret_key(key):
            fail(
                f"{flag}: key {key!r} is not valid: use letters, digits, '-', '.', '_'"
                " (it becomes a file name)"
            )
        if key in self.keys:
            fail(f"{flag}: key {key!r} is given twice; each key holds one value")
        self.keys[key] = value


def _read_file(flag: str, path: str, secret: SecretInput) -> bytes:
    if path == _STDIN:
        return secret.read_stdin(flag)
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        fail(f"{flag}: {exc.strerror or exc}")


def collect(literals: list[str], files: list[str]) -> SecretInput:
    """The secret the flags describe (see the module's rule); fails with the flag."""
    secret = SecretInput()
    keyed = len(literals) + len(files) > 1 or any("=" in item for item in literals + files)
    if not literals and not files:
        if sys.stdin.isatty():
            fail("give the secret with --from-literal, --from-file, or on stdin")
        # faas-cli's form: `cat value.txt | veba secret create NAME`, trimmed as it does.
        secret.value = secret.read_stdin("stdin").strip()
    for index, item in enumerate(literals, 1):
        key, sep, text = item.partition("=")
        flag = f"--from-literal #{index}"
        if not keyed:
            secret.value = item.encode()
        elif not sep:
            # Never echo the text: it is a value, perhaps a password.
            fail(
                f"{flag}: a value without KEY= makes a single-value secret and goes alone;"
                " with other flags write KEY=VALUE"
            )
        elif not text:
            fail(
                f"{flag}: KEY=VALUE with an empty VALUE; if the whole text is the value"
                " (base64 ending in '=', say), give it on stdin instead"
            )
        else:
            secret.add_key(flag, key, text.encode())
    for item in files:
        key, sep, path = item.partition("=")
        if not sep:
            key, path = Path(item).name, item
        flag = f"--from-file {item}"
        content = _read_file(flag, path, secret)
        if not keyed:
            secret.value = content
        elif path == _STDIN and not sep:
            fail(f"{flag}: stdin has no file name to be the key; write KEY=-")
        else:
            secret.add_key(flag, key, content)
    if secret.value == b"":
        fail("the secret's value is empty")
    return secret


@secret_app.command("create")
def create(
    name: str = typer.Argument(help="Secret name, as functions declare it under `secrets`"),
    from_literal: list[str] = typer.Option(
        [],
        "--from-literal",
        help="KEY=VALUE: one key (repeatable). Alone and without '=': the whole value",
    ),
    from_file: list[str] = typer.Option(
        [],
        "--from-file",
        help="[KEY=]PATH: one key, named KEY or the file's name (repeatable; '-' is stdin)."
        " Alone and without KEY=: the file is the whole value",
    ),
    replace: bool = typer.Option(
        False, "--replace", help="Overwrite an existing secret (restarts the functions using it)"
    ),
    gateway: str | None = GatewayOption,
    data_dir: Path | None = DataDirOption,
    token: str | None = TokenOption,
    tls_no_verify: bool = TlsNoVerifyOption,
) -> None:
    """Store a secret for functions that declare it.

    An '=' makes a key; a function sees one file per key:
      --from-literal username=admin --from-literal password=...
      --from-file SLACK_SECRET=slack.json   --from-file a.json --from-file b.json

    faas-cli's forms make a single-value secret, one file named NAME:
      --from-file vcconfig.toml   --from-literal VALUE   or the value on stdin

    A value that contains '=' goes on stdin or in a file.
    """
    secret = collect(from_literal, from_file)
    body: dict[str, Any] = {"name": name, "replace": replace}
    if secret.value is not None:
        body["rawValue"] = base64.b64encode(secret.value).decode()
    else:
        body["keys"] = {k: base64.b64encode(v).decode() for k, v in secret.keys.items()}
    client = Client(gateway, data_dir, token=token, tls_no_verify=tls_no_verify)
    answer = client.json("PUT" if replace else "POST", "/system/secrets", json=body)
    what = f"secret {name} {'replaced' if replace else 'created'}"
    if secret.value is None:
        what += f" with keys {', '.join(sorted(secret.keys))}"
    if answer.get("restarted"):
        what += f"; restarted {', '.join(answer['restarted'])}"
    err.print(what, highlight=False)


@secret_app.command("list")
def list_secrets(
    gateway: str | None = GatewayOption,
    data_dir: Path | None = DataDirOption,
    token: str | None = TokenOption,
    tls_no_verify: bool = TlsNoVerifyOption,
    output: Output = OutputOption,
) -> None:
    """Secret names and their keys (never their values)."""
    client = Client(gateway, data_dir, token=token, tls_no_verify=tls_no_verify)
    rows: list[dict[str, Any]] = client.json("GET", "/system/secrets")
    if output == Output.table:
        for row in rows:
            keys = row.get("keys")
            row["keys"] = "(one value)" if keys is None else ", ".join(keys)
    print_rows(rows, ["name", "keys"], output)


@secret_app.command("remove")
def remove(
    name: str = typer.Argument(help="Secret name (see `veba secret list`)"),
    gateway: str | None = GatewayOption,
    data_dir: Path | None = DataDirOption,
    token: str | None = TokenOption,
    tls_no_verify: bool = TlsNoVerifyOption,
) -> None:
    """Delete a secret that no function uses."""
    client = Client(gateway, data_dir, token=token, tls_no_verify=tls_no_verify)
    client.request("DELETE", "/system/secrets", json={"name": name})
    err.print(f"secret {name} removed", highlight=False)
