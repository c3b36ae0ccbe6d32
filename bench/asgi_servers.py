"""ASGI servers: the HTTP server's own cost per webhook request (veba issue 11).

    .venv/bin/python -m bench.asgi_servers [--quick]

Serves one minimal ASGI app of the webhook hot path's shape (POST /webhook with
a ~840-byte CloudEvent: read the whole body, ``orjson.loads`` it, answer 200
with a small JSON body and a content-length; anything else 404) under:

- uvicorn, httptools + uvloop, 1 process, access log off, with its default
  ``proxy_headers`` (on, what `veba serve` runs) and with ``proxy_headers=False``;
- Granian, ASGI, 1 worker, 1 runtime thread, HTTP/1, uvloop (only if granian is
  installed; it is not a veba dependency: ``pip install granian`` into the venv).

Each server is its own subprocess on a free loopback port. The client is the
same for all: 16 threads, each with a keep-alive ``http.client.HTTPConnection``
posting one event per request (a warm-up, then the timed requests), then one
connection paced at 500 requests/s for request latency. Per server it reports
requests/s, the server's CPU µs per request (utime+stime of the process, all its
threads and descendants, from /proc, over the timed span), the client's CPU µs
per request and the latency p50/p99 at 500/s: medians of the rounds, servers
interleaved (and rotated) within each round. On a small shared machine the
requests/s move with whatever else runs; CPU µs per request is the figure to
compare. Not run in CI; prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.metadata
import importlib.util
import os
import platform
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
from starlette.types import Receive, Scope, Send

from bench.common import REPO_ROOT, SAMPLE_EVENT, median, no_gc, pace, percentile
from bench.procs import Managed

# --- the app under every server ---------------------------------------------------

ACCEPTED = b'{"accepted":1,"duplicates":0}'
_OK_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(ACCEPTED)).encode()),
]
_NOT_FOUND_HEADERS = [(b"content-length", b"0")]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The webhook hot path's shape, without veba: what is left is the server's cost."""
    if scope["type"] == "lifespan":  # Granian's ASGI interface runs lifespan; say yes
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["method"] != "POST" or scope["path"] != "/webhook":
        await send({"type": "http.response.start", "status": 404, "headers": _NOT_FOUND_HEADERS})
        await send({"type": "http.response.body", "body": b""})
        return
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    orjson.loads(b"".join(chunks))
    await send({"type": "http.response.start", "status": 200, "headers": _OK_HEADERS})
    await send({"type": "http.response.body", "body": ACCEPTED})


APP_TARGET = "bench.asgi_servers:app"


# --- the servers ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerSetup:
    name: str
    args: tuple[str, ...]  # after `python -m`; {port} is filled in

    def command(self, port: int) -> list[str]:
        return [sys.executable, "-m", *(a.format(port=port) for a in self.args)]


UVICORN = ("uvicorn", APP_TARGET, "--host", "127.0.0.1", "--port", "{port}",
           "--http", "httptools", "--loop", "uvloop", "--no-access-log",
           "--log-level", "warning")  # fmt: skip
GRANIAN = ("granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", "{port}",
           "--workers", "1", "--runtime-threads", "1", "--http", "1", "--loop", "uvloop",
           "--log-level", "warning", APP_TARGET)  # fmt: skip


def server_setups() -> list[ServerSetup]:
    setups = [
        ServerSetup("uvicorn httptools+uvloop, proxy_headers default (on)", UVICORN),
        ServerSetup(
            "uvicorn httptools+uvloop, proxy_headers=False", (*UVICORN, "--no-proxy-headers")
        ),
    ]
    if importlib.util.find_spec("granian") is None:
        print(
            "granian is not installed: measuring uvicorn only (pip install granian)",
            file=sys.stderr,
        )
    else:
        setups.append(ServerSetup("granian ASGI, 1 worker, 1 runtime thread, uvloop", GRANIAN))
    return setups


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- CPU time from /proc -------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int | str) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2 :].split()  # [0] state, [1] ppid, [11:15] times


def tree_cpu_seconds(root: int) -> float:
    """utime+stime of root and every descendant (all threads), plus reaped children's.

    Counting the reaped children's times (cutime, cstime) keeps a delta right when
    a worker process ends within the span.
    """
    parents: dict[int, int] = {}
    fields_of: dict[int, list[bytes]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (fields := _stat(entry.name)) is not None:
            parents[int(entry.name)] = int(fields[1])
            fields_of[int(entry.name)] = fields
    tree = {root}
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - tree
        tree |= frontier
    ticks = sum(sum(int(x) for x in fields_of[pid][11:15]) for pid in tree if pid in fields_of)
    return ticks / _TICK


@dataclass(frozen=True, slots=True)
class Mark:
    wall: float
    client_cpu: float
    server_cpu: float

    @classmethod
    def now(cls, server_pid: int) -> Mark:
        return cls(time.perf_counter(), time.process_time(), tree_cpu_seconds(server_pid))


# --- the client ---------------------------------------------------------------------


def event_body() -> bytes:
    return orjson.dumps(orjson.loads(SAMPLE_EVENT.read_bytes()))


HEADERS = {"Content-Type": "application/cloudevents+json"}


def post(conn: http.client.HTTPConnection, body: bytes) -> None:
    conn.request("POST", "/webhook", body, HEADERS)
    response = conn.getresponse()
    data = response.read()
    if response.status != 200 or data != ACCEPTED:
        raise RuntimeError(f"unexpected answer {response.status} {data[:80]!r}")


def wait_ready(server: Managed, port: int, body: bytes, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        server.check_alive()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            post(conn, body)
            conn.request("GET", "/elsewhere")
            response = conn.getresponse()
            response.read()
            if response.status != 404:
                raise RuntimeError(f"GET /elsewhere answered {response.status}, not 404")
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
        finally:
            conn.close()


@dataclass(frozen=True, slots=True)
class Measure:
    rate: float  # requests/s, 16 threads as fast as they go
    server_us: float  # server CPU µs per request, same span
    client_us: float
    p50_ms: float  # at the paced rate
    p99_ms: float
    paced_server_us: float  # server CPU µs per request at the paced rate


def flood(
    port: int, body: bytes, threads: int, warmup: int, count: int, server_pid: int
) -> tuple[Mark, Mark]:
    """`threads` keep-alive connections, warm-up then `count` requests; marks around those."""
    marks: list[Mark] = []
    barrier = threading.Barrier(threads, action=lambda: marks.append(Mark.now(server_pid)))
    errors: list[BaseException] = []

    def share(total: int, i: int) -> int:
        return total // threads + (1 if i < total % threads else 0)

    def sender(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            for _ in range(share(warmup, i)):
                post(conn, body)
            barrier.wait()
            for _ in range(share(count, i)):
                post(conn, body)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
        finally:
            conn.close()

    workers = [
        threading.Thread(target=sender, args=(i,), name=f"flood-{i}") for i in range(threads)
    ]
    with no_gc():
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        end = Mark.now(server_pid)
    if errors:
        raise RuntimeError(f"a sender failed: {errors[0]!r}") from errors[0]
    return marks[0], end


def paced(
    port: int, body: bytes, rate: float, count: int, server_pid: int
) -> tuple[list[float], float]:
    """One keep-alive connection at `rate`/s: latencies in s, and server CPU s per request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    latencies: list[float] = []
    try:
        for _ in range(50):  # the connection and both sides warm
            post(conn, body)
        with no_gc():
            start = Mark.now(server_pid)
            for _ in pace(count, rate):
                t0 = time.perf_counter()
                post(conn, body)
                latencies.append(time.perf_counter() - t0)
            end = Mark.now(server_pid)
    finally:
        conn.close()
    return latencies, (end.server_cpu - start.server_cpu) / count


def measure(setup: ServerSetup, args: argparse.Namespace, body: bytes, logs: Path) -> Measure:
    port = free_port()
    server = Managed(
        setup.name,
        setup.command(port),
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        log=logs / f"{setup.args[0]}-{port}.log",
        cwd=REPO_ROOT,
    )
    try:
        wait_ready(server, port, body)
        start, end = flood(port, body, args.threads, args.warmup, args.requests, server.pid)
        latencies, paced_cpu = paced(port, body, args.rate, args.paced, server.pid)
        server.check_alive()
    finally:
        server.stop()
    n = args.requests
    return Measure(
        rate=n / (end.wall - start.wall),
        server_us=(end.server_cpu - start.server_cpu) / n * 1e6,
        client_us=(end.client_cpu - start.client_cpu) / n * 1e6,
        p50_ms=percentile(latencies, 50) * 1e3,
        p99_ms=percentile(latencies, 99) * 1e3,
        paced_server_us=paced_cpu * 1e6,
    )


# --- the report -----------------------------------------------------------------------


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def render(results: dict[str, list[Measure]], args: argparse.Namespace, body: bytes) -> str:
    def med(name: str, field: str) -> float:
        return median(getattr(m, field) for m in results[name])

    versions = ", ".join(
        f"{d} {_version(d)}" for d in ("uvicorn", "httptools", "uvloop", "granian", "orjson")
    )
    lines = [
        f"ASGI servers, POST /webhook with one {len(body)}-byte event per request "
        f"(`python -m bench.asgi_servers`): {args.threads} keep-alive client threads, "
        f"{args.requests:,} requests after {args.warmup:,} warm-up; latency on one "
        f"connection paced at {args.rate:g}/s ({args.paced:,} requests). Medians of "
        f"{args.rounds} round(s), servers interleaved. Python {platform.python_version()}, "
        f"{versions}; {os.cpu_count()} CPUs, shared: requests/s are noisy, CPU µs/request "
        "is the figure to compare.",
        "",
        "| server | requests/s | server CPU µs/req | client CPU µs/req "
        f"| p50 ms @{args.rate:g}/s | p99 ms @{args.rate:g}/s | server CPU µs/req @{args.rate:g}/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in results:
        lines.append(
            f"| {name} | {med(name, 'rate'):,.0f} | {med(name, 'server_us'):.0f} "
            f"| {med(name, 'client_us'):.0f} | {med(name, 'p50_ms'):.2f} "
            f"| {med(name, 'p99_ms'):.2f} | {med(name, 'paced_server_us'):.0f} |"
        )
    return "\n".join(lines)


def rotated(items: list[ServerSetup], by: int) -> Iterator[ServerSetup]:
    by %= len(items)
    yield from items[by:] + items[:by]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=1_000)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--rate", type=float, default=500.0, help="paced requests/s")
    parser.add_argument("--paced", type=int, default=5_000, help="paced requests")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes, one round")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.warmup, args.paced, args.rounds = 2_000, 200, 500, 1

    body = event_body()
    setups = server_setups()
    results: dict[str, list[Measure]] = {s.name: [] for s in setups}
    with tempfile.TemporaryDirectory(prefix="veba-bench-asgi-") as logs:
        for r in range(args.rounds):
            for setup in rotated(setups, r):
                m = measure(setup, args, body, Path(logs))
                results[setup.name].append(m)
                print(
                    f"round {r + 1}: {setup.name}: {m.rate:,.0f}/s, server {m.server_us:.0f} µs/req, "
                    f"client {m.client_us:.0f} µs/req, p50 {m.p50_ms:.2f} ms, p99 {m.p99_ms:.2f} ms, "
                    f"paced server {m.paced_server_us:.0f} µs/req",
                    file=sys.stderr,
                    flush=True,
                )
    print(render(results, args, body))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
