"""`vcenter_session`: one warm pyVmomi session per worker, from a vcconfig secret.

The secret is TOML as in VEBA's examples::

    [vcenter]
    server = "vcsa.lab.local"        # or https://vcsa.lab.local:443/sdk
    user = "administrator@vsphere.local"
    password = "..."                 # "pass" is read too
    insecure = true                  # skip TLS certificate checks

The session is made on first use and cached for the worker's life; pyVmomi's
session-oriented stub logs in again by itself when vCenter answers
``NotAuthenticated`` (an expired or ended session). pyVmomi is imported only
here, so only functions that list ``pyvmomi`` in requirements.txt need it.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from veba.sdk.secrets import secret_toml

__all__ = ["VCenterConfig", "VCenterConfigError", "close_sessions", "vcenter_session"]


class VCenterConfigError(ValueError):
    """The vcconfig secret lacks a field or has a wrong one (never shows the password)."""


@dataclass(frozen=True)
class VCenterConfig:
    host: str
    user: str
    password: str = field(repr=False)
    insecure: bool = False
    port: int = 443
    path: str = "/sdk"
    scheme: str = "https"  # http only for simulators (server = "http://...")

    @classmethod
    def from_toml(cls, doc: Mapping[str, Any], secret: str = "vcconfig") -> VCenterConfig:
        """From the parsed secret: its ``[vcenter]`` table, or top-level keys."""
        table = doc.get("vcenter", doc)
        where = f"secret {secret!r}: " + ("[vcenter] " if "vcenter" in doc else "")
        if not isinstance(table, Mapping):
            raise VCenterConfigError(f"secret {secret!r}: [vcenter] is not a table")

        def text(key: str, *aliases: str) -> str:
            for name in (key, *aliases):
                value = table.get(name)
                if value is not None:
                    if not isinstance(value, str) or not value.strip():
                        raise VCenterConfigError(f"{where}{name} must be a non-empty string")
                    return value.strip()
            raise VCenterConfigError(f"{where}{key} is missing")

        server = text("server", "host")
        user = text("user", "username")
        password = text("password", "pass")
        insecure = table.get("insecure", False)
        if isinstance(insecure, str) and insecure.lower() in ("true", "false", "1", "0"):
            insecure = insecure.lower() in ("true", "1")
        if not isinstance(insecure, bool):
            raise VCenterConfigError(f"{where}insecure must be true or false")
        parts = urlsplit(server if "//" in server else f"//{server}")
        host = parts.hostname
        if not host:
            raise VCenterConfigError(f"{where}server {server!r} names no host")
        scheme = parts.scheme or "https"
        if scheme not in ("http", "https"):
            raise VCenterConfigError(f"{where}server {server!r}: expected https:// or http://")
        port = table.get("port", parts.port or (443 if scheme == "https" else 80))
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise VCenterConfigError(f"{where}port must be a number from 1 to 65535")
        path = parts.path if parts.path not in ("", "/") else "/sdk"
        return cls(host, user, password, insecure, port, path, scheme)


def vcenter_config(secret: str = "vcconfig") -> VCenterConfig:
    """The vCenter connection settings held in the secret ``secret``."""
    return VCenterConfig.from_toml(secret_toml(secret), secret)


_sessions: dict[VCenterConfig, Any] = {}
_lock = threading.Lock()


def vcenter_session(secret: str = "vcconfig") -> Any:
    """A logged-in ``vim.ServiceInstance`` for the vCenter in the secret ``secret``.

    Cached per worker (per settings): the first call of a worker connects, the
    next ones return at once. Raises the connection or login error (``vim.fault.
    InvalidLogin``, ``OSError``) on the first call if vCenter cannot be reached.
    """
    config = vcenter_config(secret)
    with _lock:
        si = _sessions.get(config)
        if si is None:
            si = _sessions[config] = _connect(config)
    return si


def close_sessions() -> None:
    """Log out of every cached session (best effort) and forget them."""
    with _lock:
        sessions = list(_sessions.values())
        _sessions.clear()
    for si in sessions:
        with contextlib.suppress(Exception):  # already gone: nothing to do
            si.content.sessionManager.Logout()


def _connect(config: VCenterConfig) -> Any:
    try:  # untyped on purpose: pyVmomi's types are not the SDK's to check
        connect: Any = importlib.import_module("pyVim.connect")
        vim: Any = importlib.import_module("pyVmomi").vim
    except ImportError as exc:
        raise ModuleNotFoundError(
            "vcenter_session() needs pyVmomi: add 'pyvmomi' to the function's requirements.txt"
        ) from exc
    import ssl

    context = ssl.create_default_context()
    if config.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    # SmartConnect negotiates the API version and logs in (wrong credentials fail
    # here); the session-oriented stub over its connection logs in again whenever
    # vCenter answers NotAuthenticated.
    first = connect.SmartConnect(
        host=config.host,
        port=config.port,
        path=config.path,
        protocol=config.scheme,
        user=config.user,
        pwd=config.password,
        sslContext=context,
    )

    def login(stub: Any) -> None:
        # As VimSessionOrientedStub.makeUserLoginMethod, but a server that refuses to
        # read currentSession with an ended session's cookie (vcsim does) is fine.
        manager = vim.ServiceInstance("ServiceInstance", stub).content.sessionManager
        try:
            if manager.currentSession:
                return
        except vim.fault.NotAuthenticated:
            pass
        manager.Login(config.user, config.password, None)

    si = vim.ServiceInstance("ServiceInstance", connect.VimSessionOrientedStub(first._stub, login))
    return si
