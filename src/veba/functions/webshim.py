"""Runs a function's Procfile `web` command and ends it, whole, with the appliance.

Executed by path as ``<venv>/bin/python -I webshim.py --parent-pid P --grace G -- CMD``
(standard library only). The command runs through ``/bin/sh`` in a process group
of its own, so whatever it starts (a Flask reloader, gunicorn workers) ends with
it: on SIGTERM the group gets SIGTERM, then SIGKILL after ``--grace`` seconds;
when the appliance dies (PR_SET_PDEATHSIG, or a changed parent pid) likewise;
and when the command exits, whatever it left behind is killed and the shim exits
the same way (its exit code, or the same signal), so the supervisor sees how the
app ended.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time

_PR_SET_PDEATHSIG = 1


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _die_with_parent(parent: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it died before the request took hold
        sys.exit(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="webshim")
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--grace", type=float, default=3.0)
    parser.add_argument("command")
    args = parser.parse_args(argv)
    _die_with_parent(args.parent_pid)

    stop_at: list[float] = []
    started: list[subprocess.Popen[bytes]] = []

    def stop(signum: int, frame: object) -> None:
        if not stop_at:
            stop_at.append(time.monotonic() + args.grace)
            if started:
                _signal_group(started[0].pid, signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    # The shell and the app get default signal handling back (not our handlers).
    child = subprocess.Popen(["/bin/sh", "-c", args.command], process_group=0)
    started.append(child)
    if stop_at:  # told to stop while starting it
        _signal_group(child.pid, signal.SIGTERM)
    while True:
        try:
            code = child.wait(timeout=0.25)
            break
        except subprocess.TimeoutExpired:
            pass
        if os.getppid() != args.parent_pid:
            stop(signal.SIGTERM, None)
        if stop_at and time.monotonic() > stop_at[0]:
            _signal_group(child.pid, signal.SIGKILL)
    _signal_group(child.pid, signal.SIGKILL)  # what the command left behind
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main())
