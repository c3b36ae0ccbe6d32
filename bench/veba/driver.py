"""Drive the veba appliance: serve, deploy the no-op function, POST CloudEvents.

Everything this driver assumes about the appliance is in the constants below, so
a change of contract is a change here.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
from bench.common import BENCH_DIR, REPO_ROOT, Event, env_with
from bench.driver import Driver
from bench.procs import Managed

# --- the appliance's contract, as this bench uses it -----------------------------

VEBA_BIN = Path(sys.executable).parent / "veba"
HOST = "127.0.0.1"


def serve_cmd(data_dir: Path, port: int) -> list[str]:
    return [
        str(VEBA_BIN), "serve", "--data-dir", str(data_dir),
        "--listen", f"{HOST}:{port}", "--simulator-rate", "0",
    ]  # fmt: skip


def up_cmd(stack: Path, gateway: str) -> list[str]:
    return [str(VEBA_BIN), "up", "-f", str(stack), "--gateway", gateway]


UP_ENV_DATA_DIR = "VEBA_DATA_DIR"  # `veba up` finds the token through it
STACK = BENCH_DIR / "veba" / "stack.yml"  # ${BENCH_OUT} and ${BENCH_ROOT} substituted by up
FUNCTION = "noop"
TOKEN_FILE = "token"  # <data dir>/token, written by serve
HEALTH = "/healthz"  # 200 once serving; no token
WEBHOOK = "/webhook"  # bearer token; 200 means durable
STATUS = f"/api/v1/functions/{FUNCTION}"  # bearer token; JSON with int "delivered"
DELIVERED = "delivered"
STRUCTURED = "application/cloudevents+json"  # one event per request
BATCH = "application/cloudevents-batch+json"  # a JSON array of structured events

START_TIMEOUT = 60.0
UP_TIMEOUT = 600.0  # includes building the function's venv


class VebaNotReady(RuntimeError):
    """The appliance does not (yet) do what this driver expects."""


def _contract() -> str:
    return (
        "The bench expects:\n"
        f"  {' '.join(serve_cmd(Path('DIR'), 0)).replace(':0', ':PORT')}\n"
        f"    -> GET {HEALTH} 200, then DIR/{TOKEN_FILE} holds the API token\n"
        f"  {UP_ENV_DATA_DIR}=DIR {' '.join(up_cmd(Path('bench/veba/stack.yml'), 'URL'))}\n"
        f"    -> exit 0; function {FUNCTION!r} (veba-cloudevent, topic '*', 2 warm workers)\n"
        f"  POST {WEBHOOK} ({STRUCTURED} or {BATCH}, Authorization: Bearer <token>)"
        " -> 200 once durable\n"
        f"  GET {STATUS} (Authorization: Bearer <token>) -> JSON with int {DELIVERED!r}"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class VebaDriver(Driver):
    name = "veba"
    serve_args: tuple[str, ...] = ()  # more `veba serve` options, for benches that need them

    def __init__(self) -> None:
        super().__init__()
        self.data_dir = self.work_dir / "data"
        self.serve: Managed | None = None
        self.client: httpx.Client | None = None
        self.headers: dict[str, str] = {}
        self.sent = 0  # events accepted with 200, for the delivered cross-check
        self._sent_lock = threading.Lock()  # throughput posts from several threads
        self._status_ok: bool | None = None

    # --- start / stop ---

    def _launch(self) -> None:
        self._preflight()
        port = _free_port()
        base = f"http://{HOST}:{port}"
        self.serve = Managed(
            "veba serve",
            [*serve_cmd(self.data_dir, port), *self.serve_args],
            env=env_with(),
            log=self.work_dir / "serve.log",
            cwd=REPO_ROOT,
        )
        # trust_env=False: no proxy settings may send loopback traffic elsewhere.
        self.client = httpx.Client(
            base_url=base,
            timeout=30.0,
            trust_env=False,
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=16),
        )
        self._wait_healthy()
        token = self._wait_token()
        self.headers = {"Authorization": f"Bearer {token}"}
        up = Managed(
            "veba up",
            up_cmd(STACK, base),
            env=env_with(
                **{UP_ENV_DATA_DIR: str(self.data_dir)},
                BENCH_OUT=str(self.out_dir),
                BENCH_ROOT=str(REPO_ROOT),
            ),
            log=self.work_dir / "up.log",
            cwd=REPO_ROOT,
        )
        if up.run_to_end(UP_TIMEOUT) != 0:
            raise VebaNotReady(f"`veba up` failed; log tail:\n{up.log_tail()}\n\n{_contract()}")

    def _preflight(self) -> None:
        if not VEBA_BIN.exists():
            raise VebaNotReady(f"{VEBA_BIN} does not exist.\n\n{_contract()}")
        try:
            probe = Managed(
                "veba serve --help",
                [str(VEBA_BIN), "serve", "--help"],
                env=env_with(),
                log=self.work_dir / "preflight.log",
                cwd=REPO_ROOT,
            )
            code = probe.run_to_end(60)
        except TimeoutError as exc:
            raise VebaNotReady(f"`veba serve --help` hangs: {exc}\n\n{_contract()}") from None
        if code != 0:
            raise VebaNotReady(
                f"`veba serve --help` exited {code}:\n{probe.log_tail(15)}\n\n{_contract()}"
            )

    def _wait_healthy(self) -> None:
        assert self.client is not None and self.serve is not None
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                self.serve.check_alive()
            except RuntimeError as exc:
                raise VebaNotReady(f"{exc}\n\n{_contract()}") from None
            try:
                if self.client.get(HEALTH, timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise VebaNotReady(
                    f"GET {HEALTH} not 200 within {START_TIMEOUT:.0f} s; log tail:\n"
                    f"{self.serve.log_tail()}\n\n{_contract()}"
                )
            time.sleep(0.1)

    def _wait_token(self) -> str:
        path = self.data_dir / TOKEN_FILE
        deadline = time.monotonic() + 10
        while not path.is_file() or not path.read_text().strip():
            if time.monotonic() > deadline:
                raise VebaNotReady(f"no token in {path} after /healthz was 200\n\n{_contract()}")
            time.sleep(0.05)
        return path.read_text().strip()

    def _shutdown(self) -> None:
        try:
            if self.client is not None:
                self.client.close()
        finally:
            if self.serve is not None:
                self.serve.stop()

    def _alive(self) -> None:
        assert self.serve is not None
        self.serve.check_alive()

    # --- sending ---

    def _post(self, content: bytes, content_type: str, count: int) -> None:
        assert self.client is not None
        response = self.client.post(
            WEBHOOK, content=content, headers={**self.headers, "Content-Type": content_type}
        )
        if response.status_code != 200:
            raise RuntimeError(
                f"POST {WEBHOOK} ({content_type}, {count} events) -> "
                f"{response.status_code}: {response.text[:300]}"
            )
        with self._sent_lock:
            self.sent += count

    def _send_chunk(self, events: Sequence[Event]) -> None:
        body = json.dumps([e.obj for e in events], separators=(",", ":")).encode()
        self._post(body, BATCH, len(events))

    def _submit_one(self, event: Event) -> None:
        body = json.dumps(event.obj, separators=(",", ":")).encode()
        self._post(body, STRUCTURED, 1)

    # --- acknowledgements ---

    def _confirm_acked(self, timeout: float) -> None:
        """Cross-check the handler's records with the appliance's own delivered count."""
        assert self.client is not None and self.serve is not None
        self.serve.note_descendants()
        if self._status_ok is False:
            return
        deadline = time.monotonic() + timeout
        while True:
            response = self.client.get(STATUS, headers=self.headers)
            delivered = None
            if response.status_code == 200:
                body = response.json()
                if isinstance(body, dict) and isinstance(body.get(DELIVERED), int):
                    delivered = body[DELIVERED]
            if delivered is None:
                self._status_ok = False
                self.notes.append(
                    f"GET {STATUS} gave {response.status_code} without an integer "
                    f"{DELIVERED!r}: acks were not cross-checked, handler records only"
                )
                return
            self._status_ok = True
            if delivered >= self.sent:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"veba: delivered {delivered} of {self.sent} after {timeout} s")
            time.sleep(0.05)
