from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from veba.functions import BuildError, ensure_venv
from veba.functions.build import venv_key


def handler_dir(root: Path, name: str, requirements: str | None = None) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "handler.py").write_text("def handle(req):\n    return req\n")
    if requirements is not None:
        (folder / "requirements.txt").write_text(requirements)
    return folder


def run(python: Path, code: str) -> str:
    done = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()


def test_cached_venv_is_reused_without_rebuilding(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first: list[str] = []
    python = ensure_venv(handler_dir(tmp_path, "a"), cache, first.append)
    assert python == cache / python.parent.parent.name / "bin" / "python"
    assert first, "a build reports progress"
    again: list[str] = []
    assert ensure_venv(tmp_path / "a", cache, again.append) == python
    assert again == []  # nothing built
    # The venv is isolated from the appliance's packages (PyYAML is installed here).
    out = run(python, "import importlib.util as u, sys; print(u.find_spec('yaml'), sys.prefix)")
    assert out == f"None {python.parent.parent}"


def test_key_ignores_comments_blank_lines_and_order(tmp_path: Path) -> None:
    a = handler_dir(tmp_path, "a", "six==1.17.0\nrequests>=2  # http\n")
    b = handler_dir(tmp_path, "b", "# deps\n\nrequests>=2\n   six==1.17.0\n")
    c = handler_dir(tmp_path, "c", "six==1.16.0\n")
    assert venv_key(a) == venv_key(b) != venv_key(c)
    assert venv_key(handler_dir(tmp_path, "d")) == venv_key(handler_dir(tmp_path, "e", "# none\n"))


def test_concurrent_builders_build_once(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    folder = handler_dir(tmp_path, "a")
    progress: list[str] = []
    results: list[Path] = []
    barrier = threading.Barrier(4)

    def build() -> None:
        barrier.wait()
        results.append(ensure_venv(folder, cache, progress.append))

    threads = [threading.Thread(target=build) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 4 and len(set(results)) == 1
    assert len([line for line in progress if line.startswith("creating venv")]) == 1


def test_leftovers_of_a_crashed_build_are_removed(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    folder = handler_dir(tmp_path, "a")
    key = venv_key(folder)
    half = cache / f".build-{key}-99999"
    (half / "bin").mkdir(parents=True)
    python = ensure_venv(folder, cache, lambda line: None)
    assert python.exists() and not half.exists()


def test_failing_requirement_names_the_file_and_leaves_nothing(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    folder = handler_dir(tmp_path, "echo", "no-such-package-veba-xyz==1.0\n")
    lines: list[str] = []
    with pytest.raises(BuildError) as info:
        ensure_venv(folder, cache, lines.append)
    message = str(info.value)
    assert message.startswith(
        "echo/requirements.txt: pip could not install 'no-such-package-veba-xyz==1.0': "
    )
    assert "No matching distribution found" in message
    assert any("no-such-package-veba-xyz" in line for line in lines)  # streamed as it ran
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == []


def test_requirements_are_installed_into_the_function_venv(tmp_path: Path) -> None:
    folder = handler_dir(tmp_path, "a", "six\n")
    lines: list[str] = []
    python = ensure_venv(folder, tmp_path / "cache", lines.append)
    assert any("six" in line for line in lines)
    out = run(python, "import six, sys; print(six.__file__.startswith(sys.prefix))")
    assert out == "True"
    # Not the appliance's interpreter environment.
    assert python.parent.parent != Path(sys.prefix)


def test_relative_cache_dir_gives_an_absolute_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    python = ensure_venv(handler_dir(tmp_path, "a"), Path("cache"), lambda line: None)
    assert python.is_absolute() and python.parent.parent.parent == tmp_path / "cache"
    assert run(python, "import sys; print(sys.prefix != sys.base_prefix)") == "True"
