"""Warm web apps (a Procfile `web` command) under faults: real processes on real ports.

The app here is a standard-library HTTP server so these tests need no pip; the
Flask apps VEBA shipped run end to end in tests/e2e/test_knative.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from veba.functions import FunctionLoadError, Invocation
from veba.functions.webapp import WebAppPool

from .conftest import Logs, process_gone, wait_until

APP = """
    import http.server, json, os, sys, time

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the pool's client expects

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            if body == "exit":
                print("about to exit", file=sys.stderr, flush=True)
                os._exit(3)
            if body.startswith("sleep"):
                time.sleep(float(body.split()[1]))
            out = json.dumps({
                "pid": os.getpid(), "path": self.path, "body": body,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "env": {k: os.environ.get(k) for k in ("PORT", "PATH", "K_SERVICE", "GREETING", "FLASK_DEBUG")},
            }).encode()
            self.send_response(int(self.headers.get("X-Status", "200")))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, fmt, *args):
            print("served", self.path, flush=True)

    host = os.environ.get("BIND", "127.0.0.1")
    http.server.ThreadingHTTPServer((host, int(os.environ["PORT"])), Handler).serve_forever()
"""

WebFactory = Callable[..., Any]


@pytest.fixture
async def web(python: Path, tmp_path: Path, logs: Logs) -> AsyncIterator[WebFactory]:
    """``await web(command="python3 app.py", **options)``: a started pool, stopped at teardown."""
    pools: list[WebAppPool] = []

    async def start(command: str = "python3 app.py", **options: Any) -> WebAppPool:
        folder = tmp_path / f"app{len(pools)}"
        folder.mkdir()
        (folder / "app.py").write_text(textwrap.dedent(APP))
        pool = WebAppPool(
            options.pop("name", "web"),
            python=python,
            app_dir=folder,
            command=command,
            log_sink=logs,
            **options,
        )
        pools.append(pool)
        await pool.start()
        return pool

    yield start
    pids = [pid for p in pools for pid in p.stats["pids"]]
    for p in pools:
        await p.stop()
    for pid in pids:
        assert process_gone(pid), f"web process {pid} outlived its pool"


def seen(body: bytes) -> dict[str, Any]:
    return json.loads(body)  # type: ignore[no-any-return]


async def test_a_request_reaches_the_app_with_its_path_headers_and_environment(
    web: WebFactory, python: Path
) -> None:
    pool = await web(environment={"GREETING": "hello"})
    out = await pool.invoke(
        Invocation(
            b"event",
            {
                "ce-type": "com.vmware.vsphere.VmPoweredOffEvent.v0",
                "Host": "x",
                "Authorization": "t",
            },
            path="/hook",
            query={"a": "1"},
        ),
        timeout=10,
    )
    assert (out.kind, out.status, out.ok) == ("ok", 200, True)
    got = seen(out.body)
    assert got["path"] == "/hook?a=1" and got["body"] == "event"
    assert got["headers"]["ce-type"] == "com.vmware.vsphere.VmPoweredOffEvent.v0"
    assert "authorization" not in got["headers"]  # the caller's token stays with veba
    assert got["headers"]["host"] == f"127.0.0.1:{got['env']['PORT']}"
    assert [int(got["env"]["PORT"])] == pool.stats["ports"]
    # `python3` in the Procfile is the function venv's.
    assert got["env"]["PATH"].split(os.pathsep)[0] == str(python.parent)
    assert got["env"]["K_SERVICE"] == "web" and got["env"]["GREETING"] == "hello"
    assert got["env"]["FLASK_DEBUG"] == "0"  # no Werkzeug debugger for FLASK_ENV=development
    assert {k.lower(): v for k, v in out.headers.items()}["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("status", "kind"), [(200, "ok"), (204, "ok"), (404, "error"), (500, "error"), (302, "error")]
)
async def test_status_is_mapped_as_knative_does(web: WebFactory, status: int, kind: str) -> None:
    pool = await web()
    out = await pool.invoke(Invocation(b"x", {"X-Status": str(status)}), timeout=10)
    assert (out.kind, out.status) == (kind, status)
    if kind == "error":
        assert out.error is not None and out.error.startswith(f"HTTP {status}")


async def test_a_dying_app_fails_its_request_as_a_crash_and_is_restarted(
    web: WebFactory, logs: Logs
) -> None:
    pool = await web()
    before = seen((await pool.invoke(Invocation(b"a"), timeout=10)).body)["pid"]
    out = await pool.invoke(Invocation(b"exit"), timeout=10)
    assert (out.kind, out.status) == ("crash", 0)
    await wait_until(lambda: pool.stats["restarts"] == 1 and pool.stats["alive"] == 1)
    after = await pool.invoke(Invocation(b"b"), timeout=10)
    assert after.ok and seen(after.body)["pid"] != before
    assert any("exited (exit code 3); restarting" in line for line in logs.of("system"))
    assert "about to exit" in logs.of("stderr")
    assert pool.stats["crashes"] == 1


async def test_a_killed_app_is_restarted_and_waiting_calls_go_to_the_new_one(
    web: WebFactory,
) -> None:
    pool = await web()
    pid = seen((await pool.invoke(Invocation(b"a"), timeout=10)).body)["pid"]
    os.kill(pid, signal.SIGKILL)
    # A call sent on a kept-alive connection as the app died fails as a crash (the
    # dispatcher retries those; on a loaded machine more than one may go before
    # the exit is noticed); one that finds the port closed waits for the
    # restarted instance, since nothing was sent.
    deadline = time.monotonic() + 30
    out = await pool.invoke(Invocation(b"after"), timeout=10)
    while not out.ok and time.monotonic() < deadline:
        assert out.kind == "crash", out
        out = await pool.invoke(Invocation(b"after"), timeout=10)
    assert out.ok and seen(out.body)["pid"] != pid
    assert pool.stats["restarts"] == 1


async def test_a_slow_request_times_out_and_the_app_lives_on(web: WebFactory) -> None:
    pool = await web()
    pid = seen((await pool.invoke(Invocation(b"a"), timeout=10)).body)["pid"]
    out = await pool.invoke(Invocation(b"sleep 3"), timeout=0.3)
    assert (out.kind, out.status) == ("timeout", 0)
    assert out.error == "function 'web' timed out after 0.3s"
    again = await pool.invoke(Invocation(b"b"), timeout=10)
    assert again.ok and seen(again.body)["pid"] == pid and pool.stats["restarts"] == 0


async def test_requests_are_spread_over_instances_and_held_to_the_concurrency(
    web: WebFactory,
) -> None:
    pool = await web(instances=2, concurrency=1)
    assert pool.stats["alive"] == 2 and len(set(pool.stats["ports"])) == 2
    outs = await asyncio.gather(
        *(pool.invoke(Invocation(b"sleep 0.3"), timeout=10) for _ in range(4))
    )
    assert all(o.ok for o in outs)
    assert len({seen(o.body)["pid"] for o in outs}) == 2


async def test_an_app_that_exits_at_start_fails_with_its_last_words(web: WebFactory) -> None:
    command = (
        "python3 -c \"import sys; print('no such module: flask', file=sys.stderr); sys.exit(2)\""
    )
    with pytest.raises(FunctionLoadError) as info:
        await web(command=command)
    message = str(info.value)
    assert "the web command of 'web' exited (exit code 2) before listening on $PORT" in message
    assert "no such module: flask" in message


async def test_an_app_that_ignores_port_fails_after_the_start_timeout(web: WebFactory) -> None:
    with pytest.raises(FunctionLoadError, match=r"did not listen on 127\.0\.0\.1:\$PORT within 1s"):
        await web(command="exec sleep 60", start_timeout=1.0)


async def test_an_app_listening_beyond_loopback_is_refused(web: WebFactory) -> None:
    with pytest.raises(FunctionLoadError, match=r"listens on 0\.0\.0\.0 port \d+; functions may"):
        await web(command="BIND=0.0.0.0 python3 app.py")


async def test_stop_ends_everything_the_command_started(web: WebFactory, tmp_path: Path) -> None:
    marker = tmp_path / "sleep.pid"
    pool = await web(command=f"sleep 600 & echo $! > {marker}; python3 app.py")
    pid = seen((await pool.invoke(Invocation(b"a"), timeout=10)).body)["pid"]
    helper = int(marker.read_text())
    await pool.stop()
    assert process_gone(pid) and process_gone(helper)
    with pytest.raises(RuntimeError, match="stopped"):
        await pool.invoke(Invocation(b"late"), timeout=1)


async def test_instances_scale_between_min_and_max_scale_and_to_zero_when_idle(
    web: WebFactory, logs: Logs
) -> None:
    pool = await web(instances=0, max_instances=3, concurrency=1, idle=0.3)
    first = pool.stats["pids"][0]  # one at deploy: the app must start
    await wait_until(lambda: pool.stats["alive"] == 0 and process_gone(first))
    outcomes = await asyncio.gather(
        *(pool.invoke(Invocation(b"sleep 0.3"), timeout=10) for _ in range(6))
    )
    assert all(o.ok for o in outcomes)
    pids = {json.loads(o.body)["pid"] for o in outcomes}
    assert len(pids) == 3 and pool.stats["scale_ups"] >= 1  # maxScale, not one per request
    assert any("request(s) waiting or in flight" in line for line in logs.of("system"))
    await wait_until(lambda: pool.stats["alive"] == 0 and pool.stats["workers"] == 0)
    for pid in pids:
        await wait_until(lambda pid=pid: process_gone(pid))
