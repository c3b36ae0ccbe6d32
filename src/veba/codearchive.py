"""A function's code as a tar.gz archive: packed by the CLI for a deploy,
unpacked by the appliance into the folder its workers run.

Unpacking takes only plain files and folders inside the target (Python's
"data" filter, by hand where the Python has none), into a folder beside the
target that is renamed into place once whole, so a half-unpacked folder is
never mistaken for code.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from pathlib import Path, PurePosixPath

from veba.functions.build import not_code, readable_by_workers

__all__ = ["CodeArchiveError", "pack_folder", "unpack"]


class CodeArchiveError(ValueError):
    """An archive that cannot be unpacked; the message says why."""


def pack_folder(folder: Path) -> bytes:
    """`folder`'s code (what `not_code` does not skip) as tar.gz; the same files
    make the same members (no times, owners or modes of this machine's)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder)
            if not_code(folder, rel):
                continue
            info = tar.gettarinfo(str(path), arcname=str(rel))
            info.mtime = 0  # same code, same hash
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if path.is_file():
                with path.open("rb") as fh:
                    tar.addfile(info, fh)
            elif path.is_dir():
                tar.addfile(info)
    return buffer.getvalue()


def unpack(archive: bytes, into: Path, *, entry: str | None = None) -> None:
    """Unpack `archive` as the folder `into` (which must not exist yet); with
    `entry`, refuse an archive without that file at its top."""
    tmp = into.with_name(into.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            _extract(tar, tmp)
    except (tarfile.TarError, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CodeArchiveError(f"cannot unpack the code: {exc}") from None
    if entry is not None and not (tmp / entry).exists():
        shutil.rmtree(tmp, ignore_errors=True)
        raise CodeArchiveError(f"the function's folder has no {entry}")
    readable_by_workers(tmp)  # tar sets the archive's modes; workers may be other users
    tmp.rename(into)


def _extract(tar: tarfile.TarFile, to: Path) -> None:
    """Only plain files and folders, inside `to`: Python's "data" filter where it has
    one (3.12, 3.11.4+), else the same rules by hand (Debian 12's Python is 3.11.2)."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(to, filter="data")
        return
    members = tar.getmembers()
    for member in members:
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts or not (member.isfile() or member.isdir()):
            raise tarfile.TarError(f"{member.name!r} is not a plain file or folder inside it")
        member.mode &= 0o755  # no setuid, setgid or sticky bit, nothing writable by others
        member.uid, member.gid, member.uname, member.gname = os.getuid(), os.getgid(), "", ""
    tar.extractall(to, members=members)
