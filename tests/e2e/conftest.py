from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import ApplianceProcess


@pytest.fixture
def appliance_factory(tmp_path: Path) -> Iterator[type]:
    started: list[ApplianceProcess] = []

    class Factory:
        @staticmethod
        def start(*args: str, data_dir: Path | None = None) -> ApplianceProcess:
            proc = ApplianceProcess(data_dir or tmp_path / "data", *args).start()
            started.append(proc)
            return proc

    yield Factory
    for proc in started:
        proc.stop()
