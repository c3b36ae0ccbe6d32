"""The data directory is the appliance's alone: private whatever was there before,
no decrypted secrets left by a killed appliance, function logs that rotate, and
nothing left behind by a failed deploy."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.e2e.harness import VEBA, ApplianceProcess, write_function, write_stack
from tests.support import free_port, wait_for

# Answers with 40 numbered lines of about 100 bytes, each also in its log.
CHATTY = """
import json

def handle(req):
    start = json.loads(req or "{}").get("start", 0)
    for n in range(start, start + 40):
        print(f"line {n:05d} " + "x" * 88)
"""


def _read_by_workers(data_dir: Path, path: Path) -> bool:
    """Function code and venvs (and the SDK beside them), which workers running as
    users of their own read through their private view; the 0700 data dir keeps
    everyone else out of them (checked: the data dir itself is never excused)."""
    parts = path.relative_to(data_dir).parts
    return (len(parts) >= 3 and parts[0] == "functions" and parts[2].startswith("code-")) or (
        len(parts) >= 2 and parts[0] == "venvs"
    )


def not_private(data_dir: Path) -> list[str]:
    """Every file or folder under ``data_dir`` (itself included) others may use."""
    found = []
    for path in [data_dir, *data_dir.rglob("*")]:
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            continue  # a venv's python: a link to the system's
        if path != data_dir and _read_by_workers(data_dir, path):
            if st.st_mode & 0o022:  # readable by workers, never writable by them
                found.append(f"{path} {stat.S_IMODE(st.st_mode):o} (writable)")
            continue
        if st.st_mode & 0o077:
            found.append(f"{path} {stat.S_IMODE(st.st_mode):o}")
    return found


def test_everything_in_the_data_dir_is_private_and_logs_rotate(
    appliance_factory: type, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    app: ApplianceProcess = appliance_factory.start("--no-simulator", data_dir=data)
    write_function(tmp_path / "fn" / "chatty", CHATTY)
    stack = write_stack(
        tmp_path / "fn" / "stack.yml", {"chatty": {"lang": "python3", "handler": "./chatty"}}
    )
    app.cli("up", "-f", str(stack))
    app.cli("invoke", "chatty", "--data", '{"start": 0}')
    assert not_private(data) == []
    app.stop()

    # As an older veba, a copy or a restore leaves it: readable by everyone.
    for path in [data, *data.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644)
    assert not_private(data) != []
    # And the secrets folder of an appliance that was killed.
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    orphan = Path("/dev/shm") / f"veba-secrets.{int(gone.stdout)}.chatty.x1y2z3"
    orphan.mkdir(mode=0o700)
    (orphan / "password").write_text("left-behind-s3cret")

    app = appliance_factory.start(
        "--no-simulator", "--function-log-size", "2K", "--function-log-files", "2", data_dir=data
    )
    assert not orphan.exists()
    for start in range(40, 400, 40):  # ~36 KB of log lines: many rotations
        app.cli("invoke", "chatty", "--data", f'{{"start": {start}}}')
    logs = data / "logs"

    def rotated() -> list[str]:
        names = sorted(p.name for p in logs.iterdir())
        return names if names == ["chatty.log", "chatty.log.1", "chatty.log.2"] else []

    wait_for(rotated, 30, "the function's log to rotate")
    assert all(p.stat().st_size <= 2048 for p in logs.iterdir())
    # The database's WAL and shared memory files exist while it runs: private too.
    assert (data / "events.db-wal").exists() and (data / "events.db-shm").exists()
    assert not_private(data) == []

    # `veba logs` still has the lines of the files rotated away.
    def logged() -> str:
        out = app.cli("logs", "chatty", "--tail", "400").stdout
        return out if "line 00399" in out else ""

    shown = wait_for(logged, 30, "the last line in veba logs")
    numbers = [int(line.split("line ")[1][:5]) for line in shown.splitlines() if "line " in line]
    assert numbers == list(range(numbers[0], 400)) and numbers[0] <= 40
    on_disk = "".join((logs / name).read_text() for name in rotated())
    assert "line 00040" not in on_disk  # gone from the files, still shown above


def test_a_failed_deploy_leaves_nothing_behind(appliance_factory: type, tmp_path: Path) -> None:
    app: ApplianceProcess = appliance_factory.start("--no-simulator")
    functions = app.data_dir / "functions"
    fn = tmp_path / "fn"
    write_function(fn / "tagger", "raise RuntimeError('cannot import')\n")
    stack = write_stack(fn / "stack.yml", {"tagger": {"lang": "python3", "handler": "./tagger"}})
    failed = app.cli("up", "-f", str(stack), check=False)
    assert failed.returncode != 0 and "cannot import" in failed.stderr
    assert not (functions / "tagger").exists()

    write_function(fn / "tagger", "def handle(req):\n    return 'v1'\n")
    app.cli("up", "-f", str(stack))
    running = sorted(p.name for p in (functions / "tagger").iterdir())
    write_function(fn / "tagger", "raise RuntimeError('v2 is broken')\n")
    assert app.cli("up", "-f", str(stack), check=False).returncode != 0
    # Only the running version's code stays, and it still answers.
    assert sorted(p.name for p in (functions / "tagger").iterdir()) == running
    assert app.cli("invoke", "tagger", "--data", "x").stdout.strip() == "v1"


def test_a_shared_folder_is_refused_as_data_dir(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # as /tmp is
    result = subprocess.run(
        [VEBA, "serve", "--no-simulator", "--listen", f"127.0.0.1:{free_port()}",
         "--data-dir", str(shared)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "a shared folder" in result.stderr and "Traceback" not in result.stderr
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
