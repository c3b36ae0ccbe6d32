"""One shape for every error the API answers: `{"error": "..."}`.

* FastAPI's validation errors (a 422 with a list under `detail`) become a 400
  whose text names each field by its path: `query.limit: ...`, `body.ids[3]: ...`.
* `HTTPException` keeps its status and headers; its text goes under `error`.
* Request bodies are read by `StrictRoute` with `veba.strictjson`, so NaN, an
  integer beyond 64 bits or a lone surrogate is a 400 naming where, never a
  value silently changed.
* `LastResort` is the safety net: anything else is logged with its traceback
  and answered with a 500 that shows nothing of it. The tests find none.

Every app the appliance serves (the API, the webhook and `/stats` side
listeners, the workers' gateway) installs these with `install_error_handling`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from veba import strictjson
from veba.eventlog.base import LogUnavailable

__all__ = [
    "INTERNAL_ERROR",
    "LastResort",
    "StrictRoute",
    "error_response",
    "install_error_handling",
]

log = logging.getLogger("veba.api")

INTERNAL_ERROR = "internal error in the appliance; its log has the details"


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


# The branch names pydantic puts in a location inside a JSON value (a union).
_BRANCHES = frozenset({"dict", "list", "str", "int", "float", "bool"})


def field_path(loc: Sequence[Any]) -> str:
    """A pydantic error location as a path: ("body", "ids", 3) -> body.ids[3]."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif path and part in _BRANCHES:
            continue
        else:
            path += f".{part}" if path else str(part)
    path = path or "body"
    return path if len(path) <= 160 else f"{path[:100]}...{path[-50:]}"


_PLAIN = {
    "missing": "required",
    "extra_forbidden": "not a field of this request",
    "string_type": "expected a string",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "finite_number": "expected a finite number",
    "list_type": "expected a list",
    "dict_type": "expected an object",
    "model_type": "expected a JSON object",
    "model_attributes_type": "expected a JSON object",
}
_BOUNDS = {
    "less_than_equal": ("le", "expected at most {}"),
    "greater_than_equal": ("ge", "expected at least {}"),
    "less_than": ("lt", "expected less than {}"),
    "greater_than": ("gt", "expected more than {}"),
    "string_too_long": ("max_length", "at most {} characters"),
    "string_too_short": ("min_length", "at least {} characters"),
    "too_long": ("max_length", "at most {} items"),
    "too_short": ("min_length", "at least {} items"),
}


def _says(error: Any) -> str:
    """What is wrong, in veba's words where pydantic's are vague."""
    kind, ctx = str(error.get("type", "")), error.get("ctx") or {}
    if kind in _PLAIN:
        return _PLAIN[kind]
    if kind in _BOUNDS and _BOUNDS[kind][0] in ctx:
        key, words = _BOUNDS[kind]
        return words.format(ctx[key])
    return str(error.get("msg", "invalid"))


def _validation_text(errors: Sequence[Any]) -> str:
    lines = []
    for error in errors[:5]:
        loc = tuple(error.get("loc", ()))
        kind = error.get("type", "")
        if kind == "json_invalid":  # FastAPI's own JSON reading (StrictRoute's says more)
            lines.append(f"body: not valid JSON ({error.get('ctx', {}).get('error', '')})")
            continue
        path = field_path(loc)
        message = _says(error)
        if loc == ("body",) and kind == "missing":
            message = "required: a JSON object (Content-Type: application/json)"
        elif loc == ("body",) and isinstance(error.get("input"), bytes):
            message = "expected a JSON object (send Content-Type: application/json)"
        lines.append(f"{path}: {message}")
    if len(errors) > 5:
        lines.append(f"and {len(errors) - 5} more")
    return "; ".join(lines)


async def _on_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(400, _validation_text(exc.errors()))


async def _on_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail
    if isinstance(detail, dict) and "error" in detail:
        return JSONResponse(detail, status_code=exc.status_code, headers=exc.headers)
    return error_response(exc.status_code, str(detail), exc.headers)


async def _on_log_unavailable(request: Request, exc: Exception) -> Response:
    # A NATS log electing or out of reach (veba.eventlog.LogUnavailable): ask again.
    return error_response(503, str(exc), {"Retry-After": "1"})


def install_error_handling(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(LogUnavailable, _on_log_unavailable)
    app.add_middleware(LastResort)


class LastResort:
    """The safety net under every route: an exception nothing else handled is
    logged once, with its traceback, and answered with a 500 that says nothing
    of its internals (if the answer has not started; a broken stream just ends)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if not started:
                response = error_response(500, INTERNAL_ERROR)
                await response(scope, receive, send)


class _StrictRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = strictjson.loads(await self.body(), "body")
            except strictjson.JSONRefused as exc:
                raise HTTPException(400, str(exc)) from None
        return self._json


class StrictRoute(APIRoute):
    """A route whose JSON body is read by veba.strictjson (see the module). A
    body sent without a Content-Type is read as JSON, as FastAPI did before its
    `strict_content_type`; one sent as another type is refused."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        takes_json = self.body_field is not None

        async def strict(request: Request) -> Response:
            scope = request.scope
            if takes_json and "content-type" not in request.headers:
                scope = {**scope, "headers": [*scope["headers"], _JSON_TYPE]}
            return await handler(_StrictRequest(scope, request.receive))

        return strict


_JSON_TYPE = (b"content-type", b"application/json")
