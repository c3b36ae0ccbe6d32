"""The SDK as a function author's type checker sees it.

Not a test pytest runs: `mypy` (strict, see pyproject.toml) checks this file in
CI. It uses the public API the way handlers do; `assert_type` fails the check if a
name turns into `Any` (a module `__getattr__` would do that) or a decorator stops
keeping the handler's signature, and each `type: ignore[...]` below is an error
the checker must keep reporting (`warn_unused_ignores` fails the run if not).
"""

from __future__ import annotations

from typing import Any, assert_type

from veba.sdk import (
    Event,
    Logger,
    MissingField,
    MoRef,
    SecretNotFound,
    attempt,
    deadline,
    get_logger,
    idempotent,
    latest_only,
    remaining,
    retry,
    secret,
    secret_json,
    secret_toml,
    store,
)
from veba.sdk.state import Entry, StoreClient, StoreUnavailable

log = get_logger()
assert_type(log, Logger)


# -- a python3 handler (VEBA's OpenFaaS examples): the CloudEvent as JSON text ---------


@idempotent(key="data.Key", expires_after=3600)
def open_ticket(req: str) -> dict[str, object]:
    event = Event(req)
    assert_type(event.subject, str | None)
    assert_type(event.key, int | None)
    vm = event.vm
    assert_type(vm, MoRef | None)
    name: str | None = vm.name if vm else None
    try:
        owner = event.require("data.Vm.Name")
    except MissingField as missing:
        log.warning("no VM", error=str(missing))
        raise
    return {"vm": name, "owner": owner}


result = open_ticket('{"specversion": "1.0"}')
assert_type(result, dict[str, object])
open_ticket(42)  # type: ignore[arg-type]  # the decorated handler keeps its parameters


@idempotent
def bare(req: str) -> str:
    return req


assert_type(bare("x"), str)


# -- a python3-http handler, dropping events older than one seen for the same VM ------


class HttpEvent:  # what the python3-http template passes (body, headers, ...)
    body: bytes
    headers: dict[str, str]


@latest_only(key="data.Vm.Vm.Value", order_by="data.Key")
def apply_state(event: HttpEvent, context: object) -> dict[str, Any]:
    parsed = Event(event)
    token = secret("api-token")
    assert_type(token, str)
    assert_type(secret_toml("vcconfig"), dict[str, Any])
    secret_json("settings")
    assert_type(deadline(), float | None)
    assert_type(remaining(), float | None)
    assert_type(attempt(), int)
    return {"statusCode": 200, "body": {"vm": parsed.get("data.Vm.Name")}}


apply_state(HttpEvent(), None)
apply_state(HttpEvent())  # type: ignore[call-arg]  # two parameters, as declared


# -- retry: around one call, or as a decorator that keeps the signature ----------------


def post(url: str, body: bytes) -> int:
    return len(body)


status = retry(lambda: post("https://example.invalid", b"{}"), attempts=4)
assert_type(status, int)


@retry(attempts=3, on=(OSError, TimeoutError))
def fetch(url: str, *, timeout: float = 5.0) -> bytes:
    return url.encode()


assert_type(fetch("https://example.invalid", timeout=1.0), bytes)
fetch("https://example.invalid", timeout="soon")  # type: ignore[arg-type]


# -- the store and the errors a handler may catch --------------------------------------


def remember(key: str) -> int:
    try:
        client = store()
    except StoreUnavailable:
        return 0
    assert_type(client, StoreClient)
    entry = client.put(key, {"seen": True}, ttl=60)
    assert_type(entry, Entry)
    got = client.get(key)
    assert_type(got, Entry | None)
    return entry.revision


def missing_secret() -> str | None:
    try:
        return secret("absent")
    except SecretNotFound:
        return None
