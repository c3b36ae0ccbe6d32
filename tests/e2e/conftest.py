from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import ApplianceProcess


@pytest.fixture(scope="session")
def _open_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="veba-e2e-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def tmp_path(request: pytest.FixtureRequest, _open_root: Path) -> Path:
    """A folder per test that functions may write their records to.

    Under a root appliance (as here and in CI) a function runs as its own
    unprivileged user (veba.functions.isolate), which cannot enter pytest's own
    folders (0700, root's); this one is open to it, under a folder it may cross.
    """
    name = re.sub(r"\W", "_", request.node.name)[:40]
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=_open_root))
    path.chmod(0o777)
    return path


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
