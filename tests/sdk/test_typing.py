"""The SDK is typed for function authors: a checker that imports veba as an
installed package (as a function's own CI would) sees its real types."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

import veba.sdk

HANDLER = Path(__file__).parents[1] / "typing" / "sdk_handler.py"


def test_mypy_strict_on_a_handler_using_the_public_api(tmp_path: Path) -> None:
    # Run from elsewhere, so neither the repo's mypy settings nor src/ are used:
    # veba is found installed, and is read as typed only if it says so (py.typed).
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--warn-unused-ignores",
            "--cache-dir",
            str(tmp_path / "cache"),
            str(HANDLER),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues found" in result.stdout


def test_the_wheel_says_it_is_typed(tmp_path: Path) -> None:
    root = Path(__file__).parents[2]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(tmp_path),
            str(root),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("*.whl")
    assert "veba/py.typed" in zipfile.ZipFile(wheel).namelist()


def test_every_public_name_is_really_there() -> None:
    assert resources.files("veba").joinpath("py.typed").is_file()
    # No module __getattr__ making up names (and hiding them from type checkers).
    assert not hasattr(veba.sdk, "__getattr__")
    assert [n for n in veba.sdk.__all__ if n not in vars(veba.sdk)] == []
