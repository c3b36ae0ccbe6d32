"""The process that runs one function's handler, inside the function's own venv.

Executed by path as ``<venv>/bin/python -I worker.py --handler-dir D --lang L --fd N``,
so it imports nothing but the standard library (the venv holds only the function's
own requirements) and nothing from veba.

Protocol on the inherited socket ``N``, both directions, one frame per message::

    4-byte big-endian length | JSON header (utf-8) | 4-byte big-endian length | body

The first frame the worker sends is ``{"ready": true, "pid": ...}`` or
``{"load_error": "...", "traceback": "..."}``. After that each request frame
``{"id", "method", "path", "query", "headers"}`` gets exactly one response frame
``{"id", "status", "headers", "error", "traceback", "started", "duration"}``, in
arrival order, one request at a time. With ``--overlap N`` (an I/O-bound handler
that says so) it runs up to N at once, in threads (an ``async def handle`` runs
on one event loop), starting them in arrival order and answering each as it
ends. stdout and stderr are the function's log; each line printed while a
request runs starts with ``\x1e<id>\x1f`` (its request's id), so the appliance
files it under the event that request delivered.

``--sdk-path D`` appends D (a copy of the stdlib-only ``veba.sdk``) to sys.path, and
`current_call()` tells that SDK about the call being run (deadline, attempt, event
id): it finds this module as ``sys.modules["_veba_worker"]``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import contextvars
import importlib
import importlib.util
import io
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

LANGS = ("python3", "python3-flask", "python3-http", "veba-cloudevent")
TRACEBACK_LIMIT = 8 * 1024
_LEN = 4


class BadReturn(TypeError):
    """The handler returned something this template cannot turn into a response."""


class BadRequest(ValueError):
    """The request cannot be given to this handler (e.g. not a CloudEvent)."""


# --- what handlers receive -------------------------------------------------------


class Headers(Mapping[str, str]):
    """Case-insensitive read-only header mapping, as Flask's ``request.headers`` is."""

    __slots__ = ("_items",)

    def __init__(self, raw: Mapping[str, str]) -> None:
        self._items = {k.lower(): (k, v) for k, v in raw.items()}

    def __getitem__(self, key: str) -> str:
        return self._items[key.lower()][1]

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._items

    def __repr__(self) -> str:
        return f"Headers({dict(self.items())!r})"


class HttpEvent:
    """``event`` of the python3-http template."""

    __slots__ = ("body", "headers", "method", "path", "query")

    def __init__(
        self, body: bytes, headers: Headers, method: str, query: dict[str, str], path: str
    ) -> None:
        self.body = body
        self.headers = headers
        self.method = method
        self.query = query
        self.path = path


class HttpContext:
    """``context`` of the python3-http template."""

    __slots__ = ("hostname",)

    def __init__(self) -> None:
        self.hostname = os.getenv("HOSTNAME", "localhost")


class CloudEvent:
    """A read-only view of one CloudEvent: ``event.type``, ``event["subject"]``, ``event.data``."""

    __slots__ = ("_attrs", "data")

    def __init__(self, attributes: dict[str, Any], data: Any) -> None:
        self._attrs = attributes
        self.data = data

    @property
    def attributes(self) -> dict[str, Any]:
        return dict(self._attrs)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not slots: the context attributes and
        # extensions (``event.vsphereapiversion``); absent optional ones are None.
        if name.startswith("__"):
            raise AttributeError(name)
        return self._attrs.get(name)

    def __getitem__(self, name: str) -> Any:
        if name == "data":
            return self.data
        return self._attrs[name]

    def __contains__(self, name: object) -> bool:
        return name == "data" or name in self._attrs

    def get(self, name: str, default: Any = None) -> Any:
        if name == "data":
            return self.data
        return self._attrs.get(name, default)

    def to_json(self) -> bytes:
        out = dict(self._attrs)
        if isinstance(self.data, bytes | bytearray):
            out["data_base64"] = base64.b64encode(self.data).decode("ascii")
        elif self.data is not None:
            out["data"] = self.data
        return json.dumps(out).encode()

    def __repr__(self) -> str:
        return f"CloudEvent({self._attrs!r})"


class EventContext:
    """``ctx`` of the veba-cloudevent template."""

    __slots__ = ("attempt", "deadline", "function_name", "headers", "logger", "secrets_dir")

    def __init__(
        self,
        function_name: str,
        secrets_dir: Path | None,
        deadline: float | None,
        attempt: int,
        logger: logging.Logger,
        headers: Headers,
    ) -> None:
        self.function_name = function_name
        self.secrets_dir = secrets_dir
        self.deadline = deadline
        self.attempt = attempt
        self.logger = logger
        self.headers = headers

    def remaining(self) -> float | None:
        """Seconds left before this attempt times out, or None when unknown."""
        return None if self.deadline is None else self.deadline - time.time()

    def secret(self, name: str) -> str:
        """The text of one declared secret (a file in ``secrets_dir``)."""
        path = None if self.secrets_dir is None or "/" in name else self.secrets_dir / name
        if path is None or not path.is_file():
            raise SecretMissing(
                f"secret {name!r} is not available to function {self.function_name!r}: "
                f"declare it under `secrets:` in stack.yml (functions.{self.function_name}"
                ".secrets)"
            )
        return path.read_text().strip()


class SecretMissing(KeyError):
    """ctx.secret(name) of a secret the function does not declare."""

    def __str__(self) -> str:
        return str(self.args[0])


# --- the call being run, for veba.sdk ------------------------------------------------


class CallInfo:
    """What `veba.sdk` may know of the call this worker is running."""

    __slots__ = ("_ids", "attempt", "body", "deadline", "headers")

    def __init__(self, headers: Headers, body: bytes, deadline: float | None, attempt: int) -> None:
        self.headers = headers
        self.body = body
        self.deadline = deadline  # time.time() by which the call must be done, or None
        self.attempt = attempt
        self._ids: tuple[str | None, str | None] | None = None

    def event_ids(self) -> tuple[str | None, str | None]:
        """(id, subject) of the CloudEvent being handled, from ``ce-*`` headers or the body."""
        if self._ids is None:
            ident, subject = self.headers.get("ce-id"), self.headers.get("ce-subject")
            if ident is None and self.body[:1] == b"{":
                try:
                    doc = json.loads(self.body)
                except ValueError:
                    doc = None
                if isinstance(doc, dict):
                    ident, subject = doc.get("id"), doc.get("subject")
            self._ids = (
                None if ident is None else str(ident),
                None if subject is None else str(subject),
            )
        return self._ids


# Per call, not per worker: calls may overlap in threads or on an event loop.
_current: contextvars.ContextVar[CallInfo | None] = contextvars.ContextVar(
    "veba_current_call", default=None
)


def current_call() -> CallInfo | None:
    """The call this thread or task is running, or None between calls."""
    return _current.get()


# veba.sdk looks for this module under one name, whether it runs as __main__ or is
# imported (by veba.testing, which calls handlers in-process).
sys.modules.setdefault("_veba_worker", sys.modules[__name__])


# --- requests to handler arguments -------------------------------------------------


def _cloudevent(headers: Headers, body: bytes) -> CloudEvent:
    """The request as a CloudEvent, in binary mode (``ce-*`` headers) or structured mode."""
    try:
        if "ce-specversion" in headers:
            attrs: dict[str, Any] = {
                k[3:].lower(): v for k, v in headers.items() if k.lower().startswith("ce-")
            }
            ctype = headers.get("content-type")
            data: Any = body or None
            if ctype:
                attrs["datacontenttype"] = ctype
                if "json" in ctype and body:
                    data = json.loads(body)
            return CloudEvent(attrs, data)
        doc = json.loads(body)
        if not isinstance(doc, dict) or "specversion" not in doc:
            raise ValueError("no specversion")
        data = doc.pop("data", None)
        if "data_base64" in doc:
            data = base64.b64decode(doc.pop("data_base64"), validate=True)
        return CloudEvent(doc, data)
    except ValueError as exc:  # JSON and base64 errors are ValueErrors
        mode = "binary-mode" if "ce-specversion" in headers else "structured"
        raise BadRequest(f"request body is not a {mode} CloudEvent: {exc}") from None


def _float_header(headers: Headers, name: str) -> float | None:
    value = headers.get(name)
    try:
        return float(value) if value else None
    except ValueError:
        return None


# --- handler results to responses ----------------------------------------------------

Response = tuple[int, dict[str, str], bytes]
_JSON = "application/json"


def _encode(value: Any, what: str) -> tuple[bytes, str | None]:
    """A handler's return value as (body, content-type)."""
    if value is None:
        return b"", None
    if isinstance(value, str):
        return value.encode(), "text/plain; charset=utf-8"
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value), None
    if isinstance(value, CloudEvent):
        return value.to_json(), "application/cloudevents+json"
    if isinstance(value, dict | list | int | float | bool):
        try:
            return json.dumps(value).encode(), _JSON
        except (TypeError, ValueError) as exc:
            raise BadReturn(f"{what} is not JSON-serialisable: {exc}") from None
    raise BadReturn(
        f"{what} has unsupported type {type(value).__name__!r}; "
        "expected str, bytes, dict, list or None"
    )


def _flask_response(value: Any) -> Response:
    extra: Any = {}
    status: Any = 200
    if isinstance(value, tuple):  # Flask: (body, status), (body, status, headers)
        if not 2 <= len(value) <= 3:
            raise BadReturn("handler returned a tuple; expected (body, status[, headers])")
        value, status, extra = (*value, {})[:3]
    body, ctype = _encode(value, "handler return value")
    headers = {"Content-Type": ctype} if ctype else {}
    headers.update(_str_headers(extra))
    return _checked_status(status), headers, body


def _http_response(value: Any) -> Response:
    # As of-watchdog's python3-http template formats {"statusCode", "body", "headers"}.
    if value is None:
        return 200, {}, b""
    if not isinstance(value, dict):
        raise BadReturn(
            f"python3-http handler returned {type(value).__name__!r}; "
            'expected a dict like {"statusCode": 200, "body": ..., "headers": {...}} or None'
        )
    body, ctype = _encode(value.get("body"), "response body")
    headers = {"Content-Type": ctype} if ctype else {}
    headers.update(_str_headers(value.get("headers") or {}))
    return _checked_status(value.get("statusCode", 200)), headers, body


def _str_headers(raw: Any) -> dict[str, str]:
    if isinstance(raw, Mapping):
        return {str(k): str(v) for k, v in raw.items()}
    if isinstance(raw, list | tuple):  # list of (name, value) pairs, as Flask accepts
        return {str(k): str(v) for k, v in raw}
    raise BadReturn(f"response headers have unsupported type {type(raw).__name__!r}")


def _checked_status(status: Any) -> int:
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise BadReturn(f"invalid status code {status!r}; expected an int from 100 to 599")
    return status


# --- the worker --------------------------------------------------------------------


Call = Callable[[dict[str, Any], bytes], Response]


def _make_call(handle: Callable[..., Any], lang: str) -> Call:
    """One function per template turning (request header, body) into a response."""
    if lang == "python3":
        return _classic_call(handle)

    if lang == "python3-flask":

        def call_flask(req: dict[str, Any], body: bytes) -> Response:
            return _flask_response(handle(body.decode("utf-8", "replace")))

        return call_flask

    if lang == "python3-http":
        context = HttpContext()

        def call_http(req: dict[str, Any], body: bytes) -> Response:
            event = HttpEvent(
                body,
                Headers(req.get("headers") or {}),
                req.get("method", "POST"),
                dict(req.get("query") or {}),
                req.get("path", "/"),
            )
            return _http_response(handle(event, context))

        return call_http

    name = os.environ.get("VEBA_FUNCTION_NAME", "function")
    secrets = os.environ.get("VEBA_SECRETS_DIR")
    secrets_dir = Path(secrets) if secrets else None
    logger = _function_logger(name)

    def call_event(req: dict[str, Any], body: bytes) -> Response:
        headers = Headers(req.get("headers") or {})
        event = _cloudevent(headers, body)
        info = _current.get()
        if info is None:  # called without dispatch()
            attempt = _float_header(headers, "x-veba-attempt")
            info = CallInfo(
                headers, body, _float_header(headers, "x-veba-deadline"), int(attempt or 1)
            )
        deadline = _float_header(headers, "x-veba-deadline")  # as sent (veba.sdk: + timeout)
        ctx = EventContext(name, secrets_dir, deadline, info.attempt, logger, headers)
        return _flask_response(handle(event, ctx))

    return call_event


class _Tee(io.TextIOBase):
    """A text stream that writes to the real stream (the function's log) and a buffer."""

    def __init__(self, real: Any, copy: io.StringIO) -> None:
        self._real = real
        self._copy = copy

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._copy.write(text)
        return int(self._real.write(text))

    def flush(self) -> None:
        self._real.flush()


def _classic_call(handle: Callable[..., Any]) -> Call:
    """OpenFaaS's classic-watchdog templates (python, python3): the response is what
    the handler printed, then ``print(handle(req))`` unless it returned None (a dict
    or list as JSON, bytes as they are).

    stderr goes into the response too with ``combine_output: true``. That is the
    classic watchdog's default, not veba's: stderr is the function's log here (where
    veba.sdk's logger writes), and a log line in an answer breaks the callers that
    parse it. Every line, stdout's too, also stays in the function's log.
    """
    combine = os.environ.get("combine_output", "false").lower() in ("1", "true")  # noqa: SIM112
    content_type = os.environ.get("content_type", "text/plain; charset=utf-8")  # noqa: SIM112

    def call_classic(req: dict[str, Any], body: bytes) -> Response:
        captured = io.StringIO()
        out, err = sys.stdout, sys.stderr
        sys.stdout = _Tee(out, captured)
        if combine:
            sys.stderr = _Tee(err, captured)
        try:
            value = handle(body.decode("utf-8", "replace"))
        finally:
            sys.stdout, sys.stderr = out, err
        printed = captured.getvalue().encode()
        if value is None:
            return 200, {"Content-Type": content_type}, printed
        # print(value)'s text and newline; what print would only repr (a dict, bytes)
        # is encoded as the other templates do, since no caller wants a repr.
        body, ctype = _encode(value, "handler return value")
        if isinstance(value, str | int | float):
            ctype = content_type
        return 200, {"Content-Type": ctype or content_type}, printed + body + b"\n"

    return call_classic


def _function_logger(name: str) -> logging.Logger:
    logger = logging.getLogger(f"function.{name}")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def _import_handler(handler_dir: str) -> types.ModuleType:
    """Import ``handler.py`` as OpenFaaS templates do (package ``function``) and as ``handler``.

    The package makes ``from .helpers import x`` work as in the templates; the folder
    on sys.path makes ``import helpers`` work too.
    """
    sys.path.insert(0, handler_dir)
    init = os.path.join(handler_dir, "__init__.py")
    if os.path.exists(init):
        spec = importlib.util.spec_from_file_location(
            "function", init, submodule_search_locations=[handler_dir]
        )
        assert spec is not None and spec.loader is not None
        package = importlib.util.module_from_spec(spec)
        sys.modules["function"] = package
        spec.loader.exec_module(package)
    else:
        package = types.ModuleType("function")
        package.__path__ = [handler_dir]
        package.__package__ = "function"
        sys.modules["function"] = package
    module = importlib.import_module("function.handler")
    sys.modules.setdefault("handler", module)
    return module


def _frame(header: dict[str, Any], body: bytes = b"") -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join((len(head).to_bytes(_LEN, "big"), head, len(body).to_bytes(_LEN, "big"), body))


class _Reader(Protocol):
    def read(self, n: int, /) -> bytes: ...


def _read_frame(stream: _Reader) -> tuple[bytes, bytes] | None:
    """One (header, body) frame, or None once the supervisor has closed the channel."""
    parts = []
    for _ in range(2):
        size = stream.read(_LEN)
        if len(size) < _LEN:
            return None
        n = int.from_bytes(size, "big")
        data = stream.read(n)
        if len(data) < n:
            return None
        parts.append(data)
    return parts[0], parts[1]


def _truncated(text: str) -> str:
    if len(text) <= TRACEBACK_LIMIT:
        return text
    # Whole lines only: a secret cut in half here is a fragment the appliance's
    # scrubbing cannot recognise.
    tail = text[-TRACEBACK_LIMIT:]
    if "\n" not in tail:
        return "... (truncated)"
    return "... (truncated)\n" + tail[tail.index("\n") + 1 :]


def _exception_status(exc: BaseException) -> int:
    """500, or the 4xx/5xx an exception asks for with an ``http_status`` attribute.

    veba.sdk's errors about the event itself (a missing field, not a CloudEvent)
    say 422/400, which a delivery does not retry: the same event would fail again.
    """
    status = getattr(exc, "http_status", None)
    if isinstance(status, int) and not isinstance(status, bool) and 400 <= status <= 599:
        return status
    return 500


def dispatch(
    call: Call, req: dict[str, Any], body: bytes
) -> tuple[dict[str, Any], bytes, BaseException | None]:
    """Run one request: (response header, response body, the handler's exception or None).

    A handler's fault never escapes; it becomes an error response (and is written
    to stderr, the function's log). ``veba.testing`` runs handlers through this too.
    """
    headers = Headers(req.get("headers") or {})
    started = time.time()
    deadline = _float_header(headers, "x-veba-deadline")
    timeout = req.get("timeout")
    if isinstance(timeout, int | float) and not isinstance(timeout, bool):
        deadline = started + timeout if deadline is None else min(deadline, started + timeout)
    attempt = _float_header(headers, "x-veba-attempt")
    token = _current.set(CallInfo(headers, body, deadline, int(attempt) if attempt else 1))
    t0 = time.perf_counter()
    error = tb = None
    failure: BaseException | None = None
    try:
        status, out_headers, out = call(req, body)
    except KeyboardInterrupt:
        raise
    except BadRequest as exc:
        status, out_headers, out, error, failure = 400, {}, b"", str(exc), exc
    except BadReturn as exc:
        status, out_headers, out, error, failure = 500, {}, b"", str(exc), exc
    except BaseException as exc:  # a handler's fault never ends the worker
        status, out_headers, out, failure = _exception_status(exc), {}, b"", exc
        error = f"{type(exc).__name__}: {exc}"
        tb = _truncated(traceback.format_exc())
        sys.stderr.write(tb)
    finally:
        _current.reset(token)
    duration = time.perf_counter() - t0
    if error and tb is None:
        sys.stderr.write(f"error: {error}\n")
    head = {
        "id": req.get("id"),
        "status": status,
        "headers": out_headers,
        "error": error,
        "traceback": tb,
        "started": started,
        "duration": duration,
    }
    return head, out, failure


def serve(
    sock: socket.socket,
    call: Call,
    write_debug: bool,
    tagged: tuple[_CallTagged, ...] = (),
    overlap: int = 1,
) -> None:
    stream = io.BufferedReader(socket.SocketIO(sock, "rb"), 1 << 16)
    sending = threading.Lock()

    def run(req: dict[str, Any], body: bytes) -> None:
        call_id = str(req.get("id"))
        scope = _CALL_ID.set(call_id)
        try:
            head, out, _ = dispatch(call, req, body)
        finally:
            _CALL_ID.reset(scope)
        if write_debug:
            sys.stderr.write(out.decode("utf-8", "replace") + "\n")
        for output in tagged:
            output.end(call_id)
        # Lines without a trailing newline would otherwise wait for the next request.
        sys.stdout.flush()
        sys.stderr.flush()
        with sending:
            sock.sendall(_frame(head, out))

    pool = None
    if overlap > 1:  # imported only here: a worker's memory is what it imports (~16 MB)
        from concurrent.futures import ThreadPoolExecutor

        # The pool starts calls in arrival order: the executor's queue is first in, first out.
        pool = ThreadPoolExecutor(overlap)
    while True:
        frame = _read_frame(stream)
        if frame is None:
            return
        if pool is None:
            run(json.loads(frame[0]), frame[1])
        else:
            pool.submit(run, json.loads(frame[0]), frame[1])


def _on_event_loop(handle: Callable[..., Any]) -> Callable[..., Any]:
    """``async def handle`` as a plain callable: each call a task on one event loop
    (in a thread of its own), so overlapping calls share the loop as an ASGI app's do.
    The task runs in the caller's context, so `current_call()` is its own call's."""

    import asyncio  # only for async handlers: it is a few MB of a worker's memory

    def call(*args: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(handle(*args), _handler_loop()).result()

    return call


_loop: Any = None  # the one event loop of async handlers, once one needs it
_loop_lock = threading.Lock()


def _handler_loop() -> Any:
    import asyncio

    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="handler-loop", daemon=True).start()
        return _loop


_CO_COROUTINE = 0x80  # inspect.CO_COROUTINE, without importing inspect


def as_callable(handle: Callable[..., Any]) -> Callable[..., Any]:
    """The handler as the templates call it: an ``async def`` runs on an event loop."""
    if isinstance(handle, types.FunctionType) and handle.__code__.co_flags & _CO_COROUTINE:
        return _on_event_loop(handle)
    return handle


# --- which call a line of output belongs to ----------------------------------------

CALL_MARK, CALL_END = "\x1e", "\x1f"


# The request a thread (or an async handler's task, which runs in a copy of its
# caller's context) is running: whose lines it prints.
_CALL_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("veba_call", default=None)


class _CallTagged(io.TextIOBase):
    """stdout or stderr with each line written during a call prefixed by its id.

    A call's text is written a whole line at a time (what is left of a line waits
    for its newline, or for the call's end), so the lines of overlapping calls
    (``--overlap``) never interleave within a line: ``print`` writes its text and
    its newline apart. Only what goes through Python's ``sys.stdout``/``sys.stderr``
    is tagged (print, logging, tracebacks); a child process writing to the
    descriptor is not.
    """

    def __init__(self, real: Any) -> None:
        self._real = real
        self._lock = threading.Lock()
        self._open: dict[str, str] = {}  # call id -> its line not ended yet

    def end(self, call_id: str) -> None:
        """The call is over: a line it left open ends with it."""
        with self._lock:
            rest = self._open.pop(call_id, None)
            if rest is not None:
                self._real.write(f"{CALL_MARK}{call_id}{CALL_END}{rest}\n")

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not text:
            return 0
        call_id = _CALL_ID.get()
        with self._lock:
            if call_id is None:
                self._real.write(text)
                return len(text)
            *lines, rest = (self._open.pop(call_id, "") + text).split("\n")
            if lines:
                tag = f"{CALL_MARK}{call_id}{CALL_END}"
                self._real.write("".join(f"{tag}{line}\n" for line in lines))
            if rest:
                self._open[call_id] = rest
        return len(text)

    def flush(self) -> None:
        self._real.flush()

    def fileno(self) -> int:
        return int(self._real.fileno())

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:  # encoding, buffer, errors, reconfigure...
        return getattr(self._real, name)


def _check_arity(handle: Callable[..., Any], lang: str) -> None:
    """Fail at load, not on every call, when ``handle`` does not fit the template."""
    code = getattr(handle, "__code__", None)
    if not isinstance(handle, types.FunctionType) or code is None or code.co_flags & 0x04:
        return  # a callable object or *args: let the call tell
    passed = 1 if lang in ("python3", "python3-flask") else 2
    most = code.co_argcount
    least = most - len(handle.__defaults__ or ())
    if not least <= passed <= most:
        usage = "handle(req)" if passed == 1 else "handle(event, context)"
        hint = {1: "python3 or python3-flask", 2: "python3-http or veba-cloudevent"}.get(most)
        raise TypeError(
            f"handle() takes {most} positional argument(s) but lang {lang} calls {usage}"
            + (f"; a handle with {most} argument(s) needs lang {hint}" if hint else "")
        )


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when the appliance dies, even by SIGKILL.

    Done here rather than in a preexec_fn so the appliance can spawn with vfork:
    a preexec_fn forces a full fork, which stalls its event loop for tens of ms.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(1)


def _batch_scheduling() -> None:
    """SCHED_BATCH (Linux): a call sent to this worker does not preempt the
    appliance that sent it; the worker runs on an idle CPU, or when the
    appliance waits. Without it each delivery's write woke the worker onto the
    appliance's CPU mid-loop, and the appliance paid the switch (profiled)."""
    if hasattr(os, "SCHED_BATCH"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--handler-dir", required=True)
    parser.add_argument("--lang", required=True, choices=LANGS)
    parser.add_argument("--fd", required=True, type=int)
    parser.add_argument("--parent-pid", type=int, help="die with this process (Linux)")
    parser.add_argument("--sdk-path", help="a folder holding veba/sdk, appended to sys.path")
    parser.add_argument("--overlap", type=int, default=1, help="calls run at once (I/O-bound)")
    args = parser.parse_args(argv)
    if args.sdk_path:
        sys.path.append(args.sdk_path)  # after the venv: the function's own packages win
    if args.parent_pid:
        _die_with_parent(args.parent_pid)
    _batch_scheduling()

    # Ctrl-C in the appliance's terminal reaches the whole process group; the
    # supervisor decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True, errors="backslashreplace")
    tagged = (_CallTagged(sys.stdout), _CallTagged(sys.stderr))
    sys.stdout, sys.stderr = tagged

    sock = socket.socket(fileno=args.fd)
    handler_dir = os.path.abspath(args.handler_dir)
    os.chdir(handler_dir)
    try:
        module = _import_handler(handler_dir)
        handle = getattr(module, "handle", None)
        if not callable(handle):
            raise AttributeError(f"{module.__file__} defines no function 'handle'")
        _check_arity(handle, args.lang)
    except BaseException as exc:
        tb = _truncated(traceback.format_exc())
        sys.stderr.write(tb)
        sys.stderr.flush()
        sock.sendall(_frame({"load_error": f"{type(exc).__name__}: {exc}", "traceback": tb}))
        return 1
    sock.sendall(_frame({"ready": True, "pid": os.getpid()}))
    debug = os.environ.get("write_debug", "")  # noqa: SIM112 (OpenFaaS's name)
    write_debug = debug.lower() in ("1", "true")
    call = _make_call(as_callable(handle), args.lang)
    serve(sock, call, write_debug, tagged, max(args.overlap, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
