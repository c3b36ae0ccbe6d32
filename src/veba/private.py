"""Files only their owner may read: the data directory and what veba puts in it.

The appliance calls `make_private` at every start, so the data directory is 0700
and everything in it owner-only whatever an older version, a copy or a restore
left there; `veba serve` runs with umask 077 so what it creates later is
private too.

Except what function workers read: each function's code (`functions/*/code-*`)
and the venvs and SDK copy (`venvs/*`). Under a root appliance a worker runs as
a user of its own and reaches just those folders through its private view of
the machine (veba.functions.isolate); they stay readable to others inside the
0700 data dir, which keeps every other user of the machine out.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import stat
from pathlib import Path

__all__ = ["DataDirError", "check_data_dir", "make_private", "make_private_tree"]

log = logging.getLogger("veba.private")

# Relative to the data dir: read by workers that may run as other users.
WORKER_READABLE = ("functions/*/code-*", "venvs/*")


class DataDirError(ValueError):
    """A data directory veba cannot make its own."""


def make_private(data_dir: Path) -> None:
    """Make the data directory 0700 and everything under it readable by its owner
    only (directories 0700, files 0600, or 0700 where the owner may execute:
    venvs' scripts). Symbolic links are left as they are (a venv's python links
    to the system's). Refuses a folder others share or rely on, which would break."""
    data_dir = Path(data_dir)
    check_data_dir(data_dir)
    _chmod(data_dir, 0o700)
    make_private_tree(data_dir, except_for=WORKER_READABLE)


def check_data_dir(data_dir: Path) -> None:
    """Refuse (`DataDirError`) a data directory that others share or rely on (a
    sticky folder such as /tmp, /, the home directory), which `make_private`
    would break; one that does not exist yet is fine. `veba serve` asks before it
    writes anything."""
    data_dir = Path(data_dir)
    try:
        mode = data_dir.stat().st_mode
    except FileNotFoundError:
        return
    if mode & stat.S_ISVTX or data_dir.resolve() in (Path("/"), Path.home().resolve()):
        raise DataDirError(
            f"data directory {data_dir}: a shared folder; veba makes its data directory"
            f" private (0700), so give it one of its own, e.g. {data_dir / 'veba'}"
        )


def make_private_tree(top: Path, except_for: tuple[str, ...] = ()) -> None:
    """Everything under ``top`` (not ``top`` itself) owner-only, but for the folders
    matching ``except_for`` (paths relative to ``top``), made readable to workers."""
    from veba.functions.build import readable_by_workers

    for root, dirs, files in os.walk(top):
        for name in list(dirs):
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            rel = os.path.relpath(path, top)
            if any(fnmatch.fnmatch(rel, pattern) for pattern in except_for):
                dirs.remove(name)
                readable_by_workers(Path(path))
                continue
            _chmod(path, 0o700)
        for name in files:
            path = os.path.join(root, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
                _chmod(path, stat.S_IMODE(st.st_mode) & 0o700)


def _chmod(path: str | Path, mode: int) -> None:
    try:
        if stat.S_IMODE(os.lstat(path).st_mode) != mode:
            os.chmod(path, mode)
    except OSError as exc:  # not ours (another user's file): say so, go on
        log.warning("cannot make %s private: %s", path, exc)
