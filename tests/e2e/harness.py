"""Run `veba serve` and the `veba` CLI as real processes, the way a user does."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.support import free_port, wait_for

VEBA = str(Path(sys.executable).with_name("veba"))
T = TypeVar("T")


class ApplianceProcess:
    """`veba serve` in its own process group, on a free port, with its own data dir."""

    def __init__(self, data_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.env = env  # the whole environment of `veba serve`; None: this process's
        self.port = free_port()
        # With --tls-cert it serves HTTPS; the harness's own calls skip the check.
        self.tls = "--tls-cert" in args
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"serve-{self.port}.log"

    def start(self) -> ApplianceProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                VEBA,
                "serve",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--data-dir",
                str(self.data_dir),
                *self.args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=self.env,
        )
        wait_for(self._healthy, 60, f"veba serve on {self.url} (log: {self.log_path})")
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"veba serve exited: {self.log_path.read_text()[-3000:]}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1, verify=False).status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def token(self) -> str:
        return (self.data_dir / "token").read_text().strip()

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=60,
            verify=not self.tls,
        )

    def kill(self) -> None:
        """SIGKILL the appliance, as a crash or power loss would."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self._reap_group()
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._reap_group()

    def _reap_group(self) -> None:
        # Workers die with the appliance; make sure nothing of the group is left.
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def cli_environment(self, env: dict[str, str | None] | None = None) -> dict[str, str]:
        """What `cli` runs `veba` with (for a test that starts it itself)."""
        environment = {**os.environ, "VEBA_DATA_DIR": str(self.data_dir), "VEBA_URL": self.url}
        environment.pop("VEBA_TOKEN", None)
        environment.pop("OPENFAAS_URL", None)
        # `veba login` saves there: the test's own folder, never the user's.
        environment["XDG_CONFIG_HOME"] = str(self.data_dir.parent / "config")
        for name, value in (env or {}).items():
            if value is None:
                environment.pop(name, None)
            else:
                environment[name] = value
        return environment

    def cli(
        self,
        *args: str,
        check: bool = True,
        cwd: Path | None = None,
        input: str | None = None,
        env: dict[str, str | None] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """`veba ARGS` with this appliance's data dir and URL; `env` changes the
        environment (None removes a variable)."""
        result = subprocess.run(
            [VEBA, *args],
            cwd=cwd,
            env=self.cli_environment(env),
            capture_output=True,
            text=True,
            timeout=600,
            input=input,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"veba {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result


def write_function(folder: Path, source: str, requirements: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "handler.py").write_text(source)
    (folder / "requirements.txt").write_text(requirements)
    return folder


def write_stack(path: Path, functions: dict[str, dict[str, Any]]) -> Path:
    import yaml

    path.write_text(
        yaml.safe_dump(
            {
                "version": 1.0,
                "provider": {"name": "openfaas", "gateway": "http://127.0.0.1:8080"},
                "functions": functions,
            }
        )
    )
    return path


def deploy_recorders(
    app: ApplianceProcess,
    folder: Path,
    names: Iterable[str],
    *,
    topics: Mapping[str, str] | None = None,
    delivery: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Deploy a RECORDER function per name (its topic from `topics`, else
    VmPoweredOffEvent; two warm workers; `delivery` its delivery settings)
    through `app`; the file each records into, by name."""
    outs = {name: folder / f"{name}.jsonl" for name in names}
    functions = {}
    for name, out in outs.items():
        write_function(folder / "fn" / name, RECORDER)
        functions[name] = {
            "lang": "python3-http",
            "handler": f"./{name}",
            "annotations": {"topic": (topics or {}).get(name, "VmPoweredOffEvent")},
            "labels": {"com.openfaas.scale.min": "2"},
            "environment": {"OUT": str(out)},
            **({"delivery": dict(delivery)} if delivery else {}),
        }
    app.cli("up", "-f", str(write_stack(folder / "fn" / "stack.yml", functions)))
    return outs


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The lines written so far, each whole. A line a worker is writing as we
    read may show in part (a write to a file is not atomic to its readers; seen
    in CI, a 1.2 KB line cut short): one with no newline yet is left for later."""
    if not path.exists():
        return []
    text = path.read_text()
    whole = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in whole.splitlines() if line.strip()]


# A python3-http handler that appends every event it gets to $OUT, one JSON line
# each (O_APPEND writes of one line are atomic, so several workers can share it).
RECORDER = """
import json, os, time
from veba.sdk import attempt

def handle(event, context):
    ce = json.loads(event.body)
    line = json.dumps({"id": ce["id"], "subject": ce.get("subject"), "type": ce["type"],
                       "source": ce["source"], "data": ce.get("data"), "pid": os.getpid(),
                       "at": time.time(), "attempt": attempt()}) + "\\n"
    fd = os.open(os.environ["OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return {"statusCode": 200, "body": ce["id"]}
"""
