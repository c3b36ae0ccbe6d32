"""`retry`: exponential backoff with jitter that never outlives the delivery.

```python
tags = retry(lambda: client.list_tags(), attempts=4, on=(ConnectionError,))

@retry(attempts=3, on=TimeoutError)
def post(url, body): ...
```

Each wait is ``base * 2**(n-1)`` capped at ``cap``, jittered to between half and
all of it. Before waiting, `retry` checks the deadline (by default the current
delivery attempt's, `veba.sdk.deadline()`): when the wait plus another try like
the last one would not fit, it stops and raises the last error, so the function
answers in time and the appliance's own retry policy takes over.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, overload

from veba.sdk._call import deadline as _call_deadline

__all__ = ["retry"]

P = ParamSpec("P")
T = TypeVar("T")
Exceptions = type[BaseException] | tuple[type[BaseException], ...]
_MARGIN = 0.05  # seconds kept in hand for answering


@overload
def retry(
    fn: Callable[[], T],
    /,
    *,
    attempts: int = ...,
    on: Exceptions = ...,
    deadline: float | None = ...,
    base: float = ...,
    cap: float = ...,
    jitter: bool = ...,
) -> T: ...


@overload
def retry(
    fn: None = None,
    /,
    *,
    attempts: int = ...,
    on: Exceptions = ...,
    deadline: float | None = ...,
    base: float = ...,
    cap: float = ...,
    jitter: bool = ...,
) -> Callable[[Callable[P, T]], Callable[P, T]]: ...


def retry(
    fn: Callable[[], Any] | None = None,
    /,
    *,
    attempts: int = 5,
    on: Exceptions = (Exception,),
    deadline: float | None = None,
    base: float = 0.2,
    cap: float = 10.0,
    jitter: bool = True,
) -> Any:
    """Call ``fn()`` until it returns, retrying on ``on`` (``retry(fn, ...)``); or,
    without ``fn``, a decorator doing so for each call (``@retry(attempts=3)``).

    ``attempts`` counts the first call. ``deadline`` is a ``time.time()`` value;
    None means the current delivery's (`veba.sdk.deadline()`), if any.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    if base < 0 or cap < 0:
        raise ValueError("base and cap must not be negative")
    catch = on if isinstance(on, tuple) else (on,)

    def run(call: Callable[[], T]) -> T:
        return _run(call, attempts, catch, deadline, base, cap, jitter)

    if fn is not None:
        if not callable(fn):
            raise TypeError(f"retry() needs a callable, got {type(fn).__name__}")
        return run(fn)

    def decorator(func: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            return run(lambda: func(*args, **kwargs))

        return wrapper

    return decorator


def _run(
    call: Callable[[], T],
    attempts: int,
    catch: tuple[type[BaseException], ...],
    deadline: float | None,
    base: float,
    cap: float,
    jitter: bool,
) -> T:
    for n in range(1, attempts + 1):
        started = time.time()
        try:
            return call()
        except catch as exc:
            if n == attempts:
                exc.add_note(f"veba.sdk.retry: gave up after {n} attempt(s)")
                raise
            delay = min(cap, base * 2 ** (n - 1))
            if jitter:
                delay = random.uniform(delay / 2, delay)
            end = deadline if deadline is not None else _call_deadline()
            if end is not None:
                took = time.time() - started
                if time.time() + delay + took + _MARGIN > end:
                    exc.add_note(
                        f"veba.sdk.retry: gave up after {n} attempt(s): another would "
                        "not finish before the delivery's deadline"
                    )
                    raise
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
