"""`veba serve` while it runs: the server around the appliance, and the console
lines of what happens (`veba.activity`)."""

from __future__ import annotations

import contextlib
import gc
import socket
import time
from collections.abc import Callable

import uvicorn
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from veba.activity import Happening
from veba.appliance import Appliance

__all__ = ["Server", "printer"]

# Allocations between young collections once serving (Python's default is 700).
_YOUNG_COLLECTION_EVERY = 50_000


class Server(uvicorn.Server):
    """uvicorn's server, with the appliance started before it takes requests (a
    failure is one line, not an ASGI traceback), streams ended as soon as it
    stops taking them, and the appliance stopped last."""

    def __init__(
        self, appliance: Appliance, ready: list[str], config: uvicorn.Config, console: Console
    ) -> None:
        super().__init__(config)
        self.appliance = appliance
        self.ready = ready  # the lines that say it is serving, printed once it is
        self.console = console
        self._appliance_started = False

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await self.appliance.start()
            self._appliance_started = True
        except Exception as exc:
            self.console.print(
                f"[red]error:[/red] could not start: {escape(str(exc))}", highlight=False
            )
            with contextlib.suppress(Exception):
                await self.appliance.stop()
            self.should_exit = True
            return
        await super().startup(sockets)
        # What start-up made lives as long as the process: out of the collector's
        # sight, so collections under load scan only what events bring and take.
        gc.collect()
        gc.freeze()
        # A larger young generation: with the default 700, what a delivery in flight
        # holds outlived two young collections, reached the old one and died there,
        # so full collections ran every second or so under load (~50-100 ms each,
        # a third of the appliance's CPU at 20 functions: docs/design.md).
        gc.set_threshold(_YOUNG_COLLECTION_EVERY, 10, 10)
        if self.started:
            for line in self.ready:
                self.console.print(line, highlight=False, markup=False)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.appliance.activity.report("info", "stopping: no new requests; ending streams")
        self.appliance.begin_shutdown()
        await super().shutdown(sockets)
        if self._appliance_started:
            await self.appliance.stop()
        self.appliance.activity.report("info", "stopped")


def printer(console: Console) -> Callable[[Happening], None]:
    """Happenings as lines: local time, then what happened."""

    styles = {"error": "red", "warning": "yellow", "info": "", "event": "dim"}

    def show(happening: Happening) -> None:
        line = Text(time.strftime("%H:%M:%S ", time.localtime(happening.at)), style="dim")
        line.append(happening.text, style=styles.get(happening.level, ""))
        console.print(line, highlight=False)

    return show
