"""What veba keeps on disk is its own: a private data directory, secrets folders
no crash leaves behind, and function logs that rotate."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from veba.functionlogs import LogHub
from veba.functions._workerproc import sweep_secrets, write_secrets
from veba.private import DataDirError, make_private
from veba.scrub import Scrubber


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_everything_under_the_data_dir_becomes_owner_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "venvs" / "v1" / "bin").mkdir(parents=True)
    (data / "logs").mkdir()
    (data / "events.db").write_text("")
    (data / "logs" / "fn.log").write_text("")
    script = data / "venvs" / "v1" / "bin" / "tool"
    script.write_text("#!/bin/sh\n")
    outside = tmp_path / "system-python"
    outside.write_text("")
    (data / "venvs" / "v1" / "bin" / "python").symlink_to(outside)
    for path in [data, *data.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() or path == script else 0o644)
    outside.chmod(0o755)

    make_private(data)

    assert mode(data) == 0o700 and mode(data / "venvs") == 0o700
    assert mode(data / "logs") == 0o700
    assert mode(data / "events.db") == 0o600 and mode(data / "logs" / "fn.log") == 0o600
    # Venvs (and functions' code) are read by workers that may run as users of
    # their own, inside the 0700 data dir: readable, never writable, by them.
    assert mode(data / "venvs" / "v1" / "bin") == 0o755 and mode(script) == 0o755
    assert mode(outside) == 0o755  # a link's target outside is not veba's to change
    (data / "venvs" / "v1" / "bin").chmod(0o777)
    make_private(data)
    assert mode(data / "venvs" / "v1" / "bin") == 0o755  # others' write bit taken away


@pytest.mark.parametrize("shared", ["sticky", "home"])
def test_a_shared_folder_is_refused_as_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared: str
) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / "someone-else.txt").write_text("")
    if shared == "sticky":
        folder.chmod(0o1777)
    else:
        monkeypatch.setenv("HOME", str(folder))
    with pytest.raises(DataDirError, match="a shared folder"):
        make_private(folder)
    assert mode(folder / "someone-else.txt") == 0o644 & ~_umask()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_secrets_folders_of_dead_processes_are_swept(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(dead.stdout)
    orphan = tmp_path / f"veba-secrets.{dead_pid}.fn.abc123"
    orphan.mkdir()
    (orphan / "password").write_text("hunter2-secret")
    other = tmp_path / "veba-secrets-legacy-name"  # not ours to judge
    other.mkdir()
    live = write_secrets("fn", {"password": b"in-use"})  # this process's: in use
    try:
        assert live.name.startswith(f"veba-secrets.{os.getpid()}.fn.")
        assert sweep_secrets(tmp_path) == [orphan]
        assert not orphan.exists() and other.exists()
        # The shared base may hold other tests' leftovers (a SIGKILLed `veba serve`):
        # what matters is that this live process's folder is not among them.
        assert live not in sweep_secrets(live.parent) and live.exists()
    finally:
        for path in (live, other):
            subprocess.run(["rm", "-rf", str(path)], check=True)


def test_function_logs_rotate_by_size_and_stay_private(tmp_path: Path) -> None:
    hub = LogHub(tmp_path / "logs", max_bytes=1000, keep=2)
    hub.set_scrubber("fn", Scrubber([b"s3cret-value"]))
    lines = [f"line {n:04d} s3cret-value {'x' * 40}" for n in range(100)]
    for line in lines:
        hub.write("fn", "stdout", line)
    hub.close()

    files = sorted((tmp_path / "logs").iterdir())
    assert [f.name for f in files] == ["fn.log", "fn.log.1", "fn.log.2"]  # keep=2 rotated
    assert mode(tmp_path / "logs") == 0o700 and all(mode(f) == 0o600 for f in files)
    assert all(f.stat().st_size <= 1000 for f in files)
    written = "".join(f.read_text() for f in reversed(files)).splitlines()
    texts = [row.split(" ", 2)[2] for row in written]
    expected = [line.replace("s3cret-value", "[REDACTED]") for line in lines]
    assert texts == expected[-len(texts) :]  # in order across the files, the newest last
    assert sum(f.stat().st_size for f in files) > 2 * 1000  # the rotated files are full
    # `veba logs` reads across the rotations: the last lines, whichever file they are in.
    tail = [line.text for line in hub.tail("fn", 60)]
    assert tail == expected[-60:]


def test_a_restarted_hub_appends_and_rotates_what_is_there(tmp_path: Path) -> None:
    first = LogHub(tmp_path, max_bytes=200, keep=1)
    first.write("fn", "stdout", "a" * 150)
    first.close()
    second = LogHub(tmp_path, max_bytes=200, keep=1)
    second.write("fn", "stdout", "b" * 150)  # would pass 200 bytes: rotates first
    second.close()
    assert "a" * 150 in (tmp_path / "fn.log.1").read_text()
    assert "b" * 150 in (tmp_path / "fn.log").read_text()
