"""The appliance's retention loop: it outlives a failing pass, and on a shared
log (JetStream) only the holder of the retention lease prunes."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.jetstream_buckets import delete_everything_named
from tests.support import ServedAppliance, wait_for
from veba.appliance import Appliance
from veba.eventlog import SQLiteLog
from veba.eventlog.jetstream import JetStreamLog
from veba.natsurl import parse_nats_url


class Passes:
    """Every prune call, by log; the first `failing` of them raise."""

    def __init__(self, failing: int = 0) -> None:
        self.by_log: dict[int, int] = {}
        self.failing = failing
        self._lock = threading.Lock()

    def wrap(self, real: Any) -> Any:
        async def prune(log: Any, received_before: float) -> int:
            with self._lock:
                self.by_log[id(log)] = self.by_log.get(id(log), 0) + 1
                fail = sum(self.by_log.values()) <= self.failing
            if fail:
                raise RuntimeError("a bug in this pass")
            return int(await real(log, received_before))

        return prune

    def total(self) -> int:
        with self._lock:
            return sum(self.by_log.values())


@pytest.fixture
def quick_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Appliance, "retention_every", 0.1)


def test_a_pass_that_fails_unexpectedly_does_not_end_retention(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quick_passes: None
) -> None:
    passes = Passes(failing=1)
    monkeypatch.setattr(SQLiteLog, "prune", passes.wrap(SQLiteLog.prune))
    served = ServedAppliance(tmp_path / "data", retention=3600.0).start()
    try:
        wait_for(lambda: passes.total() >= 3, 30, "retention passes after the failing one")
    finally:
        served.stop()


@pytest.fixture
def nats_name() -> Iterator[str]:
    name = f"t{uuid.uuid4().hex[:12]}"
    yield name
    import asyncio

    asyncio.run(delete_everything_named(name))


def test_on_a_shared_log_one_node_prunes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quick_passes: None, nats_name: str
) -> None:
    passes = Passes()
    monkeypatch.setattr(JetStreamLog, "prune", passes.wrap(JetStreamLog.prune))
    location = parse_nats_url(f"nats://127.0.0.1:4222/{nats_name}")
    nodes = [
        ServedAppliance(tmp_path / name, retention=3600.0, event_log=location)
        for name in ("a", "b")
    ]
    for node in nodes:
        node.start()
    try:
        wait_for(lambda: passes.total() >= 10, 60, "ten retention passes")
        assert len(passes.by_log) == 1, passes.by_log  # one node's log, the lease holder's
    finally:
        for node in nodes:
            node.stop()
