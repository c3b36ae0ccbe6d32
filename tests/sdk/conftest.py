"""Unit tests of veba.sdk: the SDK as a handler sees it, outside and inside a worker."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

SAMPLE = Path(__file__).parent.parent / "data" / "cloudevent-vm-powered-off.json"


@pytest.fixture
def sample() -> dict:
    """VEBA's VmPoweredOffEvent, as its OpenFaaS processor posts it."""
    doc: dict = json.loads(SAMPLE.read_text())
    return doc


@pytest.fixture
def secrets_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """``secrets_dir(name=value, ...)``: a function's secrets folder, as the worker sees it."""

    def make(**secrets: str | bytes) -> Path:
        folder = tmp_path / "secrets"
        folder.mkdir(exist_ok=True)
        for name, value in secrets.items():
            data = value.encode() if isinstance(value, str) else value
            (folder / name).write_bytes(data)
        monkeypatch.setenv("VEBA_SECRETS_DIR", str(folder))
        monkeypatch.setenv("VEBA_FUNCTION_NAME", "tagger")
        return folder

    monkeypatch.delenv("VEBA_SECRETS_DIR", raising=False)
    monkeypatch.delenv("secret_mount_path", raising=False)
    return make
