"""One web process of a Knative-style function: how it is started, watched and ended.

`launch_web_process` is the one place such a process is started (an isolation
layer can wrap it there): the venv's python runs ``webshim.py``, which runs the
Procfile's `web` command through ``/bin/sh`` in its own process group and takes
it down with the appliance. The pool (`veba.functions.webapp`) decides when.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
import socket
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from veba.functions._workerproc import LINE_LIMIT, Emit, FunctionLoadError, Isolation, worker_env

__all__ = [
    "SHIM_PATH",
    "WebProcess",
    "free_port",
    "launch_web_process",
    "listening_beyond_loopback",
    "web_env",
]

SHIM_PATH = Path(__file__).with_name("webshim.py")
_TAIL = 20
LOOPBACK = "127.0.0.1"


@dataclass(eq=False)
class WebProcess:
    """A running web command (under its shim): the process, its log pumps, its last lines."""

    proc: asyncio.subprocess.Process
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=_TAIL))
    pumps: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send_signal(self, sig: int) -> None:
        # os.kill, not proc.send_signal: see WorkerProcess.send_signal.
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    async def stop(self, grace: float) -> None:
        """SIGTERM (the shim passes it on, then SIGKILLs the app after its grace); SIGKILL
        the shim if it outlasts that too; then let the log pumps drain."""
        self.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), grace + 2.0)
        except TimeoutError:
            self.send_signal(signal.SIGKILL)
            await self.proc.wait()
        await self.close()

    async def close(self) -> None:
        pumps = [t for t in self.pumps if not t.done()]
        if pumps:  # EOF comes once every holder of the pipes is gone
            await asyncio.wait(pumps, timeout=1.0)
        for task in pumps:
            task.cancel()

    async def _pump(self, stream: asyncio.StreamReader, name: str, emit: Emit) -> None:
        while True:
            try:
                raw = await stream.readline()
            except ValueError:
                emit("system", f"a {name} line longer than {LINE_LIMIT} bytes was dropped")
                continue
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.tail.append(line)
            emit(name, line)


def web_env(
    function: str, slot: int, port: int, environment: Mapping[str, str], python: Path
) -> dict[str, str]:
    """What the web command runs with: the worker's minimal base, the function's own
    variables, the venv's bin first on PATH (so `python3` is the venv's), `$PORT`."""
    env = worker_env(function, slot, environment, None)
    venv_bin = python.parent
    env["PATH"] = f"{venv_bin}{os.pathsep}{env['PATH']}"
    env["VIRTUAL_ENV"] = str(venv_bin.parent)
    env["PORT"] = str(port)
    env["K_SERVICE"] = function  # as Knative Serving sets it
    env["FLASK_RUN_HOST"] = LOOPBACK  # `flask run` without --host
    # VEBA's Procfiles say FLASK_ENV=development, which makes Flask < 2.3 run its
    # debugger (code execution for anyone with the PIN it logs): off unless asked for.
    env.setdefault("FLASK_DEBUG", "0")
    env.setdefault("PYTHONUNBUFFERED", "1")  # print() reaches the log as it happens
    return env


async def launch_web_process(
    *,
    python: Path,
    app_dir: Path,
    command: str,
    env: dict[str, str],
    emit: Emit,
    grace: float,
    isolation: Isolation | None = None,
) -> WebProcess:
    """Start ``command`` for one instance; it is not ready until its port answers.

    With ``isolation`` it starts through isolate.py, as a stack.yml worker does: a
    pod-style hostname, its own /dev/shm, and of the data dir only its code and venv.
    """
    argv = [
        str(python),
        "-I",
        str(SHIM_PATH),
        "--parent-pid",
        str(os.getpid()),
        "--grace",
        f"{grace:g}",
        command,
    ]
    if isolation is not None:
        env = {**env, "HOSTNAME": isolation.hostname()}
        keep = [app_dir, python.parent.parent]
        argv = isolation.wrap(argv, None, env["HOSTNAME"], keep, [SHIM_PATH])
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=app_dir,
            env=env,
            # Its own session: a terminal's ^C goes to the appliance, which stops it.
            start_new_session=True,
            limit=LINE_LIMIT,
        )
    except OSError as exc:
        raise FunctionLoadError(f"{app_dir}: cannot run {python}: {exc}") from exc
    process = WebProcess(proc)
    assert proc.stdout is not None and proc.stderr is not None
    process.pumps = [
        asyncio.create_task(process._pump(proc.stdout, "stdout", emit)),
        asyncio.create_task(process._pump(proc.stderr, "stderr", emit)),
    ]
    return process


def free_port() -> int:
    """A loopback port nobody listens on now (the app binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def listening_beyond_loopback(port: int) -> list[str]:
    """Addresses other than loopback with a socket listening on ``port`` (Linux /proc)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 4 or fields[3] != "0A":  # 0A: LISTEN
                continue
            address, _, hex_port = fields[1].partition(":")
            if int(hex_port, 16) != port:
                continue
            # Each 32-bit word is in host (little-endian) order.
            raw = bytes.fromhex(address)
            ip = ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))
            mapped = getattr(ip, "ipv4_mapped", None)
            if not (ip.is_loopback or (mapped is not None and mapped.is_loopback)):
                found.append(str(ip))
    return found
