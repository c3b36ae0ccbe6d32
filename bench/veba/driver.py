"""Drive the veba appliance: serve, deploy the no-op function, POST CloudEvents.

Everything this driver assumes about the appliance is in the constants below, so
a change of contract is a change here.
"""

from __future__ import annotations

import http.client
import itertools
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from bench.common import BENCH_DIR, REPO_ROOT, Event, StartLog, bulk_send, env_with, no_gc
from bench.driver import PER_EVENT_THREADS, TASK_EVENTS, Driver, SendMode
from bench.procs import Managed, rss_by_env

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
STATUS = "/api/v1/functions/{name}"  # bearer token; JSON with int "delivered"
DELIVERED = "delivered"
FUNCTION_ENV = "VEBA_FUNCTION_NAME"  # in the environment of each of a function's workers
NOOP_DIR = BENCH_DIR / "veba" / "noop"
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
        f"  GET {STATUS.format(name=FUNCTION)} (Authorization: Bearer <token>)"
        f" -> JSON with int {DELIVERED!r}\n"
        f"  each function's worker processes: descendants of serve with {FUNCTION_ENV}=<name>"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


LIGHT = SendMode(
    "light", "veba, 1 event/POST, `http.client`", 1, PER_EVENT_THREADS,
    "one structured-mode `POST /webhook` per event on a keep-alive "
    "`http.client.HTTPConnection` of each sender thread, reused for all its events",
)  # fmt: skip
HTTPX = SendMode(
    "httpx", "veba, 1 event/POST, httpx", 1, PER_EVENT_THREADS,
    "one structured-mode `POST /webhook` per event through one shared keep-alive "
    "`httpx.Client` (a pool of up to 16 connections)",
)  # fmt: skip
BATCH_MODE = SendMode(
    "batch", "veba, **batch** of 100/POST, httpx", 100, 4,
    "one `POST /webhook` of an `application/cloudevents-batch+json` array of 100 events "
    "through the shared keep-alive `httpx.Client`",
)  # fmt: skip


EVENT_LOG_OPTION = "--event-log"  # nats://HOST:PORT/NAME: nodes with one NAME are one appliance
STARTS_PID = re.compile(r"starts-veba-(\d+)\.txt")  # bench.recorder's file of one process


@dataclass(slots=True)
class Node:
    """One `veba serve` of the appliance, with the bench's client to it."""

    data_dir: Path
    serve: Managed
    client: httpx.Client
    port: int
    headers: dict[str, str] = field(default_factory=dict)


class VebaDriver(Driver):
    """One appliance: one `veba serve`, or with ``event_log`` (a NATS location)
    ``nodes`` of them sharing it. The function is deployed through the first node
    before the others start; senders spread their batches over the nodes round-robin."""

    name = "veba"
    default_mode = BATCH_MODE
    serve_args: tuple[str, ...] = ()  # more `veba serve` options, for benches that need them

    def __init__(self, *, event_log: str | None = None, nodes: int = 1) -> None:
        super().__init__()
        if nodes < 1 or (nodes > 1 and event_log is None):
            raise ValueError("several nodes need a shared --event-log")
        self.event_log = event_log
        self.node_count = nodes
        self.nodes: list[Node] = []
        self._turn = itertools.count()  # round-robin over the nodes
        self.data_dir = self.work_dir / "data"
        self.serve: Managed | None = None  # the first node's, as single-node benches use it
        self.client: httpx.Client | None = None
        self.port = 0
        self.headers: dict[str, str] = {}
        self.functions = [FUNCTION]  # every one subscribed to every event (topic "*")
        self.sent = 0  # events accepted with 200, for the delivered cross-check
        self._sent_lock = threading.Lock()  # throughput posts from several threads
        self._status_ok: bool | None = None
        self._connections: list[http.client.HTTPConnection] = []  # the light senders'

    def send_modes(self) -> list[SendMode]:
        return [LIGHT, HTTPX, BATCH_MODE]

    def _stack(self) -> Path:
        """The stack file `veba up` deploys."""
        return STACK

    # --- start / stop ---

    def _launch(self) -> None:
        self._preflight()
        first = self._start_node()
        self.serve, self.client, self.port = first.serve, first.client, first.port
        self.headers = first.headers
        base = f"http://{HOST}:{first.port}"
        up = Managed(
            "veba up",
            up_cmd(self._stack(), base),
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
        for _ in range(1, self.node_count):
            self._wait_deployed(self._start_node())

    def _start_node(self) -> Node:
        index = len(self.nodes)
        data_dir = self.data_dir if index == 0 else self.work_dir / f"data{index}"
        port = _free_port()
        extra = [EVENT_LOG_OPTION, self.event_log] if self.event_log else []
        serve = Managed(
            "veba serve" if index == 0 else f"veba serve (node {index + 1})",
            [*serve_cmd(data_dir, port), *extra, *self.serve_args],
            env=env_with(),
            log=self.work_dir / ("serve.log" if index == 0 else f"serve{index}.log"),
            cwd=REPO_ROOT,
        )
        # trust_env=False: no proxy settings may send loopback traffic elsewhere.
        client = httpx.Client(
            base_url=f"http://{HOST}:{port}",
            timeout=30.0,
            trust_env=False,
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=16),
        )
        node = Node(data_dir, serve, client, port)
        self.nodes.append(node)
        self._wait_healthy(node)
        node.headers = {"Authorization": f"Bearer {self._wait_token(data_dir)}"}
        return node

    def _wait_deployed(self, node: Node) -> None:
        """Until a later node knows the functions the first one deployed (it reads
        them from NATS as it starts); the warm-up, sent to every node, then waits
        until every event has reached a worker."""
        deadline = time.monotonic() + UP_TIMEOUT
        for name in self.functions:
            while (
                node.client.get(STATUS.format(name=name), headers=node.headers).status_code != 200
            ):
                node.serve.check_alive()
                if time.monotonic() > deadline:
                    raise VebaNotReady(f"node {node.serve.name}: no function {name!r}")
                time.sleep(0.1)

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

    def _wait_healthy(self, node: Node) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                node.serve.check_alive()
            except RuntimeError as exc:
                raise VebaNotReady(f"{exc}\n\n{_contract()}") from None
            try:
                if node.client.get(HEALTH, timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise VebaNotReady(
                    f"GET {HEALTH} not 200 within {START_TIMEOUT:.0f} s; log tail:\n"
                    f"{node.serve.log_tail()}\n\n{_contract()}"
                )
            time.sleep(0.1)

    def _wait_token(self, data_dir: Path) -> str:
        path = data_dir / TOKEN_FILE
        deadline = time.monotonic() + 10
        while not path.is_file() or not path.read_text().strip():
            if time.monotonic() > deadline:
                raise VebaNotReady(f"no token in {path} after /healthz was 200\n\n{_contract()}")
            time.sleep(0.05)
        return path.read_text().strip()

    def _shutdown(self) -> None:
        for node in self.nodes:
            node.client.close()
        for node in reversed(self.nodes):
            node.serve.stop()

    def _alive(self) -> None:
        for node in self.nodes:
            node.serve.check_alive()

    def _next_node(self) -> Node:
        return self.nodes[next(self._turn) % len(self.nodes)]  # count() is atomic in CPython

    # --- which node did the work ---

    def deliveries_by_node(self) -> list[int]:
        """Handler starts recorded by each node's workers so far (a worker is a
        descendant of its node's `veba serve`; the recorder names its file by pid)."""
        for node in self.nodes:
            node.serve.note_descendants()
        counts = [0] * len(self.nodes)
        for path in self.out_dir.glob("starts-*.txt"):
            match = STARTS_PID.fullmatch(path.name)
            owner = next(
                (i for i, n in enumerate(self.nodes) if match and n.serve.owns(int(match[1]))),
                None,
            )
            if owner is None:
                raise VebaNotReady(f"{path.name}: written by no node's worker")
            with path.open("rb") as f:
                counts[owner] += sum(1 for _ in f)
        return counts

    # --- sending ---

    def _post(self, content: bytes, content_type: str, count: int) -> None:
        node = self._next_node()
        headers = {**node.headers, "Content-Type": content_type}
        response = node.client.post(WEBHOOK, content=content, headers=headers)
        if response.status_code != 200:
            raise RuntimeError(
                f"POST {WEBHOOK} ({content_type}, {count} events) -> "
                f"{response.status_code}: {response.text[:300]}"
            )
        with self._sent_lock:
            self.sent += count

    def _sender(self, mode: SendMode) -> Callable[[Sequence[Event]], None]:
        if mode.key == LIGHT.key:
            return self._light_sender()
        per_request = mode.per_request

        def send(events: Sequence[Event]) -> None:
            for i in range(0, len(events), per_request):
                part = events[i : i + per_request]
                if per_request == 1:
                    self._submit_one(part[0])
                else:
                    body = json.dumps([e.obj for e in part], separators=(",", ":")).encode()
                    self._post(body, BATCH, len(part))

        return send

    def _light_sender(self) -> Callable[[Sequence[Event]], None]:
        """One event per POST on a plain keep-alive connection of each sender thread.

        With several nodes a thread's chunk of events goes to the next node, on a
        new connection: one kept open to each would idle past the server's
        keep-alive timeout while the thread sends elsewhere (a broken pipe).
        """
        local = threading.local()

        def send(events: Sequence[Event]) -> None:
            node = self._next_node()
            conn: http.client.HTTPConnection | None = getattr(local, "conn", None)
            if conn is not None and conn.port != node.port:
                conn.close()
                conn = None
            if conn is None:
                conn = local.conn = http.client.HTTPConnection(HOST, node.port, timeout=30)
                with self._sent_lock:
                    self._connections.append(conn)
            headers = {**node.headers, "Content-Type": STRUCTURED}
            for event in events:
                body = json.dumps(event.obj, separators=(",", ":")).encode()
                conn.request("POST", WEBHOOK, body, headers)
                response = conn.getresponse()
                text = response.read()
                if response.status != 200:
                    raise RuntimeError(
                        f"POST {WEBHOOK} ({STRUCTURED}, 1 event) -> "
                        f"{response.status}: {text[:300]!r}"
                    )
            with self._sent_lock:
                self.sent += len(events)

        return send

    def _senders_done(self) -> None:
        with self._sent_lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()

    def _submit_one(self, event: Event) -> None:
        body = json.dumps(event.obj, separators=(",", ":")).encode()
        self._post(body, STRUCTURED, 1)

    # --- acknowledgements ---

    def _confirm_acked(self, timeout: float) -> None:
        """Cross-check the handler's records with the appliance's own delivered count:
        every function is subscribed to every event, so each must have delivered all sent."""
        assert self.client is not None
        for node in self.nodes:
            node.serve.note_descendants()
        deadline = time.monotonic() + timeout
        for name in self.functions:
            if self._status_ok is False:
                return
            status = STATUS.format(name=name)
            retries = 0
            while True:
                response = self.client.get(status, headers=self.headers)
                delivered = None
                if response.status_code == 200:
                    body = response.json()
                    if isinstance(body, dict) and isinstance(body.get(DELIVERED), int):
                        delivered = body[DELIVERED]
                # A NATS node's counts scan the whole log and can time out (5 s) under
                # a backlog: ask twice more before giving up on the cross-check.
                if delivered is None and response.status_code >= 500 and retries < 2:
                    retries += 1
                    time.sleep(0.5)
                    continue
                if delivered is None:
                    self._status_ok = False
                    self.notes.append(
                        f"GET {status} gave {response.status_code} without an integer "
                        f"{DELIVERED!r}: acks were not cross-checked, handler records only"
                    )
                    return
                self._status_ok = True
                if delivered >= self.sent:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"veba: {name} delivered {delivered} of {self.sent} after {timeout} s"
                    )
                time.sleep(0.05)

    # --- memory ---

    def worker_rss_mb(self) -> dict[str, list[float]]:
        """RSS (MB) of each worker process of each function, found below `veba serve`."""
        assert self.serve is not None
        found = rss_by_env(self.serve.pid, FUNCTION_ENV)
        missing = [name for name in self.functions if name not in found]
        if missing:
            raise VebaNotReady(
                f"no worker process with {FUNCTION_ENV}={missing[0]} below veba serve "
                f"(pid {self.serve.pid}); functions: {sorted(found)}\n\n{_contract()}"
            )
        return {name: [kib / 1024 for kib in found[name]] for name in self.functions}


@dataclass(frozen=True, slots=True)
class FanoutRun:
    functions: int
    events: int
    deliveries: int  # events x functions
    seconds: float  # first send -> last handler start of any function
    deliveries_per_s: float
    send_seconds: float
    duplicates: int


class FanoutDriver(VebaDriver):
    """One appliance, ``functions`` no-op functions each subscribed to every event."""

    def __init__(self, functions: int) -> None:
        self.name = f"veba-fanout-{functions}"  # before Driver.__init__ names the work dir
        super().__init__()
        self.functions = [f"fn{i:02d}" for i in range(1, functions + 1)]
        self.logs: dict[str, StartLog] = {}
        for name in self.functions:
            folder = self.out_dir / name
            folder.mkdir()
            folder.chmod(0o777)  # written by the function's own user under a root appliance
            self.logs[name] = StartLog(folder)

    def send_modes(self) -> list[SendMode]:
        return [BATCH_MODE]

    def _stack(self) -> Path:
        lines = [
            "# Written by bench.veba.driver.FanoutDriver for one fan-out measurement.",
            "version: 1.0",
            "provider:",
            "  name: openfaas",
            "  gateway: http://127.0.0.1:8080",
            "functions:",
        ]
        for name in self.functions:
            lines += [
                f"  {name}:",
                "    lang: veba-cloudevent",
                f"    handler: {json.dumps(str(NOOP_DIR))}",
                "    annotations:",
                '      topic: "*"',
                "    labels:",
                '      com.openfaas.scale.min: "1"',
                "    delivery:",
                "      maxInflight: 64",
                "    environment:",
                f"      BENCH_OUT: {json.dumps(str(self.out_dir / name))}",
                f"      BENCH_ROOT: {json.dumps(str(REPO_ROOT))}",
            ]
        path = self.work_dir / "stack.yml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _wait_all(self, ids: list[str], timeout: float) -> tuple[float, int]:
        """Wait until every function started every id; (last start, duplicates so far)."""
        last = 0.0
        for log in self.logs.values():
            found = log.wait_for(ids, timeout=timeout, alive=self._alive)
            last = max(last, max(found.values()))
        return last, sum(log.duplicates for log in self.logs.values())

    def _wait_started(self, ids: list[str], timeout: float) -> None:
        self._wait_all(ids, timeout=timeout)  # every function's start log

    def fanout(self, n: int) -> FanoutRun:
        """n events in batches of 100 from 4 threads; every function must start each."""
        events = self._events(n)
        dupes_before = sum(log.duplicates for log in self.logs.values())
        send = self._sender(self.default_mode)
        try:
            with no_gc():
                t0 = bulk_send(events, send, chunk=TASK_EVENTS, threads=self.default_mode.threads)
                sent = time.time()
        finally:
            self._senders_done()
        deliveries = n * len(self.functions)
        last, dupes = self._wait_all([e.id for e in events], timeout=max(120.0, deliveries / 50))
        self._confirm_acked(timeout=60)
        return FanoutRun(
            functions=len(self.functions),
            events=n,
            deliveries=deliveries,
            seconds=last - t0,
            deliveries_per_s=deliveries / (last - t0),
            send_seconds=sent - t0,
            duplicates=dupes - dupes_before,
        )
