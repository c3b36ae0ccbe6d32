"""The API from a browser: `/docs` (Swagger UI), served with its assets from
the `fastapi-offline` package (no CDN: appliances are often offline; ReDoc,
which it ships too, is left out: its page loads its logo from cdn.redoc.ly), and a way in a browser can use: `/login` takes the API token and
sets a session cookie, `/logout` clears it.

The cookie is not the token: it is `<issued>.<HMAC-SHA256(token, issued)>`,
so it proves the token was given without carrying it, stops working when the
token changes, and expires after SESSION_TTL. It is HttpOnly, SameSite=Strict
and, under `--tls-cert`, Secure. `CredentialsFirst` accepts it on every route
but the webhook; a request that changes something (not GET/HEAD/OPTIONS) and
has only the cookie must also come from the appliance's own pages: its Origin
(or, without one, its Referer) must be the address it was sent to, else 403.
Browsers send Origin on every such request, Swagger's "Try it out" included,
so the UI works while another site's form or script cannot ride the cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import time
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import fastapi_offline
from fastapi import APIRouter, FastAPI, Form, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "SESSION_COOKIE",
    "browser_router",
    "install_docs",
    "is_same_origin",
    "login_redirect",
    "session_valid",
]

SESSION_COOKIE = "veba_session"
SESSION_TTL = 12 * 3600  # seconds a sign-in lasts
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PAGES = frozenset({"/", "/docs"})  # what an anonymous browser is sent to sign in for
STATIC = "/docs/static"
_ASSETS = Path(fastapi_offline.__file__).parent / "static"
# A local path to go back to after signing in: one leading slash (never `//host`
# or `/\host`, which browsers read as another site), no spaces or controls.
_LOCAL_PATH = r"^/([\x21-\x2e\x30-\x5b\x5d-\x7e][\x21-\x7e]*)?$"
LocalPath = Annotated[str, Field(max_length=2048, pattern=_LOCAL_PATH)]


def _signature(token: str, issued: str) -> str:
    return hmac.new(token.encode(), b"veba-session\0" + issued.encode(), hashlib.sha256).hexdigest()


def session_value(token: str, now: float | None = None) -> str:
    issued = str(int(time.time() if now is None else now))
    return f"{issued}.{_signature(token, issued)}"


def session_valid(request: Request, token: str) -> bool:
    value = request.cookies.get(SESSION_COOKIE, "")
    issued, _, signature = value.partition(".")
    if not issued.isdigit() or len(issued) > 12:
        return False
    if not hmac.compare_digest(signature.encode(), _signature(token, issued).encode()):
        return False
    return 0 <= time.time() - int(issued) < SESSION_TTL


def is_same_origin(request: Request) -> bool:
    """The request says it comes from a page of the address it was sent to."""
    claimed = request.headers.get("origin") or request.headers.get("referer")
    if not claimed or claimed == "null":
        return False
    parts = urlsplit(claimed)
    host = request.headers.get("host", "")
    return parts.scheme == request.url.scheme and parts.netloc == host and bool(host)


def login_redirect(path: str) -> RedirectResponse:
    return RedirectResponse(f"/login?next={path}", status_code=303)


class LoginForm(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=1, max_length=1024, description="the appliance's API token")
    next: LocalPath = Field("/", description="where to go once signed in")


browser_router = APIRouter(tags=["browser"])


@browser_router.get("/login", response_class=HTMLResponse)
async def login_page(next: Annotated[LocalPath, Query()] = "/") -> HTMLResponse:
    """The sign-in form (open to anyone: it holds nothing)."""
    return _form(next)


@browser_router.post("/login", response_class=HTMLResponse, status_code=303)
async def login(form: Annotated[LoginForm, Form()], request: Request) -> Response:
    """Sign in with the API token: a session cookie, then back to `next`."""
    token: str = request.app.state.appliance.token
    if not hmac.compare_digest(form.token.encode(), token.encode()):
        return _form(form.next, "Wrong token.", status=401)
    response = RedirectResponse(form.next, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session_value(token),
        max_age=SESSION_TTL,
        httponly=True,
        samesite="strict",
        secure=request.app.state.appliance.settings.tls_cert is not None,
        path="/",
    )
    return response


@browser_router.post("/logout", status_code=303)
async def logout() -> Response:
    """Sign out: the session cookie is cleared."""
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


def install_docs(app: FastAPI) -> None:
    """`/docs` and its assets; behind credentials like the rest."""
    app.mount(STATIC, StaticFiles(directory=_ASSETS), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="veba API",
            swagger_js_url=f"{STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{STATIC}/favicon.png",
            # No badge fetched from validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )
        return _with_logout(page)


def _with_logout(page: HTMLResponse) -> HTMLResponse:
    body = bytes(page.body).decode()
    button = (
        '<form method="post" action="/logout" style="position:fixed;top:8px;right:12px;'
        'z-index:10"><button type="submit">Sign out</button></form>'
    )
    return HTMLResponse(body.replace("<body>", "<body>" + button, 1))


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>veba: sign in</title>
<style>body{{font-family:sans-serif;max-width:28em;margin:4em auto}}
input{{width:100%;padding:.4em;margin:.4em 0}}p.error{{color:#b00}}</style></head>
<body><h1>veba</h1>
<p>Sign in with the API token (the file <code>token</code> in the appliance's data
directory).</p>{message}
<form method="post" action="/login">
<input type="password" name="token" autocomplete="current-password" required autofocus
 aria-label="API token" placeholder="API token">
<input type="hidden" name="next" value="{next}">
<button type="submit">Sign in</button></form></body></html>
"""


def _form(next_path: str, message: str = "", *, status: int = 200) -> HTMLResponse:
    shown = f'<p class="error">{html.escape(message)}</p>' if message else ""
    return HTMLResponse(
        _PAGE.format(message=shown, next=html.escape(next_path, quote=True)),
        status_code=status,
        headers={
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline';"
            " form-action 'self'; frame-ancestors 'none'",
            "Cache-Control": "no-store",
        },
    )
