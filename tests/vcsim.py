"""govmomi's vCenter simulator as a test fixture: built once, one process per test.

`scripts/build-vcsim` builds it from Debian's packages (installing them if
needed); `VCSim` starts it on a free port and stops it. Tests drive it with
pyVmomi, as a user's automation would.

    from tests.vcsim import vcsim_binary_fixture, vcsim_fixture  # noqa: F401

    def test_something(vcsim):
        sim = vcsim()              # started; stopped when the test ends
        sim.power_ops(5)           # five power operations through pyVmomi
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "scripts" / "build-vcsim"
USER, PASSWORD = "user", "pass"


def build() -> Path:
    result = subprocess.run([str(BUILD)], capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"scripts/build-vcsim failed:\n{result.stdout}\n{result.stderr}")
    return Path(result.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class VCSim:
    """One simulator process. `url` is the SDK URL (`http://127.0.0.1:PORT/sdk`)."""

    def __init__(
        self, binary: Path, workdir: Path, *, port: int | None = None, args: tuple[str, ...] = ()
    ) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}/sdk"
        self._clients: list[Any] = []

    def start(self, timeout: float = 30.0) -> VCSim:
        self.workdir.mkdir(parents=True, exist_ok=True)
        url_file = self.workdir / f"vcsim-{self.port}.url"
        url_file.unlink(missing_ok=True)
        log = (self.workdir / f"vcsim-{self.port}.log").open("ab")
        self.proc = subprocess.Popen(
            [str(self.binary), "-listen", f"127.0.0.1:{self.port}", "-url-file", str(url_file),
             *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not url_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"vcsim exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"vcsim did not start within {timeout} s")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        for si in self._clients:
            with contextlib.suppress(Exception):
                from pyVim.connect import Disconnect

                Disconnect(si)
        self._clients.clear()
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    # -- driving it with pyVmomi -------------------------------------------------------

    def connect(self) -> Any:
        from pyVim.connect import SmartConnect

        si = SmartConnect(
            host="127.0.0.1",
            port=self.port,
            user=USER,
            pwd=PASSWORD,
            protocol="http",
            disableSslCertValidation=True,
        )
        self._clients.append(si)
        return si

    def vms(self, si: Any) -> list[Any]:
        from pyVmomi import vim

        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(
            content.rootFolder, [vim.VirtualMachine], True
        )
        try:
            return sorted(view.view, key=lambda vm: vm._moId)
        finally:
            view.Destroy()

    def power_ops(self, count: int, si: Any = None) -> list[tuple[str, str]]:
        """`count` power operations, alternating off and on across the VMs, each
        to completion. Returns (event class expected, VM moref) per operation."""
        si = si or self.connect()
        vms = self.vms(si)
        done: list[tuple[str, str]] = []
        for i in range(count):
            vm = vms[i % len(vms)]
            if vm.runtime.powerState == "poweredOn":
                task, expected = vm.PowerOffVM_Task(), "VmPoweredOffEvent"
            else:
                task, expected = vm.PowerOnVM_Task(), "VmPoweredOnEvent"
            wait_task(task)
            done.append((expected, vm._moId))
        return done

    def sessions(self, si: Any) -> list[Any]:
        return list(si.RetrieveContent().sessionManager.sessionList)

    def terminate_sessions(self, si: Any, user_agent_prefix: str) -> list[str]:
        """End every session (but ours) whose user agent starts with the prefix."""
        manager = si.RetrieveContent().sessionManager
        own = manager.currentSession.key
        keys = [
            s.key
            for s in manager.sessionList
            if s.key != own and (s.userAgent or "").startswith(user_agent_prefix)
        ]
        if keys:
            manager.TerminateSession(keys)
        return keys


def wait_task(task: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while task.info.state not in ("success", "error"):
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task} did not finish")
        time.sleep(0.01)
    if task.info.state == "error":
        raise AssertionError(f"task failed: {task.info.error}")


# Test modules import these (under their own names) to use the fixtures
# `vcsim_binary` and `vcsim`.
@pytest.fixture(scope="session", name="vcsim_binary")
def vcsim_binary_fixture() -> Path:
    return build()


@pytest.fixture(name="vcsim")
def vcsim_fixture(vcsim_binary: Path, tmp_path: Path) -> Iterator[Callable[..., VCSim]]:
    """Start simulators with `vcsim(*args, port=None)`; each is stopped after the test."""
    started: list[VCSim] = []

    def start(*args: str, port: int | None = None) -> VCSim:
        sim = VCSim(vcsim_binary, tmp_path / "vcsim", port=port, args=args).start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()
