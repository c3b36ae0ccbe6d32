"""One appliance per log file: an exclusive `flock` on `<log>.lock`.

`SQLiteLog.open` takes it if it was not given one. `veba serve` takes it first
thing, before it writes anything into the data directory, so a second appliance
on the same data directory is refused in one line naming the one that holds it
(its pid and address, written into the lock file once it is held), instead of
failing later with its `url` already rewritten.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path

__all__ = ["LogInUse", "OwnerLock"]


class LogInUse(RuntimeError):
    """Another process holds the log's lock."""


class OwnerLock:
    """A held lock; released by `release` or when the process ends."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, log_path: Path, *, url: str | None = None) -> OwnerLock:
        """Lock `log_path` for this process (creating its folder, 0700); raises
        `LogInUse`, naming the holder when it said who it is, or `OSError`."""
        log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_path = log_path.with_name(log_path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise LogInUse(
                f"{log_path} is in use by another veba appliance{holder}; stop it, or give"
                " this one its own --data-dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        # Who holds it, for the message a second appliance gets (advisory only).
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            note = {"pid": os.getpid(), "url": url}
            os.pwrite(fd, json.dumps(note).encode() + b"\n", 0)
        return cls(lock_path, fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _holder(fd: int) -> str:
    try:
        note = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return ""
    if not isinstance(note, dict) or not note.get("pid"):
        return ""
    where = f", serving on {note['url']}" if note.get("url") else ""
    return f" (pid {note['pid']}{where})"
