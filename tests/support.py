"""What many tests need: free ports, waiting on a condition, and the whole
appliance app served in a thread of the test process."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn

from veba.api import create_app
from veba.appliance import Appliance
from veba.providers.base import Provider
from veba.settings import ApplianceSettings

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], T], timeout: float = 60.0, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


class ServedAppliance:
    """The appliance app under uvicorn on a free port, in a thread of this process,
    so a test can reach into it (issue store tokens, as a pool start would)."""

    def __init__(
        self, data_dir: Path, providers: Sequence[Provider] = (), **settings_fields: Any
    ) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.data_dir = data_dir
        fields: dict[str, Any] = {"simulator": False, **settings_fields}
        settings = ApplianceSettings(data_dir=data_dir, listen=f"127.0.0.1:{port}", **fields)
        self.appliance = Appliance(settings, providers=list(providers))
        config = uvicorn.Config(
            create_app(self.appliance), host="127.0.0.1", port=port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> Any:
        self.thread.start()
        wait_for(lambda: self.server.started or not self.thread.is_alive(), 30, "the appliance API")
        if not self.server.started:
            raise AssertionError("the appliance API did not start")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    @property
    def token(self) -> str:
        return self.appliance.token

    def issue(self, function: str) -> str:
        return self.appliance.store_tokens.issue(function)

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"})
