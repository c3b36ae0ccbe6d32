"""What the tests of `examples/` share: where the examples are, a local HTTP
server to stand in for webhooks and REST APIs, the appliance's store (for
`@idempotent`), and the vcconfig secret for govmomi's simulator (tests/vcsim.py).

Everything listens on 127.0.0.1 only; the fixtures in conftest.py stop it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.support import ServedAppliance, wait_for
from tests.vcsim import PASSWORD, USER, VCSim

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example(name: str) -> Path:
    """The handler folder of an example: ``examples/<name>/<name>``."""
    return EXAMPLES / name / name


wait_until = wait_for


def vcconfig(sim: VCSim, *, user: str = USER, password: str = PASSWORD) -> str:
    """The `vcconfig` secret (TOML, as in VEBA's examples) for a simulator."""
    return (
        "[vcenter]\n"
        f'server = "http://127.0.0.1:{sim.port}"\n'
        f'user = "{user}"\n'
        f'password = "{password}"\n'
        "insecure = true\n"
    )


# --- a local HTTP server -----------------------------------------------------------


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Reply = tuple[int, dict[str, str], bytes]


class LocalServer:
    """An HTTP server on 127.0.0.1 in a thread. ``respond(request)`` gives
    (status, headers, body) for each request; every request is recorded."""

    def __init__(self, respond: Callable[[Request], Reply]) -> None:
        self.respond = respond
        self.requests: list[Request] = []
        self._changed = threading.Condition()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = Request(
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                )
                try:
                    status, headers, out = server.respond(request)
                except Exception as exc:  # a broken test double: say so, loudly
                    status, headers, out = 599, {}, repr(exc).encode()
                with server._changed:
                    server.requests.append(request)
                    server._changed.notify_all()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> LocalServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Request]:
        """The first ``count`` requests, once they have arrived."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(
                    f"{self.url} got {len(self.requests)} request(s) in {timeout} s, "
                    f"expected {count}"
                )
            return list(self.requests[:count])


# --- the appliance's store, for @idempotent -------------------------------------------


class StoreService(ServedAppliance):
    """The appliance's API (its store, with per-function tokens) under uvicorn in a
    thread of the test process, as `veba serve` offers it to function workers."""

    def env(self, function: str) -> dict[str, str]:
        """The variables a worker of ``function`` gets to reach its store."""
        return {
            "VEBA_API_URL": self.url,
            "VEBA_STORE_TOKEN": self.appliance.store_tokens.issue(function),
        }
