"""One worker process of a function pool: how it is started, spoken to and ended.

The pool (`veba.functions.supervisor.FunctionPool`) decides which calls a worker
runs, when it has run too long and when it is replaced. This module holds what
concerns the process itself: the command, environment, secrets folder and SDK
copy it starts with, the frames exchanged over its socketpair, its stdout and
stderr lines, the signals it is sent, and how its exit reads in an error.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import orjson

__all__ = [
    "ISOLATE_PATH",
    "LINE_LIMIT",
    "WORKER_PATH",
    "Emit",
    "FunctionLoadError",
    "Isolation",
    "WorkerProcess",
    "describe_exit",
    "frame",
    "isolation_problem",
    "read_frame",
    "sdk_cache",
    "sweep_secrets",
    "worker_env",
    "write_secrets",
]

WORKER_PATH = Path(__file__).with_name("worker.py")
ISOLATE_PATH = Path(__file__).with_name("isolate.py")
_LEN = 4
_STDERR_TAIL = 20
LINE_LIMIT = 1 << 20
_BASE_ENV = ("PATH", "HOME", "LANG", "TMPDIR")

# Where a worker's lines go: (stream, line), stream "stdout", "stderr" or "system".
Emit = Callable[[str, str], None]


class FunctionLoadError(Exception):
    """The handler could not be imported; the message holds the import traceback."""


# Kubernetes' alphabet for generated name suffixes (no vowels, no look-alikes).
_POD_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


@dataclass(frozen=True)
class Isolation:
    """How a pool's workers see the machine (see `veba.functions.isolate`): a private
    /var/openfaas/secrets and /dev/shm, a pod-style hostname, extra /etc/hosts lines."""

    # ``<function>-<deployment hash>``, as a Deployment's pods are named.
    hostname_prefix: str
    hosts: tuple[str, ...] = ()
    # The appliance's data dir: hidden from the worker but for what it must read.
    private_dir: Path | None = None
    # (uid, gid) the worker runs as when the appliance runs as root.
    user: tuple[int, int] | None = None

    def hostname(self) -> str:
        """A new pod-style name: the prefix and a random 5-character suffix."""
        suffix = "".join(random.choices(_POD_ALPHABET, k=5))
        return f"{self.hostname_prefix[:57]}-{suffix}"

    def wrap(
        self,
        command: list[str],
        fd: int | None,
        hostname: str,
        keep: Sequence[Path] = (),
        reach: Sequence[Path] = (),
    ) -> list[str]:
        """``command`` run through isolate.py by this (the appliance's) interpreter;
        of the private dir, the worker sees only ``keep``; as ``user`` it can reach
        ``keep`` and ``reach`` (the script it runs). Without ``fd`` no secrets frame
        is read (a web app gets its secrets as variables)."""
        hosts = [arg for line in self.hosts for arg in ("--hosts-entry", line)]
        hide: list[str] = []
        if self.private_dir is not None:
            hide = ["--hide", str(self.private_dir)]
        hide += [arg for path in keep for arg in ("--keep", str(path))]
        if self.user is not None:
            hide += ["--user", f"{self.user[0]}:{self.user[1]}"]
            hide += [arg for path in reach for arg in ("--reach", str(path))]
        return [
            sys.executable,
            "-I",
            str(ISOLATE_PATH),
            *(("--fd", str(fd)) if fd is not None else ()),
            "--hostname",
            hostname,
            *hosts,
            *hide,
            "--",
            *command,
        ]


@functools.cache
def isolation_problem() -> str | None:
    """None when workers can be isolated on this machine, else why not.

    Asked once, of a child process (entering namespaces cannot be undone).
    """
    try:
        probe = subprocess.run(
            [sys.executable, "-I", str(ISOLATE_PATH), "--probe"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    if probe.returncode == 0:
        return None
    said = (probe.stdout + probe.stderr).strip()
    return said.splitlines()[-1] if said else f"exit code {probe.returncode}"


@dataclass(eq=False)
class WorkerProcess:
    """A running ``worker.py``: its process, its end of the socketpair, its log pumps."""

    slot: int
    proc: asyncio.subprocess.Process
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    stderr_tail: deque[str] = field(default_factory=lambda: deque(maxlen=_STDERR_TAIL))
    # The stdout and stderr pumps first; the pool appends its response reader.
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def launch(
        cls,
        slot: int,
        *,
        python: Path,
        handler_dir: Path,
        lang: str,
        sdk_dir: Path | None,
        env: dict[str, str],
        emit: Emit,
        isolation: Isolation | None = None,
        secrets: Mapping[str, bytes] | None = None,
        overlap: int = 1,
    ) -> Self:
        """Start ``worker.py`` with the function's python and pump its output to
        ``emit``; it is not ready until its first frame says so.

        With ``isolation`` the worker starts through isolate.py, which gets
        ``secrets`` as the first frame on the socket and mounts them privately.
        """
        handler = handler_dir / "handler.py"
        parent, child = socket.socketpair()
        try:
            reader, writer = await asyncio.open_connection(sock=parent, limit=LINE_LIMIT)
        except BaseException:
            parent.close()
            child.close()
            raise
        command = [
            str(python),
            "-I",  # no user site, no PYTHON* env, and not worker.py's folder on sys.path
            str(WORKER_PATH),
            "--handler-dir",
            str(handler_dir),
            "--lang",
            lang,
            "--fd",
            str(child.fileno()),
            # The worker asks Linux to kill it when we die (PR_SET_PDEATHSIG).
            "--parent-pid",
            str(os.getpid()),
            *(("--sdk-path", str(sdk_dir)) if sdk_dir else ()),
            *(("--overlap", str(overlap)) if overlap > 1 else ()),
        ]
        if isolation is not None:
            # What the worker reads: its code, its venv (python's parent's parent), the SDK.
            keep = [handler_dir, python.parent.parent, *([sdk_dir] if sdk_dir else [])]
            command = isolation.wrap(
                command, child.fileno(), env.get("HOSTNAME", ""), keep, [WORKER_PATH]
            )
            files = {k: base64.b64encode(v).decode("ascii") for k, v in (secrets or {}).items()}
            writer.write(frame({"secrets": files}, b""))
        try:
            proc = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(child.fileno(),),
                cwd=handler_dir,
                env=env,
                start_new_session=False,
                limit=LINE_LIMIT,
            )
        except BaseException as exc:
            writer.close()
            if isinstance(exc, OSError):
                raise FunctionLoadError(f"{handler}: cannot run {python}: {exc}") from exc
            raise
        finally:
            child.close()
        worker = cls(slot, proc, reader, writer)
        assert proc.stdout is not None and proc.stderr is not None
        worker.tasks = [
            asyncio.create_task(worker._pump_log(proc.stdout, "stdout", emit)),
            asyncio.create_task(worker._pump_log(proc.stderr, "stderr", emit)),
        ]
        return worker

    def send_signal(self, sig: int) -> None:
        """Signal the worker unless it is known to be gone.

        Not ``proc.kill()``: Popen polls (waitpid) first, which can reap the child
        before asyncio's child watcher does, and the watcher then reports exit code 255
        instead of the real one.
        """
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    async def wait_or_kill(self, grace: float) -> None:
        """Wait ``grace`` seconds for the worker to exit, then SIGKILL it and wait."""
        try:
            await asyncio.wait_for(self.proc.wait(), grace)
        except TimeoutError:
            self.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def close(self) -> None:
        """Close the channel and stop the tasks reading from the worker."""
        self.writer.close()
        # The log pipes reach EOF when the process is gone (unless it left children
        # holding them, hence the bound).
        logs = [t for t in self.tasks[:2] if not t.done()]
        if logs:
            await asyncio.wait(logs, timeout=1.0)
        for task in self.tasks:
            if task is not asyncio.current_task():
                task.cancel()

    async def _pump_log(self, stream: asyncio.StreamReader, name: str, emit: Emit) -> None:
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line over the limit: its start was dropped
                emit("system", f"a {name} line longer than {LINE_LIMIT} bytes was dropped")
                continue
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if name == "stderr":
                self.stderr_tail.append(split_call_tag(line)[1])
            emit(name, line)


def split_call_tag(line: str) -> tuple[int | None, str]:
    """(the id of the call that printed it, the text) of a worker's output line;
    worker.py starts each line printed during a call with ``\x1e<id>\x1f``."""
    if line.startswith("\x1e"):
        tag, mark, text = line[1:].partition("\x1f")
        if mark and tag.isdigit():
            return int(tag), text
    return None, line


# --- frames: a length-prefixed JSON header, then a length-prefixed body -------------------


def frame(header: dict[str, Any], body: bytes) -> bytes:
    head = orjson.dumps(header)  # the stdlib worker reads it with json
    return b"".join((len(head).to_bytes(_LEN, "big"), head, len(body).to_bytes(_LEN, "big"), body))


async def read_frame(reader: asyncio.StreamReader) -> tuple[dict[str, Any], bytes]:
    size = int.from_bytes(await reader.readexactly(_LEN), "big")
    head = orjson.loads(await reader.readexactly(size))
    size = int.from_bytes(await reader.readexactly(_LEN), "big")
    return head, await reader.readexactly(size)


# --- what a worker starts with, and how its end reads -------------------------------------


def worker_env(
    function: str,
    slot: int,
    environment: Mapping[str, str],
    secrets_dir: Path | None,
    hostname: str | None = None,
) -> dict[str, str]:
    # Not the appliance's environment: it may hold the API token.
    env = {k: os.environ[k] for k in _BASE_ENV if k in os.environ}
    env.setdefault("PATH", os.defpath)
    env.setdefault("LANG", "C.UTF-8")
    env.setdefault("TMPDIR", tempfile.gettempdir())
    env["HOSTNAME"] = hostname or f"{function}-{slot}"
    env.update(environment)
    env["VEBA_FUNCTION_NAME"] = function
    if secrets_dir is not None:
        env["VEBA_SECRETS_DIR"] = env["secret_mount_path"] = str(secrets_dir)
    return env


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def sdk_cache(python: Path) -> Path:
    """Where the SDK copy goes: beside the venv (in the venv cache), else a temp folder."""
    env = python.parent.parent
    if (env / "pyvenv.cfg").is_file() and os.access(env.parent, os.W_OK):
        return env.parent
    return Path(tempfile.gettempdir()) / f"veba-sdk-{os.getuid()}"


# Secrets folders of workers without isolation: ``veba-secrets.<pid>.<function>.<random>``,
# the pid of the process that wrote them, so a later one can tell whose they are
# (dots: a function's name has none).
_SECRETS_PREFIX = "veba-secrets."


def _secrets_base() -> Path:
    """Memory-backed storage when there is some we may write to, else the temp folder."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def write_secrets(name: str, secrets: Mapping[str, bytes]) -> Path:
    """A fresh 0700 directory in memory-backed storage with one 0600 file per secret.

    The pool removes it when it stops; what a killed process leaves behind,
    `sweep_secrets` removes at the next start."""
    prefix = f"{_SECRETS_PREFIX}{os.getpid()}.{name}."
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=_secrets_base()))
    try:
        for key, value in secrets.items():
            if not key or "/" in key or key in (".", ".."):
                raise ValueError(f"function {name!r}: invalid secret name {key!r}")
            fd = os.open(folder / key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(value)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def sweep_secrets(base: Path | None = None) -> list[Path]:
    """Remove the secrets folders (`write_secrets`) that processes now dead left
    behind, after a crash or a SIGKILL; only this user's. Returns what it removed."""
    removed: list[Path] = []
    folder = base if base is not None else _secrets_base()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(_SECRETS_PREFIX):
            continue
        pid = entry.name[len(_SECRETS_PREFIX) :].partition(".")[0]
        try:
            mine = entry.is_dir(follow_symlinks=False) and entry.stat().st_uid == os.getuid()
        except OSError:
            continue
        if mine and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
