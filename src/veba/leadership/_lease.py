"""`Lease`: what a holder of a name sees, whatever keeps the lease."""

from __future__ import annotations

import asyncio

__all__ = ["Lease"]


class Lease:
    """This node's leadership of one name, while it lasts."""

    def __init__(self, name: str, revision: int = 0) -> None:
        self.name = name
        # Of the lease in its bucket (0 for a sole node); grows with each
        # renewal: a fencing token, should a write ever need one.
        self.revision = revision
        self.lost = asyncio.Event()  # set once, when leadership ends for any reason

    @property
    def held(self) -> bool:
        return not self.lost.is_set()

    async def wait_lost(self) -> None:
        await self.lost.wait()
