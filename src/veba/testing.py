"""pytest plugin ``veba``: test a function's handler as the appliance runs it.

Installed with veba (entry point ``pytest11``), so a function's tests just ask
for the fixtures::

    def test_tags_web_vms(veba_event, veba_invoke):
        event = veba_event("VmPoweredOnEvent", {"data.Vm.Name": "web-01"})
        response = veba_invoke(Path(__file__).parent, event, secrets={"vcconfig": "..."})
        assert response.status == 200

``veba_event(event_class, overrides)`` is a realistic sample from veba's vCenter
simulator, as a structured CloudEvent ``dict``. ``veba_invoke(target, event)``
posts it the way a delivery does (structured mode, ``Ce-*`` and ``X-Veba-*``
headers) through the worker's own dispatch code, with the function's lang,
environment and declared secrets read from the stack.yml that holds it, secrets
in a folder laid out as at run time, and the same environment variables.
It returns a `Response`; a handler that raises (or returns what its template
cannot send) raises `HandlerError` carrying the handler's traceback. As in the
appliance, the secret values given are scrubbed out of the response, its error
and traceback (``[REDACTED]``, see `veba.scrub`).

By default the handler runs in-process (fast; the test's interpreter and
packages, the function's variables added to the test's environment; the timeout
is what ``veba.sdk.deadline()`` says but is not enforced). ``mode="worker"`` (or
``pytest --veba-worker``) runs it in a real worker process in the function's own
venv (built from requirements.txt, cached), exactly as deployed, without an
appliance: the same environment, and a handler over its timeout is killed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from veba.scrub import Scrubber

if TYPE_CHECKING:
    from veba.functions.stack import FunctionSpec

__all__ = ["HandlerError", "Response", "invoke", "sample_event"]

STACK_NAMES = ("stack.yml", "stack.yaml")
DEFAULT_TIMEOUT = 30.0
_BASE_ENV = ("PATH", "HOME", "LANG", "TMPDIR")


@dataclass(frozen=True)
class Response:
    """What the function answered: as ``/function/NAME`` would send it back."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    error: str | None = None  # the handler's exception or bad return, if any
    traceback: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status < 400

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


class HandlerError(AssertionError):
    """The handler raised (``traceback`` holds its traceback) or returned something
    its template cannot turn into a response."""

    def __init__(self, function: str, response: Response) -> None:
        self.function = function
        self.response = response
        self.error = response.error
        self.traceback = response.traceback
        text = f"function {function!r} failed with status {response.status}: {response.error}"
        if response.traceback:
            text += "\n\nhandler traceback (as in the function's log):\n" + response.traceback
        super().__init__(text)


# --- sample events -------------------------------------------------------------------


def sample_event(
    event_class: str,
    overrides: Mapping[str, Any] | None = None,
    /,
    *,
    seed: int = 0,
    **fields: Any,
) -> dict[str, Any]:
    """A realistic ``event_class`` event from veba's vCenter simulator, as a dict.

    ``overrides`` are dotted paths (``{"data.Vm.Name": "web-01"}``, ``{"subject": ...}``);
    keyword fields use ``__`` for the dots (``Vm__Name="web-01"``). Where a path
    names an object of the inventory (a VM by name) that object is used, in the
    state the event needs; otherwise the field is simply set.
    """
    from veba.providers.simulator import VCenterSimulator

    merged = dict(overrides or {})
    merged.update({k.replace("__", "."): v for k, v in fields.items()})
    event = VCenterSimulator(seed).sample(event_class, **merged)
    doc: dict[str, Any] = json.loads(event.to_json())
    return doc


# --- finding the function ---------------------------------------------------------------


@dataclass(frozen=True)
class _Function:
    name: str
    handler_dir: Path
    lang: str
    environment: dict[str, str]
    secrets: list[str] | None  # declared names; None when no stack says
    timeout: float


def _stacks_above(folder: Path) -> Iterator[Path]:
    for parent in [folder, *folder.parents]:
        for name in STACK_NAMES:
            if (parent / name).is_file():
                yield parent / name


def _spec_for(handler_dir: Path, stack: Path | None) -> tuple[FunctionSpec | None, list[str]]:
    from veba.functions.stack import StackError, load_stack

    problems = []
    candidates = [stack] if stack is not None else list(_stacks_above(handler_dir.parent))
    for path in candidates:
        try:
            loaded = load_stack(path)
        except StackError as exc:
            problems.append(str(exc))
            continue
        for spec in loaded.functions.values():
            if spec.handler == handler_dir:
                return spec, problems
    return None, problems


def _resolve(
    target: str | os.PathLike[str], lang: str | None, stack: str | os.PathLike[str] | None
) -> _Function:
    from veba.functions.stack import LANG_ALIASES, LANGS, StackError, load_stack

    stack_path = Path(stack).resolve() if stack is not None else None
    path = Path(target)
    spec: FunctionSpec | None
    if path.is_dir():
        handler_dir = path.resolve()
        if not (handler_dir / "handler.py").is_file():
            raise FileNotFoundError(f"{handler_dir} has no handler.py")
        spec, problems = _spec_for(handler_dir, stack_path)
    else:  # a function name in a stack file
        name = str(target)
        files = [stack_path] if stack_path else list(_stacks_above(Path.cwd()))[:1]
        if not files:
            raise FileNotFoundError(
                f"{name!r} is not a folder, and no stack.yml was found from {Path.cwd()} up: "
                "pass the handler folder or stack="
            )
        try:
            functions = load_stack(files[0]).functions
        except StackError as exc:
            raise ValueError(str(exc)) from None
        if name not in functions:
            known = ", ".join(functions) or "none"
            raise LookupError(f"{files[0]}: functions.{name}: no such function (has: {known})")
        spec, problems = functions[name], []
        handler_dir = spec.handler
    if lang is not None:
        chosen = LANG_ALIASES.get(lang, lang)
        if chosen not in LANGS:
            raise ValueError(f"unknown lang {lang!r}; expected one of {', '.join(LANGS)}")
    elif spec is not None:
        chosen = spec.lang
    else:
        hint = f" ({'; '.join(problems)})" if problems else ""
        raise LookupError(
            f"no stack.yml above {handler_dir} has a function with this handler folder{hint}: "
            "pass lang= (python3, python3-flask, python3-http or veba-cloudevent)"
        )
    if spec is None:
        return _Function(handler_dir.name, handler_dir, chosen, {}, None, DEFAULT_TIMEOUT)
    return _Function(
        spec.name, handler_dir, chosen, dict(spec.environment), list(spec.secrets), spec.timeout
    )


# --- the request -------------------------------------------------------------------------


def _request(
    event: Any, attempt: int, deadline: float, extra: Mapping[str, str] | None
) -> tuple[bytes, dict[str, str]]:
    """Body and headers as a delivery sends them (structured mode)."""
    from veba.events import Event as LogEvent
    from veba.sdk.event import Event as SdkEvent
    from veba.targets.functions import delivery_headers

    doc: Any
    if isinstance(event, SdkEvent | LogEvent):
        doc = event.to_dict()
    elif isinstance(event, Mapping):
        doc = dict(event)
    elif isinstance(event, str | bytes | bytearray):
        raw = event.encode() if isinstance(event, str) else bytes(event)
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        if not (isinstance(doc, dict) and "specversion" in doc):  # not an event: sent as is
            kind = "application/json" if doc is not None else "text/plain; charset=utf-8"
            return raw, {"Content-Type": kind, **(extra or {})}
    else:
        raise TypeError(
            f"veba_invoke: event must be a CloudEvent dict, JSON, or Event, "
            f"not {type(event).__name__}"
        )
    attributes = {k: v for k, v in doc.items() if k not in ("data", "data_base64")}
    body = json.dumps(doc).encode()
    try:
        log_event = LogEvent(
            {k: str(v) for k, v in attributes.items()},
            doc.get("data"),
        )
        headers = delivery_headers(log_event, attempt=attempt, deadline=deadline)
    except KeyError:  # no id/source/type: not a complete CloudEvent, sent anyway
        headers = {"Content-Type": "application/cloudevents+json"}
    headers.update(extra or {})
    return body, headers


def _environment(
    fn: _Function, extra: Mapping[str, str] | None, secrets_dir: Path
) -> dict[str, str]:
    """The variables a worker of ``fn`` gets (as FunctionPool._worker_env sets them)."""
    env = {k: os.environ[k] for k in _BASE_ENV if k in os.environ}
    env.setdefault("PATH", os.defpath)
    env.setdefault("LANG", "C.UTF-8")
    env.setdefault("TMPDIR", tempfile.gettempdir())
    env["HOSTNAME"] = f"{fn.name}-0"
    env.update(fn.environment)
    env.update({str(k): str(v) for k, v in (extra or {}).items()})
    env["VEBA_FUNCTION_NAME"] = fn.name
    env["VEBA_SECRETS_DIR"] = env["secret_mount_path"] = str(secrets_dir)
    return env


def _secret_values(fn: _Function, secrets: Mapping[str, str | bytes] | None) -> dict[str, bytes]:
    given = {k: v.encode() if isinstance(v, str) else bytes(v) for k, v in (secrets or {}).items()}
    if fn.secrets is not None:
        undeclared = sorted(set(given) - set(fn.secrets))
        if undeclared:
            raise ValueError(
                f"functions.{fn.name}.secrets does not declare {', '.join(map(repr, undeclared))}: "
                "the deployed function would not see it; add it under `secrets:` in stack.yml"
            )
        missing = sorted(set(fn.secrets) - set(given))
        if missing:
            warnings.warn(
                f"functions.{fn.name} declares secret(s) {', '.join(missing)} that the test does "
                "not give (secrets={...}); the handler gets SecretNotFound for them",
                stacklevel=3,
            )
    return given


# --- running the handler -------------------------------------------------------------------


def invoke(
    target: str | os.PathLike[str],
    event: Any,
    *,
    lang: str | None = None,
    secrets: Mapping[str, str | bytes] | None = None,
    environment: Mapping[str, str] | None = None,
    stack: str | os.PathLike[str] | None = None,
    mode: str = "inprocess",
    timeout: float | None = None,
    attempt: int = 1,
    headers: Mapping[str, str] | None = None,
    raises: bool = True,
    venv_cache: str | os.PathLike[str] | None = None,
) -> Response:
    """Call a handler as a delivery would and return its `Response`.

    ``target`` is the handler folder (lang, environment and secret names come
    from the stack.yml above it that lists it), or a function name in ``stack``
    (default: the first stack.yml from the current directory up). ``secrets``
    maps names to values; a name the stack does not declare is refused, as the
    deployed function would not see it. ``raises=False`` returns the error
    response instead of raising `HandlerError`.
    """
    if mode not in ("inprocess", "worker"):
        raise ValueError("mode is 'inprocess' or 'worker'")
    fn = _resolve(target, lang, stack)
    seconds = fn.timeout if timeout is None else float(timeout)
    values = _secret_values(fn, secrets)
    body, request_headers = _request(event, attempt, time.time() + seconds, headers)
    if mode == "worker":
        cache = Path(venv_cache) if venv_cache else _default_venv_cache()
        response = _invoke_worker(fn, body, request_headers, values, environment, seconds, cache)
        cause: BaseException | None = None
    else:
        response, cause = _invoke_inprocess(fn, body, request_headers, values, environment, seconds)
    response = _scrubbed(response, Scrubber(values.values()))
    if raises and response.error is not None:
        raise HandlerError(fn.name, response) from cause
    return response


def _default_venv_cache() -> Path:
    data = os.environ.get("VEBA_DATA_DIR")
    if data:
        return Path(data) / "venvs"
    return Path(tempfile.gettempdir()) / f"veba-test-venvs-{os.getuid()}"


def _invoke_inprocess(
    fn: _Function,
    body: bytes,
    headers: dict[str, str],
    secrets: dict[str, bytes],
    environment: Mapping[str, str] | None,
    timeout: float,
) -> tuple[Response, BaseException | None]:
    from veba.functions import worker
    from veba.functions._workerproc import write_secrets as _write_secrets

    secrets_dir = _write_secrets(fn.name, secrets)
    try:
        env = _environment(fn, environment, secrets_dir)
        with _patched_environ(env), _handler_imported(fn.handler_dir) as module:
            handle = getattr(module, "handle", None)
            if not callable(handle):
                raise AttributeError(f"{module.__file__} defines no function 'handle'")
            worker._check_arity(handle, fn.lang)
            call = worker._make_call(worker.as_callable(handle), fn.lang)
            req = {
                "id": 1,
                "method": "POST",
                "path": "/",
                "query": {},
                "headers": headers,
                "timeout": timeout,
            }
            try:
                head, out, failure = worker.dispatch(call, req, body)
            finally:
                logging.getLogger(f"function.{fn.name}").handlers.clear()  # ctx.logger's
    finally:
        shutil.rmtree(secrets_dir, ignore_errors=True)
    return _response(head, out), failure


def _scrubbed(response: Response, scrubber: Scrubber) -> Response:
    """The response as the appliance would give it: the secret values taken out."""
    if not scrubber:
        return response
    return Response(
        status=response.status,
        body=scrubber.data(response.body),
        headers={k: scrubber.text(v) for k, v in response.headers.items()},
        error=None if response.error is None else scrubber.text(response.error),
        traceback=None if response.traceback is None else scrubber.text(response.traceback),
    )


def _response(head: Mapping[str, Any], body: bytes) -> Response:
    return Response(
        status=int(head.get("status") or 500),
        body=body,
        headers=dict(head.get("headers") or {}),
        error=head.get("error"),
        traceback=head.get("traceback"),
    )


@contextlib.contextmanager
def _patched_environ(env: Mapping[str, str]) -> Iterator[None]:
    """The function's variables on top of the test process's, restored afterwards."""
    keys = {*env, "VEBA_SECRETS_DIR", "secret_mount_path", "VEBA_FUNCTION_NAME"}
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _handler_imported(handler_dir: Path) -> Iterator[Any]:
    """The handler imported as the worker imports it, then forgotten again (with
    its own modules), so that the next test can load another handler."""
    from veba.functions import worker

    def ours(name: str) -> bool:
        return name in ("function", "handler") or name.startswith("function.")

    saved = {k: v for k, v in sys.modules.items() if ours(k)}
    for key in saved:
        del sys.modules[key]
    before = set(sys.modules)
    path = list(sys.path)
    cwd = os.getcwd()
    try:
        os.chdir(handler_dir)
        yield worker._import_handler(str(handler_dir))
    finally:
        os.chdir(cwd)
        sys.path[:] = path
        for key in set(sys.modules) - before:
            module_file = getattr(sys.modules[key], "__file__", None) or ""
            if ours(key) or module_file.startswith(str(handler_dir) + os.sep):
                del sys.modules[key]
        sys.modules.update(saved)


def _invoke_worker(
    fn: _Function,
    body: bytes,
    headers: dict[str, str],
    secrets: dict[str, bytes],
    environment: Mapping[str, str] | None,
    timeout: float,
    venv_cache: Path,
) -> Response:
    from veba.functions.build import ensure_venv
    from veba.functions.supervisor import FunctionPool, Invocation

    python = ensure_venv(fn.handler_dir, venv_cache)

    def sink(function: str, stream: str, line: str) -> None:
        # Scrubbed of the secrets by the pool already, as in the appliance.
        sys.stderr.write(f"[{function} {stream}] {line}\n")

    async def run() -> Response:
        pool = FunctionPool(
            fn.name,
            python=python,
            handler_dir=fn.handler_dir,
            lang=fn.lang,
            environment={**fn.environment, **(environment or {})},
            secrets=secrets,
            log_sink=sink,
        )
        await pool.start()
        try:
            outcome = await pool.invoke(Invocation(body=body, headers=headers), timeout)
        finally:
            await pool.stop()
        if outcome.kind in ("timeout", "crash"):
            return Response(0, b"", {}, outcome.error, outcome.traceback)
        return Response(
            outcome.status, outcome.body, dict(outcome.headers), outcome.error, outcome.traceback
        )

    # Its own thread and event loop: the test may be running one already.
    with concurrent.futures.ThreadPoolExecutor(1) as runner:
        return runner.submit(asyncio.run, run()).result()


# --- the pytest plugin ---------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("veba")
    group.addoption(
        "--veba-worker",
        action="store_true",
        help="veba_invoke: run handlers in real worker processes, in their own venvs",
    )


@pytest.fixture
def veba_event() -> Callable[..., dict[str, Any]]:
    """``veba_event("VmPoweredOnEvent", {"data.Vm.Name": "web-01"})``: a sample CloudEvent."""
    return sample_event


@pytest.fixture
def veba_invoke(request: pytest.FixtureRequest) -> Callable[..., Response]:
    """``veba_invoke(handler_dir_or_name, event, *, secrets=..., environment=...)``."""
    worker_mode = bool(request.config.getoption("veba_worker", default=False))
    cache: Path | None = None
    store = getattr(request.config, "cache", None)  # absent with -p no:cacheprovider
    if store is not None:
        cache = store.mkdir("veba") / "venvs"

    def call(target: str | os.PathLike[str], event: Any, **options: Any) -> Response:
        if worker_mode:
            options.setdefault("mode", "worker")
        if cache is not None:
            options.setdefault("venv_cache", cache)
        return invoke(target, event, **options)

    return call
