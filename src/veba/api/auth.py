"""Who may call what: the API token on everything but /healthz; on the webhook
also its own bearer token or basic auth, or nobody's if the operator opened it;
on the store a function's store token too.

`CredentialsFirst` checks this before anything of a request is read, so an
anonymous client gets a 401 whatever it sends (no 400 for a bad body, no 413
for a large one); the routes' own dependencies check again, and the store's
which namespace a store token opens.
"""

from __future__ import annotations

import base64
import hmac
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException, Request, status
from fastapi.responses import JSONResponse

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


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def check_bearer(request: Request, token: str) -> bool:
    given = _bearer(request)
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def check_basic(request: Request, username: str, password: str) -> bool:
    header = request.headers.get("authorization", "")
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
    token: str = request.app.state.appliance.token
    if not check_bearer(request, token):
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


def webhook_authorised(request: Request, appliance: Appliance) -> bool:
    settings = appliance.settings
    if settings.webhook_open or check_bearer(request, appliance.token):
        return True
    if settings.webhook_bearer_token is not None and check_bearer(
        request, settings.webhook_bearer_token
    ):
        return True
    return settings.webhook_basic_auth is not None and check_basic(
        request, *settings.webhook_basic_auth
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

    def _refusal(self, request: Request, path: str) -> JSONResponse | None:
        appliance = self.appliance
        if path == appliance.settings.webhook_path:
            ok = webhook_authorised(request, appliance)
            return None if ok else webhook_refusal(appliance.settings)
        if path == "/healthz" and not self.webhook_only:
            return None
        if check_bearer(request, appliance.token):
            return None
        if path.startswith(STORE_PREFIX) and not self.webhook_only:
            given = _bearer(request)
            if given is not None and appliance.store_tokens.namespace(given) is not None:
                return None  # which namespace it opens: require_store_access
            return _unauthorised(_STORE_HELP)
        return _unauthorised(_TOKEN_HELP)


def _unauthorised(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
