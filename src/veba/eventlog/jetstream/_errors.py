"""NATS trouble as the log's own error: what a caller can act on.

A NATS that cannot answer now (no quorum while a cluster elects, the
connection down, a request timed out) raises `LogUnavailable` from every
method of the `EventLog` protocol, an `OSError` like `LogFull`: the webhook
answers 503 so the sender tries again, a dispatcher backs off and leases
again. Anything else from NATS (a request it refuses) is a bug, and stays as
it is: JetStream answers some refusals with a 500 too ("replicas > 1 not
supported in non-clustered mode"), so a 500 is no sign of a passing trouble.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats.errors
from nats.js.errors import APIError, ServiceUnavailableError

from veba.eventlog.base import EventLog, LogUnavailable

__all__ = ["raises_log_errors"]

C = TypeVar("C", bound=type)

_METHODS = [
    name
    for name, member in vars(EventLog).items()
    if not name.startswith("_") and inspect.iscoroutinefunction(member)
]


def _unavailable(exc: BaseException) -> bool:
    if isinstance(exc, APIError):
        return isinstance(exc, ServiceUnavailableError)
    return isinstance(exc, (nats.errors.Error, TimeoutError, ConnectionError))


def raises_log_errors(cls: C) -> C:
    """Wrap each protocol method of `cls` so NATS being away is `LogUnavailable`."""
    for name in _METHODS:
        setattr(cls, name, _wrapped(getattr(cls, name)))
    return cls


def _wrapped(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return await method(*args, **kwargs)
        except LogUnavailable:
            raise
        except Exception as exc:
            if _unavailable(exc):
                why = str(exc) or type(exc).__name__
                raise LogUnavailable(f"the NATS JetStream log cannot answer now: {why}") from exc
            raise

    return call
