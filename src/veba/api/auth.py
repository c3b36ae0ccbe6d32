"""Who may call what: the API token on everything but /healthz; on the webhook
also its own bearer token or basic auth, or nobody's if the operator opened it;
on the store a function's store token too. A browser signs in at /login for a
session cookie that stands for the API token (veba.api.browser).

`CredentialsFirst` checks this before anything of a request is read, so an
anonymous client gets a 401 whatever it sends (no 400 for a bad body, no 413
for a large one); the routes' own dependencies check again, and the store's
which namespace a store token opens.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException, Request, status
from fastapi.responses import JSONResponse, Response

from veba.api.browser import (
    PAGES,
    SAFE_METHODS,
    is_same_origin,
    login_redirect,
    session_valid,
)

if TYPE_CHECKING:
    from veba.appliance import Appliance
    from veba.settings import ApplianceSettings

__all__ = [
    "CredentialsFirst",
    "check_basic",
    "check_bearer",
    "require_token",
    "webhook_authorised",
    "webhook_credentials",
]

_TOKEN_HELP = (
    "missing or wrong API token: send 'Authorization: Bearer <token>'"
    " (the token is in the appliance's data directory, file 'token')"
)
_STORE_HELP = (
    "missing or unknown token: a function sends 'Authorization: Bearer"
    " $VEBA_STORE_TOKEN', an operator the appliance's API token"
)
STORE_PREFIX = "/api/v1/store/"


def _bearer(headers: Mapping[str, str]) -> str | None:
    header = headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def check_bearer(headers: Mapping[str, str], token: str) -> bool:
    """`headers`: a request's (Starlette's, or lowercase names to values)."""
    given = _bearer(headers)
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def check_basic(headers: Mapping[str, str], username: str, password: str) -> bool:
    header = headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, _, pw = base64.b64decode(value.strip()).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return False
    return hmac.compare_digest(user.encode(), username.encode()) & hmac.compare_digest(
        pw.encode(), password.encode()
    )


async def require_token(request: Request) -> None:
    """The API token, or a browser's session cookie from /login (whose requests
    that change something CredentialsFirst has checked for their origin)."""
    token: str = request.app.state.appliance.token
    if not (check_bearer(request.headers, token) or session_valid(request, token)):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, _TOKEN_HELP, headers={"WWW-Authenticate": "Bearer"}
        )


def webhook_credentials(settings: ApplianceSettings) -> list[str]:
    """What the webhook takes, in words (for its 401 and the line at start)."""
    accepted = ["the API token (Authorization: Bearer <token>)"]
    if settings.webhook_bearer_token is not None:
        accepted.append("the webhook's bearer token (--webhook-token)")
    if settings.webhook_basic_auth is not None:
        accepted.append("the webhook's basic auth")
    return accepted


def webhook_authorised(headers: Mapping[str, str], appliance: Appliance) -> bool:
    settings = appliance.settings
    if settings.webhook_open or check_bearer(headers, appliance.token):
        return True
    if settings.webhook_bearer_token is not None and check_bearer(
        headers, settings.webhook_bearer_token
    ):
        return True
    return settings.webhook_basic_auth is not None and check_basic(
        headers, *settings.webhook_basic_auth
    )


def webhook_refusal(settings: ApplianceSettings) -> JSONResponse:
    challenge = 'Basic realm="veba webhook"' if settings.webhook_basic_auth else "Bearer"
    return JSONResponse(
        {
            "error": "webhook: missing or wrong credentials; send "
            + " or ".join(webhook_credentials(settings))
        },
        status_code=401,
        headers={"WWW-Authenticate": challenge},
    )


class CredentialsFirst:
    """ASGI middleware: a request without the credentials its path needs is
    answered 401 before its body is read or its parameters looked at."""

    def __init__(self, app: Any, *, appliance: Appliance, webhook_only: bool = False) -> None:
        self.app = app
        self.appliance = appliance
        self.webhook_only = webhook_only  # a webhook listener of its own: nothing else

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(Request(scope), scope.get("path", ""))
        if refusal is None:
            await self.app(scope, receive, send)
        else:
            await refusal(scope, receive, send)

    def _refusal(self, request: Request, path: str) -> Response | None:
        appliance = self.appliance
        if path == appliance.settings.webhook_path:
            ok = webhook_authorised(request.headers, appliance)
            return None if ok else webhook_refusal(appliance.settings)
        if path == "/healthz" and not self.webhook_only:
            return None
        if check_bearer(request.headers, appliance.token):
            return None
        if not self.webhook_only:
            if session_valid(request, appliance.token):
                # Only the cookie: a change must come from the appliance's own pages.
                if request.method in SAFE_METHODS or is_same_origin(request):
                    return None
                return JSONResponse({"error": _CROSS_SITE}, status_code=403)
            if path == "/login":
                return None  # the sign-in form, open to anyone
            if (
                path in PAGES
                and request.method in SAFE_METHODS
                and "text/html" in request.headers.get("accept", "")
            ):
                return login_redirect(path)  # a browser: sign in first (a script: the 401)
        if path.startswith(STORE_PREFIX) and not self.webhook_only:
            given = _bearer(request.headers)
            if given is not None and appliance.store_tokens.namespace(given) is not None:
                return None  # which namespace it opens: require_store_access
            return _unauthorised(_STORE_HELP)
        return _unauthorised(_TOKEN_HELP)


_CROSS_SITE = (
    "refused: a request that changes something, signed in only by the session"
    " cookie, must come from the appliance's own pages (its Origin or Referer);"
    " a script sends 'Authorization: Bearer <token>' instead"
)


def _unauthorised(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
