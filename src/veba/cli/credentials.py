"""Which API token the CLI sends to which gateway.

A token goes only where it belongs, so a stack.yml that names someone else's
gateway cannot collect the local appliance's token:

1. a token given for this call (`--token`, else `VEBA_TOKEN`) goes to the
   gateway this call talks to;
2. else the token `veba login` saved for that gateway (`Logins`);
3. else the token in the data directory, only if the gateway is the appliance
   that wrote it there (it records its address beside it, file `url`);
4. else none, and a refusal says how to give one (`veba login --gateway URL`).
"""

from __future__ import annotations

import json
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veba.settings import read_recorded_url, read_token, write_private

__all__ = ["Credential", "Logins", "choose_credential", "gateway_key", "same_appliance"]

# Names a client uses for the loopback address an appliance recorded.
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


class GatewayURLError(ValueError):
    """A gateway address that is not an http(s) URL."""


def _parts(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) with the defaults filled in, for comparing."""
    parts = urllib.parse.urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise GatewayURLError(f"{url!r} is not a gateway URL: expected http(s)://HOST[:PORT]")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise GatewayURLError(f"{url!r}: the port is not a number") from None
    return scheme, parts.hostname.lower(), port, parts.path.rstrip("/")


def gateway_key(url: str) -> str:
    """One spelling per gateway: `HTTP://Veba:80/` and `http://veba` are the same."""
    scheme, host, port, path = _parts(url)
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{port}{path}"


def same_appliance(recorded: str, gateway: str) -> bool:
    """Whether `gateway` addresses the appliance that recorded `recorded`:
    same scheme, port and path, and the same host, where `localhost` stands for
    the loopback address the appliance recorded."""
    try:
        a, b = _parts(recorded), _parts(gateway)
    except GatewayURLError:
        return False
    if (a[0], a[2], a[3]) != (b[0], b[2], b[3]):
        return False
    if a[1] == b[1]:
        return True
    return a[1] in _LOOPBACK and b[1] == "localhost"


def config_dir() -> Path:
    """The user's veba settings: `$XDG_CONFIG_HOME/veba`, else `~/.config/veba`."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "veba"


class Logins:
    """Tokens saved by `veba login`, one per gateway, in a file only the user
    can read (0600, in a 0700 folder)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or config_dir() / "credentials.json"

    def _read(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise OSError(f"{self.path}: cannot read the saved logins: {exc}") from None
        gateways = doc.get("gateways") if isinstance(doc, dict) else None
        return gateways if isinstance(gateways, dict) else {}

    def _write(self, gateways: dict[str, Any]) -> None:
        doc = {"version": 1, "gateways": gateways}
        write_private(self.path, json.dumps(doc, indent=2).encode() + b"\n")

    def token(self, gateway: str) -> str | None:
        entry = self._read().get(gateway_key(gateway))
        token = entry.get("token") if isinstance(entry, dict) else None
        return token if isinstance(token, str) and token else None

    def save(self, gateway: str, token: str, username: str) -> None:
        gateways = self._read()
        gateways[gateway_key(gateway)] = {"username": username, "token": token}
        self._write(gateways)

    def forget(self, gateway: str) -> bool:
        gateways = self._read()
        if gateways.pop(gateway_key(gateway), None) is None:
            return False
        self._write(gateways)
        return True


@dataclass(frozen=True)
class Credential:
    """The token for one gateway, and where it came from (for error messages)."""

    token: str | None
    source: str  # "--token", "VEBA_TOKEN", "veba login", "data dir", or "none"
    # When the data directory holds a token for another address: that address.
    withheld_for: str | None = None


def choose_credential(gateway: str, data_dir: Path, explicit: str | None) -> Credential:
    """The token to send to `gateway` (see the module's rules)."""
    if explicit:
        return Credential(explicit.strip(), "--token")
    env = os.environ.get("VEBA_TOKEN", "").strip()
    if env:
        return Credential(env, "VEBA_TOKEN")
    try:
        saved = Logins().token(gateway)
    except (OSError, GatewayURLError):
        saved = None
    if saved:
        return Credential(saved, "veba login")
    local = read_token(data_dir)
    recorded = read_recorded_url(data_dir)
    if local and recorded and same_appliance(recorded, gateway):
        return Credential(local, "data dir")
    return Credential(None, "none", withheld_for=recorded if local else None)
