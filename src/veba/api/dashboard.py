"""The dashboard at `/`: one page of plain HTML, JavaScript and CSS shipped in
the package (`api/dashboard/`), served by the appliance itself, so it works
with no internet. It reads the API with the browser's session cookie (sign-in
at `/login`, veba.api.browser): `/api/v1/overview` for the chart, functions
and providers, `/api/v1/events/stream` for events as they come, and the event,
DLQ, pause and replay routes for the rest.

Like every route but `/healthz` and `/login` it is behind credentials
(`CredentialsFirst`); an anonymous browser is sent to `/login?next=/`. The page
may load and fetch only from its own origin (its Content-Security-Policy).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["install_dashboard"]

ASSETS = Path(__file__).parent / "dashboard"
STATIC = "/dashboard/static"
_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
    " img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def install_dashboard(app: FastAPI) -> None:
    app.mount(STATIC, StaticFiles(directory=ASSETS), name="dashboard-static")

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(
            ASSETS / "index.html",
            headers={"Content-Security-Policy": _POLICY, "Cache-Control": "no-store"},
        )
