"""`veba serve --event-log`: sqlite (the default) or a NATS location, checked
before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.support import free_port
from veba.cli import app

runner = CliRunner()


def _serve(tmp_path: Path, *args: str) -> tuple[int, str]:
    data_dir = tmp_path / "data"
    result = runner.invoke(
        app,
        ["serve", "--no-simulator", "--listen", f"127.0.0.1:{free_port()}",
         "--data-dir", str(data_dir), *args],
    )  # fmt: skip
    assert not data_dir.exists()  # refused before the first write
    return result.exit_code, " ".join(result.output.split())


def test_a_bad_nats_location_is_one_line_saying_why(tmp_path: Path) -> None:
    code, output = _serve(tmp_path, "--event-log", "nats://n1:4222/no.dots")
    assert code == 1
    assert "NAME 'no.dots' may only have letters" in output and "(or sqlite)" in output
    code, output = _serve(tmp_path, "--event-log", "postgres://db")
    assert code == 1
    assert "expected nats://HOST:4222" in output
    assert "Traceback" not in output


def test_the_environment_variable_names_the_log_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VEBA_EVENT_LOG", "nats://127.0.0.1:4999/no.dots")
    code, output = _serve(tmp_path)
    assert code == 1 and "NAME 'no.dots' may only have letters" in output
