"""Which node reads a vCenter: at most one at a time, by a lease.

Two readers of one vCenter would log every event twice (the log's dedupe would
hide it, at twice the cost) and fight over its checkpoint, so in a cluster each
provider runs only on the node that holds its lease:

    async with leadership.hold("vcenter:vc1:443") as lease:   # waits to lead
        ...                                   # leads until lease.lost is set

or `lead(leadership, name, work)`, which runs `work` while this node leads and
contends again after a loss. Two implementations of the one `Leadership`
protocol:

- `SoleLeadership`: a single node (the SQLite log) leads every name, at once.
- `KVLeadership` (`_kv.py`): a lease per name in a JetStream key-value bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol, TypeVar

from veba.leadership._kv import DEFAULT_TTL, KVLeadership, lease_bucket, lease_key
from veba.leadership._lease import Lease

__all__ = [
    "DEFAULT_TTL",
    "KVLeadership",
    "Leadership",
    "Lease",
    "SoleLeadership",
    "lead",
    "lease_bucket",
    "lease_key",
]

log = logging.getLogger("veba.leadership")

T = TypeVar("T")


class Leadership(Protocol):
    """Leases on names (a provider's name), one holder per name."""

    def hold(self, name: str) -> AbstractAsyncContextManager[Lease]:
        """Wait until this node leads `name`; lead until `lease.lost` is set or
        the block ends (which releases the lease)."""
        ...


class SoleLeadership:
    """The single node (SQLite log): it leads every name, at once, for ever."""

    @asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[Lease]:
        yield Lease(name)


async def lead(leadership: Leadership, name: str, work: Callable[[], Awaitable[T]]) -> T:
    """Run `work()` whenever this node leads `name`: cancelled when leadership is
    lost, started again once it is won again. Returns what `work` returns (and
    raises what it raises) while leading, releasing the lease."""
    while True:
        async with leadership.hold(name) as lease:
            task: asyncio.Future[T] = asyncio.ensure_future(work())
            lost = asyncio.ensure_future(lease.wait_lost())
            either: set[asyncio.Future[Any]] = {task, lost}
            try:
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            finally:  # cancelled from outside too: neither outlives this call
                lost.cancel()
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if not task.cancelled():
                return task.result()
        log.warning("leadership of %s lost; contending again", name)
