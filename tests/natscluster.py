"""A 3-node NATS JetStream cluster of Debian's nats-server, as a test fixture.

Each server has its own free loopback ports (client, cluster route, monitoring),
its own store directory and config file under the test's temporary folder. The
cluster is ready when every running server reports healthy and JetStream has a
meta leader. A server can be stopped (gracefully or killed) and started again
on the same ports and store; at teardown every process is stopped and the
folders removed, whether the test passed or not.

    from tests.natscluster import nats_cluster_fixture  # noqa: F401

    async def test_something(nats_cluster: NatsCluster) -> None:
        nc = await nats.connect(nats_cluster.urls)
        nats_cluster.stop(1)                              # server 1 down
        await asyncio.to_thread(nats_cluster.start, 1)    # back, caught up
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support import free_port

NATS_SERVER = os.environ.get("VEBA_TEST_NATS_SERVER", "/usr/sbin/nats-server")
READY_TIMEOUT = 60.0  # generous: two CPUs shared with the rest of the suite


@dataclass
class NatsNode:
    """One server of the cluster: what stays the same across restarts."""

    name: str
    port: int  # clients
    cluster_port: int  # routes between the servers
    http_port: int  # monitoring: /healthz, /jsz
    folder: Path  # config, store, and the server's own log
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def log_path(self) -> Path:
        return self.folder / "server.log"

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"


class NatsCluster:
    """A JetStream cluster of `size` nats-server processes on loopback."""

    def __init__(self, size: int = 3, name: str = "veba-test") -> None:
        self.root = Path(tempfile.mkdtemp(prefix="natscluster-"))
        self.cluster_name = name
        self.nodes = [
            NatsNode(
                name=f"n{i}",
                port=free_port(),
                cluster_port=free_port(),
                http_port=free_port(),
                folder=self.root / f"n{i}",
            )
            for i in range(size)
        ]
        for node in self.nodes:
            node.folder.mkdir()
            (node.folder / "server.conf").write_text(self._config(node))

    @property
    def urls(self) -> list[str]:
        """Every server's client URL (a client given them all fails over)."""
        return [node.url for node in self.nodes]

    def _config(self, node: NatsNode) -> str:
        routes = ", ".join(f"nats-route://127.0.0.1:{n.cluster_port}" for n in self.nodes)
        # Limits far below the defaults (a quarter of memory and of the disk), so
        # three servers fit beside the rest of a test run.
        return f"""\
server_name: {node.name}
listen: 127.0.0.1:{node.port}
http: 127.0.0.1:{node.http_port}
jetstream {{
  store_dir: "{node.folder / "store"}"
  max_memory_store: 64MB
  max_file_store: 512MB
}}
cluster {{
  name: {self.cluster_name}
  listen: 127.0.0.1:{node.cluster_port}
  routes: [{routes}]
}}
"""

    # -- processes ------------------------------------------------------------

    def start(self, index: int | None = None, *, timeout: float = READY_TIMEOUT) -> None:
        """Start server `index` (all if None) and wait until the cluster is ready."""
        for node in self.nodes if index is None else [self.nodes[index]]:
            if node.running:
                continue
            log = node.log_path.open("ab")
            try:
                node.process = subprocess.Popen(
                    [NATS_SERVER, "-c", str(node.folder / "server.conf")],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            finally:
                log.close()
        self.wait_ready(timeout)

    def stop(self, index: int, *, kill: bool = False, timeout: float = 30.0) -> None:
        """Stop server `index`: SIGTERM (it shuts down cleanly) or, `kill`, SIGKILL."""
        node = self.nodes[index]
        process = node.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        node.process = None

    def close(self) -> None:
        """Every server stopped (killed if it does not stop), the folders removed."""
        try:
            for index in range(len(self.nodes)):
                with contextlib.suppress(Exception):
                    self.stop(index, timeout=10.0)
        finally:
            for node in self.nodes:  # whatever stop() could not end
                if node.process is not None and node.process.poll() is None:
                    node.process.kill()
                    node.process.wait()
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> NatsCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- readiness ------------------------------------------------------------

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until every running server is healthy (JetStream caught up) and they
        agree on a meta leader; a server that exited fails at once, with its log."""
        deadline = time.monotonic() + timeout
        delay = 0.05
        problem = "not asked yet"
        with httpx.Client(timeout=2.0) as http:
            while True:
                for node in self.nodes:
                    if node.process is not None and node.process.poll() is not None:
                        raise RuntimeError(
                            f"nats-server {node.name} exited with {node.process.returncode}:\n"
                            + node.log_tail()
                        )
                problem = self._not_ready(http) or ""
                if not problem:
                    return
                if time.monotonic() > deadline:
                    tails = "\n".join(f"--- {n.name}\n{n.log_tail()}" for n in self.nodes)
                    raise TimeoutError(
                        f"NATS cluster not ready after {timeout:g} s: {problem}\n{tails}"
                    )
                time.sleep(delay)
                delay = min(delay * 1.5, 0.5)

    def _not_ready(self, http: httpx.Client) -> str | None:
        """Why the cluster is not ready yet, or None when it is."""
        leaders = set()
        running = [node for node in self.nodes if node.running]
        if not running:
            return "no server running"
        for node in running:
            base = f"http://127.0.0.1:{node.http_port}"
            try:
                health = http.get(f"{base}/healthz")
                if health.status_code != 200:
                    return f"{node.name} /healthz: {health.text.strip()}"
                meta = http.get(f"{base}/jsz").json().get("meta_cluster") or {}
            except httpx.HTTPError as exc:
                return f"{node.name}: {exc!r}"
            if not meta.get("leader"):
                return f"{node.name}: no JetStream meta leader yet"
            leaders.add(meta["leader"])
        if len(leaders) != 1:
            return f"servers disagree on the meta leader: {sorted(leaders)}"
        return None

    def meta_leader(self) -> str:
        """The name of the server that leads JetStream's meta group now."""
        for node in self.nodes:
            if node.running:
                jsz = httpx.get(f"http://127.0.0.1:{node.http_port}/jsz", timeout=2.0).json()
                return str(jsz["meta_cluster"]["leader"])
        raise RuntimeError("no server running")

    def index_of(self, server_name: str) -> int:
        return next(i for i, node in enumerate(self.nodes) if node.name == server_name)


# Test modules import this (under its own name) to use the fixture `nats_cluster`.
@pytest.fixture(name="nats_cluster")
def nats_cluster_fixture() -> Iterator[NatsCluster]:
    """A started 3-node cluster; stopped and removed after the test, pass or fail."""
    with NatsCluster() as cluster:
        yield cluster


@pytest.fixture(name="cluster", scope="module")
def module_cluster_fixture() -> Iterator[NatsCluster]:
    """One 3-server cluster shared by a module's tests (conformance suites run
    on it, each test under its own names); stopped and removed after them."""
    with NatsCluster() as cluster:
        yield cluster
