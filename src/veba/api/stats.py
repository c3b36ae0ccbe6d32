"""VEBA's metrics server: `/stats` in the JSON shape of its router, on its own address.

VEBA's router serves Go's expvar page: `cmdline`, `system.*` and under
`vmware.event.router.stats` one entry per provider and processor:

    {"type": "EventProvider", "address": "https://vc/sdk", "started": "...Z",
     "events_total": 12, "events_err": 0, "events_per_sec": 0.5}
    {"type": "EventProcessor", "address": "http://gateway:8080", "started": "...Z",
     "invocations": {"VmPoweredOnEvent": 3}}

An entry is named by its type (`vcenter`, `webhook`, `openfaas`, `knative`) as
VEBA names it, or `type:name` when there are several of one type. For the
appliance's own functions (the `openfaas` processor that names the appliance)
`invocations` counts deliveries per function, which is what the appliance
knows without reading its log; external sinks count per event subject.

`SideServer` runs a small app (this one, or the webhook on a RouterConfig's
`bindAddress`) beside the main API, in the same event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from veba.api.auth import CredentialsFirst, check_basic
from veba.api.errors import install_error_handling
from veba.listeners import KEEP_ALIVE_SECONDS

if TYPE_CHECKING:
    from veba.appliance import Appliance

__all__ = ["SideServer", "side_servers", "stats", "stats_app"]

MAP_NAME = "vmware.event.router.stats"
_PROGRAM = "veba"


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat().replace("+00:00", "Z")


def _load() -> dict[str, float]:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        one = five = fifteen = 0.0
    return {"Load1": one, "Load5": five, "Load15": fifteen}


def _sample(appliance: Appliance, name: str, labels: dict[str, str]) -> float:
    value = appliance.metrics.registry.get_sample_value(name, labels)
    return float(value or 0.0)


def stats(appliance: Appliance, *, started: float, listen: str) -> dict[str, Any]:
    """The whole `/stats` document."""
    now = time.time()
    uptime = max(now - started, 1e-9)
    entries: list[tuple[str, str, dict[str, Any]]] = []  # (type, name, entry)

    for provider in appliance.providers:
        status = provider.status()
        total = int(status.get("events") or 0)
        entries.append(
            (
                str(status.get("type", "provider")),
                provider.name,
                {
                    "type": "EventProvider",
                    "address": str(status.get("source") or status.get("name")),
                    "started": _iso(started),
                    "events_total": total,
                    "events_err": int(status.get("events_err") or 0),
                    "events_per_sec": round(total / uptime, 2),
                },
            )
        )
    settings = appliance.settings
    webhook_total = int(_sample(appliance, "veba_events_ingested_total", {"via": "webhook"}))
    webhook_err = int(_sample(appliance, "veba_events_rejected_total", {"via": "webhook"}))
    host = settings.webhook_listen or listen
    entries.append(
        (
            "webhook",
            "webhook",
            {
                "type": "EventProvider",
                "address": f"http://{host}{settings.webhook_path}",
                "started": _iso(started),
                "events_total": webhook_total,
                "events_err": webhook_err,
                "events_per_sec": round(webhook_total / uptime, 2),
            },
        )
    )

    delivered: Counter[str] = Counter()
    for deployment in appliance.functions.all():
        fn = deployment.definition.name
        count = _sample(
            appliance, "veba_deliveries_total", {"function": fn, "outcome": "delivered"}
        )
        if count:
            delivered[fn] = int(count)
    entries.append(
        (
            "openfaas",
            "functions",
            {
                "type": "EventProcessor",
                "address": f"http://{listen}",
                "started": _iso(started),
                "invocations": dict(delivered),
            },
        )
    )
    for item in appliance.processors.status():
        entries.append(
            (
                item["type"],
                item["name"].split(":", 1)[-1],
                {
                    "type": "EventProcessor",
                    "address": item["address"],
                    "started": _iso(started),
                    "invocations": item["invocations"],
                },
            )
        )

    kinds = Counter(kind for kind, _, _ in entries)
    router = {
        (kind if kinds[kind] == 1 else f"{kind}:{name}"): entry for kind, name, entry in entries
    }
    load = _load()
    # VEBA's expvar shows the whole command line; veba's may hold a webhook
    # password or token (--webhook-password), so only the program's name is shown.
    return {
        "cmdline": [_PROGRAM],
        "system.allLoad": load,
        "system.lastLoad": load["Load1"],
        "system.numberOfSeconds": int(uptime),
        "system.programName": _PROGRAM,
        MAP_NAME: router,
    }


def stats_app(
    appliance: Appliance, *, auth: tuple[str, str] | None, started: float, listen: str
) -> FastAPI:
    app = FastAPI(title="veba metrics", openapi_url=None, docs_url=None, redoc_url=None)
    install_error_handling(app)

    @app.get("/stats")
    async def get_stats(request: Request) -> Response:
        if auth is not None and not check_basic(request.headers, *auth):
            return Response(
                "invalid credentials",
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="Restricted"'},
            )
        return JSONResponse(stats(appliance, started=started, listen=listen))

    return app


def webhook_app(appliance: Appliance) -> FastAPI:
    from veba.api.app import NO_NATIVE_TELEMETRY
    from veba.api.limits import BodyLimit, body_limits
    from veba.api.webhook import WebhookIngest, webhook_router

    app = FastAPI(
        title="veba webhook",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        telemetry=NO_NATIVE_TELEMETRY,
    )
    app.state.appliance = appliance
    install_error_handling(app)
    app.add_middleware(BodyLimit, limits=body_limits(appliance.settings))
    app.add_middleware(CredentialsFirst, appliance=appliance, webhook_only=True)
    app.add_middleware(WebhookIngest, appliance=appliance)
    app.include_router(webhook_router(appliance.settings.webhook_path))
    return app


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the main server owns the signals


class SideServer:
    """A second listener in the appliance's event loop, on a socket `veba serve`
    bound, or else on `bind`."""

    def __init__(
        self, app: FastAPI, bind: str, what: str, sock: socket.socket | None = None
    ) -> None:
        host, _, port = bind.rpartition(":")
        self.what = what
        self.bind = bind
        self._sock = sock
        self._server = _Server(
            uvicorn.Config(
                app,
                host=host.strip("[]") or "0.0.0.0",
                port=int(port),
                log_level="warning",
                access_log=False,
                lifespan="off",
                timeout_keep_alive=KEEP_ALIVE_SECONDS,
            )
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        sockets = [self._sock] if self._sock is not None else None
        self._task = asyncio.create_task(
            self._server.serve(sockets=sockets), name=f"listen:{self.what}"
        )
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises why it could not listen
                raise RuntimeError(f"{self.what} on {self.bind} did not start")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._task, 10)


def side_servers(appliance: Appliance, *, started: float | None = None) -> list[SideServer]:
    """The listeners beside the API's (see veba.listeners): `/stats`, and the
    webhook when it has an address of its own."""
    settings = appliance.settings
    servers: list[SideServer] = []
    for listener in appliance.listeners.listeners:
        bind, sock = str(listener.address), appliance.sockets.get(listener.purpose)
        if listener.purpose == "metrics" and settings.metrics is not None:
            auth = settings.metrics.basic_auth
            app = stats_app(
                appliance,
                auth=(auth.username, auth.password) if auth else None,
                started=started or time.time(),
                listen=settings.listen,
            )
            servers.append(SideServer(app, bind, "metrics", sock))
        elif listener.purpose == "webhook":
            servers.append(SideServer(webhook_app(appliance), bind, "webhook", sock))
    return servers
