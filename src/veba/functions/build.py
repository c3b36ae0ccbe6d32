"""One virtualenv per function, shared by functions with the same requirements.

A venv is keyed by the sha256 of the function's normalised ``requirements.txt``
and the interpreter, and lives in ``cache_dir/<key>/``. It is built beside the
cache entry and renamed into place only when complete, so a crash never leaves a
half-built venv where a later run would trust it; an fcntl lock per key keeps two
builders (threads or processes) from racing.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
import venv
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["BuildError", "ensure_sdk", "ensure_venv", "not_code", "readable_by_workers", "venv_key"]

REQUIREMENTS = "requirements.txt"
_COMPLETE = ".veba-complete"  # written last: a venv without it was never finished
_ERROR_LINES = 15


class BuildError(ValueError):
    """A function's requirements could not be installed."""


def readable_by_workers(root: Path) -> None:
    """Let any user read (and run what is runnable in) ``root``: a function's code,
    venv and the SDK copy, which its workers read as their own unprivileged user
    when the appliance runs as root. The data dir around them stays 0700; workers
    reach these folders only through their private view (veba.functions.isolate)."""
    for folder, dirs, files in os.walk(root):
        os.chmod(folder, (stat.S_IMODE(os.stat(folder).st_mode) & ~0o022) | 0o755)
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            mode = stat.S_IMODE(os.stat(path).st_mode) & ~0o022  # nobody else writes
            os.chmod(path, mode | 0o444 | (0o111 if mode & 0o100 else 0))
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(folder, d))]


def _normalised_requirements(path: Path, seen: frozenset[Path] = frozenset()) -> list[str]:
    """Requirement lines without comments, blanks or order, ``-r``/``-c`` files inlined."""
    if path in seen or not path.is_file():
        return []
    lines: set[str] = set()
    for raw in path.read_text(errors="replace").splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line:
            continue
        lines.add(" ".join(line.split()))
        nested = re.match(r"^(?:-r|-c|--requirement|--constraint)[\s=]+(\S+)$", line)
        if nested:  # an included file's content changes what gets installed
            inner = (path.parent / nested.group(1)).resolve()
            lines.update(_normalised_requirements(inner, seen | {path}))
    return sorted(lines)


def venv_key(handler_dir: Path) -> str:
    """The cache key of a handler folder's venv."""
    requirements = _normalised_requirements((handler_dir / REQUIREMENTS).resolve())
    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    digest = hashlib.sha256()
    digest.update(f"{sys.implementation.name} {sys.version} {base}\n".encode())
    digest.update("\n".join(requirements).encode())
    return digest.hexdigest()[:32]


# What a venv made in the function folder itself leaves there (VEBA's Knative
# examples ship their folder's pyvenv.cfg).
_VENV_LEFTOVERS = frozenset({"pyvenv.cfg", "bin", "lib", "lib64", "include", "share"})
_NOT_CODE = frozenset({"__pycache__", ".venv", ".git"})


def not_code(folder: Path, rel: Path) -> bool:
    """Whether ``folder/rel`` is not the function's code: caches, VCS data, virtualenvs
    (a folder holding pyvenv.cfg, or the parts of one made in ``folder`` itself)."""
    if any(part in _NOT_CODE for part in rel.parts):
        return True
    if rel.parts and rel.parts[0] in _VENV_LEFTOVERS and (folder / "pyvenv.cfg").is_file():
        return True
    parent = folder
    for part in rel.parts[:-1] if (folder / rel).is_file() else rel.parts:
        parent = parent / part
        if (parent / "pyvenv.cfg").is_file():
            return True
    return False


def _python(env_dir: Path) -> Path:
    return env_dir / "bin" / "python"


def ensure_venv(
    handler_dir: Path,
    cache_dir: Path,
    progress: Callable[[str], None] = lambda line: None,
) -> Path:
    """The python of a venv holding ``handler_dir``'s requirements, built if not cached.

    Blocking (it may run pip for minutes): from asyncio, call it in a thread.
    """
    handler_dir = Path(handler_dir).resolve()
    cache_dir = Path(cache_dir).absolute()  # not resolve(): keep the venv's own symlinks
    key = venv_key(handler_dir)
    final = cache_dir / key
    if (final / _COMPLETE).exists():
        return _python(final)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir / f".{key}.lock"):
        if (final / _COMPLETE).exists():  # another builder finished while we waited
            return _python(final)
        _remove_leftovers(cache_dir, key)
        building = cache_dir / f".build-{key}-{os.getpid()}"
        try:
            _build(handler_dir, building, final, progress)
            readable_by_workers(building)
            os.rename(building, final)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
    return _python(final)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _remove_leftovers(cache_dir: Path, key: str) -> None:
    # Under the lock nobody else builds this key: any build dir or incomplete venv
    # for it is a crashed builder's.
    for stale in cache_dir.glob(f".build-{key}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if (cache_dir / key).exists():
        shutil.rmtree(cache_dir / key, ignore_errors=True)


def _build(handler_dir: Path, building: Path, final: Path, progress: Callable[[str], None]) -> None:
    progress(f"creating venv {final.name} for {handler_dir.name}")
    # In-process and without pip: a few milliseconds. system_site_packages stays
    # False so a function never imports the appliance's own packages.
    venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(building)
    requirements = handler_dir / REQUIREMENTS
    lines = _normalised_requirements(requirements.resolve())
    if lines:
        _pip_install(requirements, _python(building), handler_dir, progress)
    _retarget(building, final)
    (building / REQUIREMENTS).write_text("\n".join(lines) + "\n")
    (building / _COMPLETE).write_text("")


def _pip_install(
    requirements: Path, python: Path, cwd: Path, progress: Callable[[str], None]
) -> None:
    """Install with the appliance's pip into the venv (``pip --python``): no pip per venv."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(python),
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar",
        "off",
        "-r",
        str(requirements),
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.pop("VIRTUAL_ENV", None)
    tail: deque[str] = deque(maxlen=200)
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    assert proc.stdout is not None
    with proc:
        for raw in proc.stdout:
            line = raw.rstrip()
            if line:
                tail.append(line)
                progress(line)
    if proc.returncode != 0:
        raise BuildError(_pip_error(requirements, proc.returncode, list(tail)))


def _pip_error(requirements: Path, returncode: int, lines: list[str]) -> str:
    where = f"{requirements.parent.name}/{requirements.name}"
    text = "\n".join(lines)
    failed = re.search(
        r"(?:No matching distribution found for|satisfies the requirement) (\S+)", text
    )
    what = f"pip could not install {failed.group(1)!r}" if failed else "pip install failed"
    errors = [line for line in lines if line.startswith("ERROR:")] or lines
    detail = "\n".join(errors[-_ERROR_LINES:]) or f"pip exited with code {returncode}"
    return f"{where}: {what}: {detail}"


def _retarget(building: Path, final: Path) -> None:
    """Point console scripts' shebangs, activate scripts and pyvenv.cfg at the final path.

    (The python itself finds its site-packages relative to its own location.)
    """
    old, new = str(building).encode(), str(final).encode()
    for path in [building / "pyvenv.cfg", *(building / "bin").iterdir()]:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > 1 << 20:
            continue
        data = path.read_bytes()
        if old in data:
            path.write_bytes(data.replace(old, new))


# --- veba.sdk for the workers ------------------------------------------------------

_SDK_SOURCE = Path(__file__).resolve().parent.parent  # the veba package


def _sdk_files() -> list[tuple[str, bytes]]:
    """veba/__init__.py, veba/scrub.py (the SDK's logger redacts with it) and
    veba/sdk/**.py, all stdlib only, as (relative path, content)."""
    files = [
        _SDK_SOURCE / "__init__.py",
        _SDK_SOURCE / "scrub.py",
        *sorted((_SDK_SOURCE / "sdk").rglob("*.py")),
    ]
    return [
        (str(path.relative_to(_SDK_SOURCE.parent)), path.read_bytes())
        for path in files
        if "__pycache__" not in path.parts
    ]


def ensure_sdk(cache_dir: Path) -> Path:
    """A folder holding a copy of ``veba.sdk`` (``<cache_dir>/sdk-<content hash>/veba/...``).

    Workers put it on sys.path (``worker.py --sdk-path``) so ``import veba.sdk`` works in
    every function venv without the appliance's own packages. Written beside the
    venvs and renamed into place when complete; the same content is written once.
    """
    files = _sdk_files()
    digest = hashlib.sha256()
    for rel, data in files:
        digest.update(f"{rel}\0{len(data)}\0".encode())
        digest.update(data)
    final = Path(cache_dir).absolute() / f"sdk-{digest.hexdigest()[:16]}"
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    building = final.with_name(f".{final.name}-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    try:
        for rel, data in files:
            target = building / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        readable_by_workers(building)
        os.rename(building, final)
    except OSError:
        shutil.rmtree(building, ignore_errors=True)
        if not final.is_dir():  # not merely another process having been first
            raise
    return final
