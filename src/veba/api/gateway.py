"""``http://gateway.openfaas:8080`` for function workers: chaining as in OpenFaaS.

VEBA functions call each other through the OpenFaaS gateway by its in-cluster
name (``requests.post("http://gateway.openfaas:8080/function/echo", ...)``), with
no credentials. veba serves the same two routes (`/function/NAME`,
`/async-function/NAME`) on a listener of its own:

* on port 8080 of a loopback address picked at random (``127.x.y.z``), which
  every isolated worker's private ``/etc/hosts`` names ``gateway.openfaas``;
* answering only connections made by veba's own worker processes (or their
  children): the kernel's socket table (``/proc/net/tcp``) gives the connecting
  socket's inode, and it must be an open file of one of those processes. Anyone
  else, another local user included, gets 403; nothing outside the machine can
  reach a loopback address at all.
"""

from __future__ import annotations

import errno
import os
import random
import socket
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from fastapi import FastAPI, HTTPException, Request

from veba.api.errors import install_error_handling
from veba.api.limits import BodyLimit, body_limits
from veba.api.system import function_routes

if TYPE_CHECKING:
    from veba.api.stats import SideServer
    from veba.appliance import Appliance

__all__ = ["GATEWAY_NAMES", "GATEWAY_PORT", "WorkerGateway", "connection_owner_is"]

GATEWAY_PORT = 8080
# The names a function may use for the gateway inside OpenFaaS's cluster.
GATEWAY_NAMES = ("gateway.openfaas", "gateway.openfaas.svc.cluster.local", "gateway")
_TRIES = 50


def _hex_address(host: str, port: int) -> str:
    """An IPv4 address as /proc/net/tcp prints it: host byte order, then the port."""
    number = int.from_bytes(socket.inet_aton(host), sys.byteorder)
    return f"{number:08X}:{port:04X}"


def _socket_inode(client: tuple[str, int], server: tuple[str, int]) -> int | None:
    """The inode of the client end of the TCP connection ``client`` -> ``server``."""
    local, remote = _hex_address(*client), _hex_address(*server)
    try:
        with open("/proc/net/tcp") as table:
            next(table, None)  # the header
            for line in table:
                fields = line.split()
                if len(fields) > 9 and fields[1] == local and fields[2] == remote:
                    return int(fields[9])
    except OSError:
        return None
    return None


def _with_children(pids: Iterable[int]) -> set[int]:
    found: set[int] = set()
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    todo += [int(p) for p in f.read().split()]
            except (OSError, ValueError):
                continue
    return found


def connection_owner_is(
    client: tuple[str, int], server: tuple[str, int], pids: Iterable[int]
) -> bool:
    """Whether the connecting socket is held by one of ``pids`` (or their children)."""
    inode = _socket_inode(client, server)
    if inode is None or inode == 0:
        return False
    wanted = f"socket:[{inode}]"
    for pid in _with_children(pids):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == wanted:
                    return True
            except OSError:
                continue
    return False


def gateway_app(appliance: Appliance, address: tuple[str, int]) -> FastAPI:
    async def from_a_worker(request: Request) -> None:
        client = request.client
        pids = appliance.functions.worker_pids()
        if client is None or not connection_owner_is((client.host, client.port), address, pids):
            raise HTTPException(
                403,
                "this listener serves veba's function workers only; "
                "call the appliance's API with its token instead",
            )

    app = FastAPI(title="veba gateway for functions", openapi_url=None, docs_url=None)
    app.state.appliance = appliance
    install_error_handling(app)
    app.add_middleware(BodyLimit, limits=body_limits(appliance.settings))
    app.include_router(function_routes(from_a_worker))
    return app


def _bind_loopback(pick: Callable[[], str]) -> socket.socket:
    """A listening socket on port 8080 of a free loopback address."""
    for _ in range(_TRIES):
        host = pick()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, GATEWAY_PORT))
            sock.listen(128)
            sock.setblocking(False)
            return sock
        except OSError as exc:
            sock.close()
            if exc.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                raise
    raise OSError(errno.EADDRINUSE, f"no free loopback address for port {GATEWAY_PORT}")


def _random_loopback() -> str:
    # 127.0.0.0/16 is left alone: other programs pick addresses there.
    return f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"


class WorkerGateway:
    """The listener behind ``gateway.openfaas:8080`` (see the module's docstring)."""

    def __init__(self, server: SideServer, address: tuple[str, int]) -> None:
        self._server = server
        self.address = address

    @classmethod
    async def start(cls, appliance: Appliance) -> WorkerGateway:
        from veba.api.stats import SideServer

        sock = _bind_loopback(_random_loopback)
        address = sock.getsockname()[:2]
        server = SideServer(
            gateway_app(appliance, address), f"{address[0]}:{address[1]}", "gateway", sock=sock
        )
        await server.start()
        return cls(server, address)

    def hosts_entries(self) -> tuple[str, ...]:
        """The /etc/hosts line an isolated worker gets."""
        return (f"{self.address[0]}\t{' '.join(GATEWAY_NAMES)}",)

    async def stop(self) -> None:
        await self._server.stop()
