"""Fixtures of the tests of `examples/`: a local HTTP server, the appliance's
store, and govmomi's vCenter simulator; each stopped when its test ends."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.examples.support import LocalServer, Reply, Request, StoreService
from tests.vcsim import VCSim
from tests.vcsim import vcsim_binary_fixture as vcsim_binary_fixture  # the fixtures vcsim_binary
from tests.vcsim import vcsim_fixture as vcsim_fixture  # and vcsim, for the tests here


@pytest.fixture
def local_server() -> Iterator[Callable[[Callable[[Request], Reply]], LocalServer]]:
    """``local_server(respond)``: started now, stopped when the test ends."""
    started: list[LocalServer] = []

    def start(respond: Callable[[Request], Reply]) -> LocalServer:
        server = LocalServer(respond).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def veba_store(tmp_path: Path) -> Iterator[StoreService]:
    service = StoreService(tmp_path / "appliance").start()
    yield service
    service.stop()


@pytest.fixture
def sim(vcsim: Callable[..., VCSim]) -> Iterator[VCSim]:
    """One govmomi simulator; the SDK's cached pyVmomi sessions to it are closed
    before it stops."""
    from veba.sdk.vcenter import close_sessions

    started = vcsim()
    yield started
    close_sessions()
