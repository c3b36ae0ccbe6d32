"""Files only their owner may read: the data directory and what veba puts in it.

The appliance calls `make_private` at every start, so the data directory is 0700
and everything in it owner-only whatever an older version, a copy or a restore
left there; `veba serve` runs with umask 077 so what it creates later is
private too, and code unpacked and venvs built are made so explicitly (tar
and venv set modes of their own).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

__all__ = ["DataDirError", "make_private", "make_private_tree"]

log = logging.getLogger("veba.private")


class DataDirError(ValueError):
    """A data directory veba cannot make its own."""


def make_private(data_dir: Path) -> None:
    """Make the data directory 0700 and everything under it readable by its owner
    only (directories 0700, files 0600, or 0700 where the owner may execute:
    venvs' scripts). Symbolic links are left as they are (a venv's python links
    to the system's). Refuses a folder others share or rely on, which would break."""
    data_dir = Path(data_dir)
    mode = data_dir.stat().st_mode
    if mode & stat.S_ISVTX or data_dir.resolve() in (Path("/"), Path.home().resolve()):
        raise DataDirError(
            f"data directory {data_dir}: a shared folder; veba makes its data directory"
            f" private (0700), so give it one of its own, e.g. {data_dir / 'veba'}"
        )
    _chmod(data_dir, 0o700)
    make_private_tree(data_dir)


def make_private_tree(top: Path) -> None:
    """Everything under ``top`` (not ``top`` itself) owner-only; see `make_private`."""
    for root, dirs, files in os.walk(top):
        for name in dirs:
            path = os.path.join(root, name)
            if not os.path.islink(path):
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
