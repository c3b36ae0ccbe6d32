"""Real venvs and real worker processes; every pool a test starts is stopped after it."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from veba.functions import FunctionPool, ensure_venv


async def wait_until(condition: Callable[[], Any], timeout: float = 15.0) -> None:
    """Poll ``condition`` until it is true; fail after a generous deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def process_gone(pid: int) -> bool:
    """True once ``pid`` is no process, or only a zombie (its parent has not reaped it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


class Logs:
    """A log_sink that keeps every (function, stream, line)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, str]] = []

    def __call__(self, function: str, stream: str, line: str) -> None:
        self.lines.append((function, stream, line))

    def of(self, stream: str) -> list[str]:
        return [line for _, s, line in self.lines if s == stream]


@pytest.fixture(scope="session")
def venv_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("venvs")


@pytest.fixture(scope="session")
def python(venv_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The venv every function without requirements shares."""
    folder = tmp_path_factory.mktemp("plain")
    (folder / "handler.py").write_text("def handle(req):\n    return req\n")
    return ensure_venv(folder, venv_cache, lambda line: None)


@pytest.fixture
def make_handler(tmp_path: Path) -> Callable[..., Path]:
    """Write a handler folder: ``make_handler("code", name="fn", **{"helpers.py": "..."})``."""

    def make(source: str, name: str = "fn", **files: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "handler.py").write_text(textwrap.dedent(source))
        for filename, text in files.items():
            (folder / filename).write_text(textwrap.dedent(text))
        return folder

    return make


@pytest.fixture
def logs() -> Logs:
    return Logs()


PoolFactory = Callable[..., Any]


@pytest.fixture
async def pool(
    python: Path, make_handler: Callable[..., Path], logs: Logs
) -> AsyncIterator[PoolFactory]:
    """``await pool(source, lang="python3", **options)``: a started pool, stopped at teardown."""
    pools: list[FunctionPool] = []
    counter = iter(range(1000))

    async def start(source: str, lang: str = "python3", **options: Any) -> FunctionPool:
        name = options.pop("name", f"fn{next(counter)}")
        files = options.pop("files", {})
        folder = make_handler(source, name=name, **files)
        p = FunctionPool(
            name, python=python, handler_dir=folder, lang=lang, log_sink=logs, **options
        )
        pools.append(p)
        await p.start()
        return p

    yield start
    pids = [pid for p in pools for pid in p.stats["pids"]]
    for p in pools:
        await p.stop()
    for pid in pids:
        assert process_gone(pid), f"worker {pid} outlived its pool"
