"""Who may call what: the API token on everything but /healthz, and optional
basic or bearer auth on the webhook."""

from __future__ import annotations

import base64
import hmac

from fastapi import HTTPException, Request, status

__all__ = ["check_basic", "check_bearer", "require_token"]


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
            status.HTTP_401_UNAUTHORIZED,
            "missing or wrong API token: send 'Authorization: Bearer <token>'"
            " (the token is in the appliance's data directory, file 'token')",
            headers={"WWW-Authenticate": "Bearer"},
        )
