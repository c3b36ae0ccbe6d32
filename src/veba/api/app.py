"""The appliance's HTTP face: FastAPI app with the webhook, OpenFaaS-style and
veba routes. The app owns the appliance's lifetime through its lifespan."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.telemetry import TelemetryConfig

from veba import __version__
from veba.api.auth import CredentialsFirst, require_token
from veba.api.browser import browser_router, install_docs
from veba.api.catalog import catalog_router
from veba.api.dashboard import install_dashboard
from veba.api.errors import error_response, install_error_handling
from veba.api.limits import BodyLimit, body_limits
from veba.api.operations import operations_router
from veba.api.overview import overview_router
from veba.api.store import store_router
from veba.api.stream import stream_router
from veba.api.system import function_router, system_router
from veba.api.v1 import metrics_router, v1_router
from veba.api.webhook import WebhookIngest, webhook_router
from veba.appliance import Appliance
from veba.listeners import plain_ip

__all__ = ["create_app", "operation_id"]


# FastAPI's own OpenTelemetry (a span and metrics per request, when a global
# provider is set) is off: veba exports its spans per delivery attempt
# (veba.otlp) and its metrics to Prometheus. Left on, it looked up the global
# providers on every request, the webhook's included: ~4 % of the appliance's
# CPU at one event per request.
NO_NATIVE_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


def operation_id(route: APIRoute) -> str:
    """`get_api_v1_events_event_id`: method and path, so every operation has an id
    of its own (one method per route: veba.api.system registers them so)."""
    methods = "_".join(sorted(m.lower() for m in route.methods or ()))
    slug = re.sub(r"\W+", "_", route.path_format).strip("_")
    return f"{methods}_{slug}"


def create_app(appliance: Appliance, *, own_lifetime: bool = True) -> FastAPI:
    """The app; it starts and stops the appliance with its lifespan unless the
    server around it does (`veba serve`, which reports a failed start in a line)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not own_lifetime:
            yield
            return
        await appliance.start()
        try:
            yield
        finally:
            await appliance.stop()

    # The OpenAPI document and its viewer sit behind the token like the rest.
    app = FastAPI(
        title="veba",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        generate_unique_id_function=operation_id,
        telemetry=NO_NATIVE_TELEMETRY,
    )
    app.state.appliance = appliance
    # Outermost last: which address (ApiOnlyOn), the webhook's hot path with its
    # answers counted (WebhookIngest), who (CredentialsFirst), how much
    # (BodyLimit), then the routes under the error handling's safety net.
    install_error_handling(app)
    app.add_middleware(BodyLimit, limits=body_limits(appliance.settings))
    app.add_middleware(CredentialsFirst, appliance=appliance)
    app.add_middleware(WebhookIngest, appliance=appliance)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_token)])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    install_docs(app)
    install_dashboard(app)
    app.include_router(browser_router)
    app.include_router(webhook_router(appliance.settings.webhook_path))
    app.include_router(system_router)
    app.include_router(function_router)
    app.include_router(stream_router)  # before v1's /events/{event_id}
    app.include_router(operations_router)
    app.include_router(v1_router)
    app.include_router(overview_router)
    app.include_router(catalog_router)
    app.include_router(store_router)
    app.include_router(metrics_router)
    if appliance.listeners.api_hosts:
        app.add_middleware(
            ApiOnlyOn,
            hosts=appliance.listeners.api_hosts,
            webhook_path=appliance.settings.webhook_path,
        )
    return app


class ApiOnlyOn:
    """On a listener shared with a wildcard webhook bindAddress (veba.listeners),
    everything but the webhook answers only on connections to --listen's
    address: the webhook is as reachable as its bindAddress says, the API no
    more than --listen says. Elsewhere it is a 404, as if nothing were there."""

    def __init__(self, app: Any, *, hosts: frozenset[str], webhook_path: str) -> None:
        self.app = app
        self.hosts = hosts
        self.webhook_path = webhook_path

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if (
            kind in ("http", "websocket")
            and scope.get("path") != self.webhook_path
            and _local_ip(scope) not in self.hosts
        ):
            if kind == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            else:
                await error_response(404, "Not Found")(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _local_ip(scope: Any) -> str | None:
    """The address this end of the connection has (what the client connected to)."""
    local = scope.get("server")
    try:
        return plain_ip(str(local[0])) if local else None
    except ValueError:
        return None
