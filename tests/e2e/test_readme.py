"""The README's first hour, verbatim: its set-up and "A first function" blocks,
pasted into two fresh shells, as a new user does.

The checkout is copied into a temporary folder (what `pip install -e .` reads:
src/, pyproject.toml, README.md); the shells get a fresh user's environment
(HOME in that folder, the system PATH, no venv active) and run each block with
bash exactly as the README prints it: shell 1 the set-up (it creates the venv and
ends in the blocking `veba serve`), shell 2, once shell 1 says it is serving, the
walk-through (it ends in the blocking `veba logs echo --follow`). The test waits
for the function's line in shell 2, then ends both shells' process groups.

Two documented substitutions, both environment variables the README names, not
edits of the commands: `VEBA_LISTEN` and `VEBA_URL` put the appliance and the CLI
on a free port instead of 8080, which another appliance on this machine may hold;
and `PIP_CACHE_DIR` points at this machine's pip cache, so the fresh venv (made
by the commands themselves, about 30 s) need not download every wheel again.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import free_port, wait_for

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def sh_blocks(text: str, heading: str) -> list[str]:
    """The fenced ```sh blocks of the README section `## heading`."""
    sections = re.split(r"^## ", text, flags=re.MULTILINE)
    body = next((s for s in sections if s.startswith(heading + "\n")), None)
    assert body is not None, f"README.md has no section '## {heading}'"
    return re.findall(r"^```sh\n(.*?)^```$", body, flags=re.MULTILINE | re.DOTALL)


def test_the_readme_sections_are_what_this_test_runs() -> None:
    text = README.read_text()
    setup, first = sh_blocks(text, "Set-up on a fresh machine"), sh_blocks(text, "A first function")
    assert len(setup) == 1 and len(first) == 1
    # The set-up makes the venv and puts veba on PATH before using it bare.
    assert "python3 -m venv .venv" in setup[0] and ". .venv/bin/activate" in setup[0]
    assert setup[0].strip().splitlines()[-1].startswith("veba serve")  # it blocks: last
    assert first[0].startswith(". .venv/bin/activate\n")


def _fresh_environment(home: Path, port: int) -> dict[str, str]:
    env = {
        "PATH": SYSTEM_PATH,
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "VEBA_LISTEN": f"127.0.0.1:{port}",
        "VEBA_URL": f"http://127.0.0.1:{port}",
        "PIP_CACHE_DIR": str(Path("~/.cache/pip").expanduser()),
    }
    # This machine's pip settings (indexes, certificates), as its login shell has them.
    env.update({k: v for k, v in os.environ.items() if k.startswith("PIP_") and k not in env})
    return env


def _copy_checkout(to: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "src", to / "src", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, to / name)


class Shell:
    """`bash -c BLOCK` in its own session (a terminal of its own), output to a file."""

    def __init__(self, block: str, cwd: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                ["bash", "--noprofile", "--norc", "-c", block],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def shows(self, pattern: str) -> re.Match[str] | None:
        if self.proc.poll() is not None:
            raise AssertionError(
                f"the shell ended (exit {self.proc.returncode}) before printing {pattern!r}:\n"
                + self.output()[-4000:]
            )
        return re.search(pattern, self.output(), flags=re.MULTILINE)

    def close(self) -> None:
        """Ctrl-C as a user would, then make sure nothing of it is left."""
        for sig, wait in ((signal.SIGINT, 30), (signal.SIGTERM, 30), (signal.SIGKILL, 30)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):  # the session's stragglers
            os.killpg(self.proc.pid, signal.SIGKILL)


@pytest.fixture
def shells() -> Iterator[list[Shell]]:
    started: list[Shell] = []
    yield started
    for shell in reversed(started):  # the CLI first, then the appliance
        shell.close()


@pytest.mark.timeout(900)
def test_the_readme_first_hour_verbatim(tmp_path: Path, shells: list[Shell]) -> None:
    text = README.read_text()
    (setup,) = sh_blocks(text, "Set-up on a fresh machine")
    (first,) = sh_blocks(text, "A first function")
    checkout, home = tmp_path / "veba", tmp_path / "home"
    _copy_checkout(checkout)
    home.mkdir()
    env = _fresh_environment(home, free_port())

    appliance = Shell(setup, checkout, env, tmp_path / "shell-1.log")
    shells.append(appliance)
    # As the user does: wait until the appliance says it serves, then the second shell.
    wait_for(lambda: appliance.shows(r"^veba serving on "), 600, "shell 1: veba serving on")

    cli = Shell(first, checkout, env, tmp_path / "shell-2.log")
    shells.append(cli)
    line = wait_for(
        lambda: cli.shows(r"^\S+ +\S+ +VmPowered(On|Off)Event (?P<vm>\S+)$"),
        240,
        "the echo function's line in `veba logs echo --follow`",
    )
    assert line["vm"]  # the VM's name, from event["data"]["Vm"]["Name"]
    assert "deployed" in cli.output()
    assert "Traceback" not in appliance.output() + cli.output()
