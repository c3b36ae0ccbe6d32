"""isolate.py: a function process's private view, as root and as an unprivileged user.

Run for real: a socketpair carries the secrets frame, the command is a shell that
reports what it sees, and the host's own view is checked untouched afterwards.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from veba.functions import isolate
from veba.functions._workerproc import ISOLATE_PATH, isolation_problem

REPORT = (
    "cat /var/openfaas/secrets/vc-user; echo; "
    "stat -c %a /var/openfaas/secrets/vc-password; "
    "ls -A /var/openfaas/secrets | tr '\\n' ' '; echo; "
    "ls -A /dev/shm | wc -l; "
    "hostname; "
    "getent hosts gateway.openfaas; "
    "(echo x > /var/openfaas/secrets/new) 2>/dev/null && echo writable || echo read-only; "
    "id -u"
)


def _run(
    tmp_path: Path,
    secrets: dict[str, bytes],
    command: list[str],
    *,
    as_user: int | None = None,
    python: str = sys.executable,
    script: Path = ISOLATE_PATH,
) -> tuple[subprocess.CompletedProcess[str], bytes]:
    parent, child = socket.socketpair()
    prefix = []
    if as_user is not None:
        prefix = ["setpriv", f"--reuid={as_user}", f"--regid={as_user}", "--clear-groups"]
    args = [
        *prefix,
        python,
        "-I",
        str(script),
        "--fd",
        str(child.fileno()),
        "--hostname",
        "pre-filter-5d8f7c9b4-x2k4p",
        "--hosts-entry",
        "127.77.7.7\tgateway.openfaas gateway",
        "--",
        *command,
    ]
    head = json.dumps({"secrets": {k: base64.b64encode(v).decode() for k, v in secrets.items()}})
    parent.sendall(len(head).to_bytes(4, "big") + head.encode() + (0).to_bytes(4, "big"))
    proc = subprocess.Popen(
        args,
        pass_fds=(child.fileno(),),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    child.close()
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    parent.settimeout(5)
    said = b""
    try:
        while chunk := parent.recv(65536):
            said += chunk
    except (TimeoutError, OSError):
        pass
    parent.close()
    return subprocess.CompletedProcess(args, proc.returncode, out, err), said


SECRETS = {"vc-user": b"administrator@vsphere.local", "vc-password": b'p\\a"ss', "vc-host": b"vc"}


def test_root_gets_a_private_secrets_tmpfs_hostname_and_hosts(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test runs as root (CI does); the next one covers other users")
    host_name = socket.gethostname()
    done, _ = _run(tmp_path, SECRETS, ["/bin/sh", "-c", REPORT])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "administrator@vsphere.local"
    assert lines[1] == "444"
    assert lines[2].split() == ["vc-host", "vc-password", "vc-user"]
    assert lines[3] == "0"  # nothing of the host's /dev/shm
    assert lines[4] == "pre-filter-5d8f7c9b4-x2k4p"
    assert lines[5].split() == ["127.77.7.7", "gateway.openfaas", "gateway"]
    assert lines[6] == "read-only"
    # The host is as it was.
    assert socket.gethostname() == host_name
    assert "gateway.openfaas" not in Path("/etc/hosts").read_text()
    assert not Path("/var/openfaas/secrets/vc-user").exists()


def test_an_unprivileged_user_gets_the_same_through_a_user_namespace(tmp_path: Path) -> None:
    """veba not running as root: isolate.py enters a user namespace mapping only that
    user. Run with Debian's python3 as `nobody` (the venv's python may sit in a
    folder that user cannot read)."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None or shutil.which("setpriv") is None:
        pytest.fail("needs /usr/bin/python3 and setpriv (util-linux)")
    # pytest's own folders are private to root: a readable copy in a folder of its own.
    shared = Path(tempfile.mkdtemp(prefix="veba-isolate-"))
    try:
        shared.chmod(0o755)
        script = shared / "isolate.py"
        shutil.copy(ISOLATE_PATH, script)
        script.chmod(0o644)
        done, _ = _run(
            shared, SECRETS, ["/bin/sh", "-c", REPORT], as_user=65534, python=python, script=script
        )
    finally:
        shutil.rmtree(shared)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "administrator@vsphere.local"
    assert lines[2].split() == ["vc-host", "vc-password", "vc-user"]
    assert lines[4] == "pre-filter-5d8f7c9b4-x2k4p"
    assert lines[6] == "read-only"
    assert lines[7] == "65534"  # still that user, not root in disguise


def test_a_failed_setup_is_reported_on_the_socket_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    done, said = _run(tmp_path, {"../escape": b"x"}, ["/bin/sh", "-c", f"touch {marker}"])
    assert done.returncode == 3
    assert b"load_error" in said and b"invalid secret file name '../escape'" in said
    assert "cannot isolate the function" in done.stderr
    assert not marker.exists()


def test_the_probe_says_isolation_works_here() -> None:
    assert isolation_problem() is None
    assert isolate.SECRETS_PATH == "/var/openfaas/secrets"


def test_root_hands_the_command_to_the_functions_own_user(tmp_path: Path) -> None:
    """As veba running as root does: the worker ends up an unprivileged user that
    cannot get root back, yet still reaches its interpreter in root's folders."""
    if os.geteuid() != 0:
        pytest.fail("this test runs as root (CI does)")
    parent, child = socket.socketpair()
    head = json.dumps({"secrets": {"token": base64.b64encode(b"t0k3n").decode()}}).encode()
    parent.sendall(len(head).to_bytes(4, "big") + head + (0).to_bytes(4, "big"))
    script = (
        "import os; print(os.getuid(), os.getgid(), os.getgroups());"
        "print(open('/var/openfaas/secrets/token').read());"
        "print([l for l in open('/proc/self/status') if l.startswith('NoNewPrivs')][0].split()[1])"
    )
    done = subprocess.run(
        [
            sys.executable, "-I", str(ISOLATE_PATH), "--fd", str(child.fileno()),
            "--hostname", "fn-abc-x2k4p", "--user", "1900000007:1900000007",
            "--", sys.executable, "-I", "-c", script,
        ],
        pass_fds=(child.fileno(),), capture_output=True, text=True, timeout=60, cwd="/",
    )  # fmt: skip
    child.close()
    parent.close()
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["1900000007 1900000007 []", "t0k3n", "1"]
