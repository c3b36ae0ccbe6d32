"""Start the systems under test as process groups and make sure they all end.

Each system runs in its own session (so its own process group). Stopping sends
SIGTERM to the group, then SIGKILL to whatever is left of it, then SIGKILL to any
descendant that moved to another group (a supervisor may put its workers in
sessions of their own). Every process started here is registered and stopped at
interpreter exit, whatever happened before.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["Managed", "rss_by_env", "rss_mb", "stop_all"]

_live: list[Managed] = []


class Managed:
    def __init__(
        self, name: str, cmd: Sequence[str], *, env: dict[str, str], log: Path, cwd: Path
    ) -> None:
        self.name = name
        self.log = log
        self._log_file = log.open("ab")
        self.proc = subprocess.Popen(
            list(cmd),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        # pid -> start time (clock ticks since boot), so a reused pid is never signalled.
        self._known: dict[int, int] = {}
        self.note_descendants()
        _live.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise RuntimeError(f"{self.name} exited with {code}; log tail:\n{self.log_tail()}")

    def run_to_end(self, timeout: float) -> int:
        """Wait for a one-shot command; stop it and raise TimeoutError if it takes too long."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise TimeoutError(
                f"{self.name} still running after {timeout:.0f} s; log tail:\n{self.log_tail()}"
            ) from None
        self.stop()  # collects anything it left behind in its group
        return code

    def note_descendants(self) -> None:
        """Remember the current process tree, so stop() finds children that re-parent."""
        for pid in {self.proc.pid} | _descendants(self.proc.pid):
            started = _start_time(pid)
            if started is not None:
                self._known.setdefault(pid, started)

    def owns(self, pid: int) -> bool:
        """Whether pid is this process or a descendant noted so far (note_descendants)."""
        return pid in self._known

    def stop(self, timeout: float = 15.0) -> None:
        if self not in _live:
            return
        try:
            self.note_descendants()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
            # Let the group's other members finish their own shutdown, then make sure.
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and _alive_pids(self._known):
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            for pid in _alive_pids(self._known):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        finally:
            _live.remove(self)
            self._log_file.close()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _stat_fields(pid: int | str) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    # fields[0] is the state, [1] the ppid, [19] the start time.
    return stat[stat.rfind(b")") + 2 :].split()


def _start_time(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])


def _ppid_map() -> dict[int, int]:
    parents = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(entry.name)
        if fields is not None:
            parents[int(entry.name)] = int(fields[1])
    return parents


def _descendants(root: int) -> set[int]:
    parents = _ppid_map()
    found: set[int] = set()
    frontier = {root}
    while frontier:
        children = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= children
        frontier = children
    return found


def _alive_pids(known: dict[int, int]) -> list[int]:
    alive = []
    for pid, started in known.items():
        fields = _stat_fields(pid)
        if fields is not None and int(fields[19]) == started and fields[0] != b"Z":
            alive.append(pid)
    return alive


def rss_mb(pid: int) -> float:
    """VmRSS of one process in MB; 0.0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def rss_by_env(root: int, key: str) -> dict[str, list[int]]:
    """VmRSS (KiB) of root's descendants, grouped by the value of ``key`` in their
    environment (descendants without it are left out)."""
    found: dict[str, list[int]] = {}
    prefix = key.encode() + b"="
    for pid in sorted(_descendants(root)):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
            with open(f"/proc/{pid}/status", "rb") as f:
                status = f.read().splitlines()
        except OSError:  # gone, or not ours to read
            continue
        value = next((v[len(prefix) :] for v in environ if v.startswith(prefix)), None)
        rss = next((line.split()[1] for line in status if line.startswith(b"VmRSS:")), None)
        if value is not None and rss is not None:
            found.setdefault(value.decode(), []).append(int(rss))
    return found


def stop_all() -> None:
    for managed in reversed(list(_live)):
        managed.stop()


atexit.register(stop_all)
