"""Give one function process a container's view of the machine, then become it.

Run as ``python -I isolate.py [options] --fd N -- COMMAND...`` by the appliance's
own interpreter (standard library only). It moves into a private mount and UTS
namespace (and a user namespace when not root), so that, as in an OpenFaaS pod:

* the function's declared secrets are files in ``/var/openfaas/secrets`` (a
  read-only tmpfs holding only this function's secrets; they arrive as the first
  frame on the worker socket ``--fd`` and are never written to a shared disk);
* ``/dev/shm`` is a fresh tmpfs, so no other function's files are visible there;
* ``socket.gethostname()`` is a pod-style name (``--hostname``);
* ``/etc/hosts`` holds ``--hosts-entry`` lines, e.g. ``gateway.openfaas`` pointing
  at the appliance's listener for function-to-function calls;
* the appliance's data dir (``--hide``) shows only what the worker must read
  (``--keep``: its code, its venv, the SDK), not the key that decrypts every
  secret, the API token, the log or other functions' code;
* when the appliance runs as root, the command runs as the function's own
  unprivileged user (``--user``), with no way back to root;

and then ``execv``s COMMAND (the worker, or a Knative app's command) in place:
namespaces survive exec, capabilities of an unprivileged user do not.

A failure is reported as ``{"load_error": ...}`` on the socket (what a worker
that cannot import its handler sends) and exit status 3. ``--probe`` checks that
all of this works here without running anything.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import errno
import json
import os
import socket
import sys
from collections.abc import Sequence

SECRETS_PATH = "/var/openfaas/secrets"
_HOSTS = "/etc/hosts"
_SHM = "/dev/shm"
_LEN = 4

# <sched.h> and <sys/mount.h>
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWUSER = 0x10000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000

_libc = ctypes.CDLL(None, use_errno=True)


class IsolationError(Exception):
    """A step of the set-up failed; the message says which and why."""


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise IsolationError(f"{what}: {os.strerror(code)} ({errno.errorcode.get(code, code)})")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(
            None if source is None else source.encode(),
            target.encode(),
            None if fstype is None else fstype.encode(),
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {fstype or source} on {target}",
    )


def _write_file(path: str, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, mode)


def enter_namespaces() -> None:
    """A private mount and UTS namespace; as a non-root user, inside a user namespace
    that maps only that user (so files keep their real owner)."""
    uid, gid = os.geteuid(), os.getegid()
    flags = CLONE_NEWNS | CLONE_NEWUTS
    if uid != 0:
        flags |= CLONE_NEWUSER
    _check(_libc.unshare(flags), "unshare (private mount and hostname namespaces)")
    if uid != 0:
        try:
            with open("/proc/self/setgroups", "w") as f:
                f.write("deny")
            with open("/proc/self/uid_map", "w") as f:
                f.write(f"{uid} {uid} 1")
            with open("/proc/self/gid_map", "w") as f:
                f.write(f"{gid} {gid} 1")
        except OSError as exc:
            raise IsolationError(f"user namespace id maps: {exc.strerror}") from None
    # Nothing mounted from here on may show outside (systemd makes / shared).
    _mount(None, "/", None, MS_REC | MS_PRIVATE)


def _shadow(folder: str, mode: int | None = None) -> None:
    """Cover ``folder`` with a tmpfs holding bind mounts of everything it held, so
    that new entries can be made in it, or its own mode changed (``mode``), in this
    mount namespace only."""
    original = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        entries = os.listdir(original)
        st = os.fstat(original)
        mode = st.st_mode & 0o7777 if mode is None else mode
        _mount("tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV, f"mode={mode:o}")
        for name in entries:
            old = f"/proc/self/fd/{original}/{name}"
            new = os.path.join(folder, name)
            if os.path.islink(old):
                os.symlink(os.readlink(old), new)
                continue
            if os.path.isdir(old):
                os.mkdir(new)
            else:
                _write_file(new, b"", 0o600)
            _mount(old, new, None, MS_BIND | MS_REC)
    finally:
        os.close(original)


def _make_mount_point(path: str) -> None:
    """Make ``path`` exist inside this mount namespace without touching the host
    (no ``/var/openfaas`` on this machine): its deepest existing ancestor is shadowed."""
    if os.path.isdir(path):
        return
    ancestor = os.path.dirname(path)
    while not os.path.isdir(ancestor):
        ancestor = os.path.dirname(ancestor)
    _shadow(ancestor)
    os.makedirs(path, mode=0o755, exist_ok=True)


def _searchable(st: os.stat_result, uid: int, gid: int) -> bool:
    if st.st_uid == uid:
        return bool(st.st_mode & 0o100)
    if st.st_gid == gid:
        return bool(st.st_mode & 0o010)
    return bool(st.st_mode & 0o001)


def make_reachable(paths: Sequence[str], uid: int, gid: int) -> None:
    """Let ``uid`` walk to each of ``paths``: a folder on the way that it may not
    search (``/root`` holding a pyenv python, say) is shadowed with mode 0755 in this
    namespace. What the folders hold keeps its own modes."""
    for path in paths:
        real = os.path.realpath(path)
        parts = real.split(os.sep)
        for depth in range(1, len(parts)):
            folder = os.sep.join(parts[:depth]) or os.sep
            if not os.path.isdir(folder):
                break
            if not _searchable(os.stat(folder), uid, gid):
                _shadow(folder, 0o755)


def become(uid: int, gid: int) -> None:
    """Drop root for good: no groups, the function's own ids, no way back through
    setuid programs (PR_SET_NO_NEW_PRIVS)."""
    try:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    except OSError as exc:
        raise IsolationError(f"cannot become uid {uid} gid {gid}: {exc.strerror}") from None
    _check(_libc.prctl(38, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


def install_secrets(files: dict[str, bytes]) -> None:
    """A fresh /dev/shm, and a read-only tmpfs at /var/openfaas/secrets with ``files``."""
    if os.path.isdir(_SHM):
        _mount("tmpfs", _SHM, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    _make_mount_point(SECRETS_PATH)
    _mount("tmpfs", SECRETS_PATH, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    for name, value in files.items():
        if not name or "/" in name or name in (".", ".."):
            raise IsolationError(f"invalid secret file name {name!r}")
        _write_file(os.path.join(SECRETS_PATH, name), value, 0o444)
    _mount(None, SECRETS_PATH, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def hide_except(folder: str, keep: Sequence[str]) -> None:
    """Cover ``folder`` (the appliance's data dir: its key, token, log, every
    function's code) with an empty tmpfs, then bind back only ``keep``: what this
    function's worker must read (its code, its venv, the SDK)."""
    if not os.path.isdir(folder):
        return
    given, folder = os.path.abspath(folder), os.path.realpath(folder)
    held: list[tuple[str, int]] = []
    try:
        for path in keep:
            # Where the worker will look for it: its path as given (data/venvs/KEY,
            # even if data/venvs is a symlink), else its real place.
            rel = os.path.relpath(os.path.abspath(path), given)
            if rel.startswith(".."):
                rel = os.path.relpath(os.path.realpath(path), folder)
            if rel.startswith(".."):
                continue  # outside the hidden folder: the worker sees it anyway
            held.append((rel, os.open(path, os.O_RDONLY | os.O_DIRECTORY)))
        _mount("tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
        for rel, fd in held:
            inside = os.path.join(folder, rel)
            os.makedirs(inside, mode=0o755, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", inside, None, MS_BIND | MS_REC)
    finally:
        for _, fd in held:
            os.close(fd)


def set_hostname(name: str) -> None:
    try:
        socket.sethostname(name)
    except OSError as exc:
        raise IsolationError(f"sethostname {name!r}: {exc.strerror}") from None


def add_hosts(entries: Sequence[str]) -> None:
    """/etc/hosts as the machine has it, plus ``entries``, seen by this process only."""
    try:
        with open(_HOSTS, "rb") as f:
            current = f.read()
    except OSError:
        current = b"127.0.0.1\tlocalhost\n"
    if current and not current.endswith(b"\n"):
        current += b"\n"
    text = current + "".join(f"{line}\n" for line in entries).encode()
    # The file lives in this namespace's own /dev/shm (a fresh tmpfs by now).
    holder = os.path.join(_SHM if os.path.isdir(_SHM) else "/tmp", ".veba-hosts")
    _write_file(holder, text, 0o644)
    _mount(holder, _HOSTS, None, MS_BIND)
    os.unlink(holder)  # the mount keeps the file; the function's /dev/shm stays empty


# --- the secrets frame ------------------------------------------------------------


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise IsolationError("the appliance closed the socket before sending secrets")
        data += chunk
    return data


def read_setup(sock: socket.socket) -> dict[str, bytes]:
    """The first frame: ``{"secrets": {file: base64}}``."""
    head = _read_exactly(sock, int.from_bytes(_read_exactly(sock, _LEN), "big"))
    _read_exactly(sock, int.from_bytes(_read_exactly(sock, _LEN), "big"))  # empty body
    doc = json.loads(head)
    return {str(k): base64.b64decode(v) for k, v in (doc.get("secrets") or {}).items()}


def _send_error(sock: socket.socket | None, message: str) -> None:
    sys.stderr.write(f"veba: cannot isolate the function: {message}\n")
    sys.stderr.flush()
    if sock is None:
        return
    head = json.dumps({"load_error": f"cannot isolate the function: {message}"}).encode()
    frame = len(head).to_bytes(_LEN, "big") + head + (0).to_bytes(_LEN, "big")
    with contextlib.suppress(OSError):
        sock.sendall(frame)


def probe() -> str | None:
    """None when isolation works here, else why not (run in a child process)."""
    try:
        enter_namespaces()
        install_secrets({"probe": b"ok"})
        with open(os.path.join(SECRETS_PATH, "probe"), "rb") as f:
            if f.read() != b"ok":
                return "the secrets tmpfs did not hold what was written"
        set_hostname("veba-probe")
        add_hosts(["127.0.0.1\tveba-probe.invalid"])
    except (IsolationError, OSError) as exc:
        return str(exc)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--probe", action="store_true", help="check that isolation works")
    parser.add_argument("--fd", type=int, help="the worker socket; secrets arrive on it")
    parser.add_argument("--hostname")
    parser.add_argument("--hosts-entry", action="append", default=[])
    parser.add_argument("--hide", help="a folder to hide but for the --keep paths in it")
    parser.add_argument("--keep", action="append", default=[])
    parser.add_argument("--user", help="UID:GID to run the command as (veba as root)")
    parser.add_argument("--reach", action="append", default=[], help="paths --user must reach")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.probe:
        why = probe()
        if why:
            sys.stdout.write(why + "\n")
            return 3
        return 0
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    # The appliance runs with umask 077; what is made here (mount points, the
    # function's own files later) is made as in a container: 022.
    os.umask(0o022)
    sock = None if args.fd is None else socket.socket(fileno=args.fd)
    try:
        if not command:
            raise IsolationError("no command to run")
        files = read_setup(sock) if sock is not None else {}
        enter_namespaces()
        install_secrets(files)
        if args.hide:
            hide_except(args.hide, args.keep)
        if args.hostname:
            set_hostname(args.hostname)
        if args.hosts_entry:
            add_hosts(args.hosts_entry)
        if args.user:
            uid, _, gid = args.user.partition(":")
            make_reachable([command[0], *args.keep, *args.reach], int(uid), int(gid or uid))
            become(int(uid), int(gid or uid))
    except (IsolationError, OSError, ValueError) as exc:
        _send_error(sock, str(exc))
        return 3
    if sock is not None:
        sock.detach()  # the fd stays open, inherited by the command
    try:
        os.execv(command[0], command)
    except OSError as exc:
        again = socket.socket(fileno=args.fd) if args.fd is not None else None
        _send_error(again, f"cannot run {command[0]}: {exc.strerror}")
        return 3
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
