"""The SDK inside a real worker: importable in every function venv (and nothing else of
the appliance is), told the call's deadline, and its errors mapped to clear outcomes."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from veba.functions import FunctionPool, Invocation, ensure_venv
from veba.functions.build import ensure_sdk

HANDLER = """
import importlib.util, sys
import veba.sdk
from veba.sdk import Event, deadline, attempt, get_logger, secret

log = get_logger()

def handle(req):
    if req == "paths":
        return {
            "sdk": veba.sdk.__file__,
            "functions": importlib.util.find_spec("veba.functions") is not None,
            "yaml": importlib.util.find_spec("yaml") is not None,
            "state": hasattr(veba.sdk, "idempotent"),
        }
    if req == "secret":
        return secret("nope")
    if req == "set":
        return {1, 2}
    event = Event(req)
    log.info("handling", vm=event.get("data.Vm.Name"), token=secret("token"))
    return {"vm": event.require("data.Vm.Vm.Value"), "deadline": deadline(), "attempt": attempt()}
"""


@pytest.fixture(scope="module")
def python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("plain")
    (folder / "handler.py").write_text("def handle(req):\n    return req\n")
    return ensure_venv(folder, tmp_path_factory.mktemp("venvs"))


@pytest.fixture
async def start(python: Path, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    pools: list[FunctionPool] = []
    lines: list[tuple[str, str]] = []

    async def make(source: str, **options: Any) -> FunctionPool:
        folder = tmp_path / "fn"
        folder.mkdir()
        (folder / "handler.py").write_text(textwrap.dedent(source))
        pool = FunctionPool(
            "sdk-fn",
            python=python,
            handler_dir=folder,
            lang="python3",
            log_sink=lambda _, stream, line: lines.append((stream, line)),
            **options,
        )
        pool.lines = lines  # type: ignore[attr-defined]
        pools.append(pool)
        await pool.start()
        return pool

    yield make
    for pool in pools:
        await pool.stop()


async def test_the_sdk_and_only_the_sdk_is_in_the_venv(
    start: Callable[..., Any], python: Path
) -> None:
    pool = await start(HANDLER)
    out = await pool.invoke(Invocation(b"paths"), timeout=10)
    got = json.loads(out.body)
    sdk_dir = python.parent.parent.parent / pool.sdk_dir.name
    assert pool.sdk_dir == sdk_dir and sdk_dir.name.startswith("sdk-")  # beside the venv
    assert got["sdk"] == str(sdk_dir / "veba" / "sdk" / "__init__.py")
    assert not got["functions"] and not got["yaml"]
    assert got["state"] == (Path(__file__).parents[2] / "src/veba/sdk/state.py").exists()


async def test_deadline_attempt_logging_and_clear_errors(
    start: Callable[..., Any], sample: dict
) -> None:
    pool = await start(HANDLER, secrets={"token": b"tok-123456"})
    deadline = time.time() + 20
    headers = {
        "Content-Type": "application/cloudevents+json",
        "X-Veba-Deadline": f"{deadline:.6f}",
        "X-Veba-Attempt": "2",
    }
    ok = await pool.invoke(Invocation(json.dumps(sample).encode(), headers), timeout=10)
    got = json.loads(ok.body)
    assert ok.ok and got["vm"] == "vm-56" and got["attempt"] == 2
    assert got["deadline"] < deadline and got["deadline"] == pytest.approx(time.time() + 10, abs=2)

    sample["data"]["Vm"] = None
    missing = await pool.invoke(Invocation(json.dumps(sample).encode(), headers), timeout=10)
    assert (missing.kind, missing.status) == ("error", 422)
    assert missing.error is not None and missing.error.startswith("MissingField: event 08179137")
    assert "data.Vm.Vm.Value: data.Vm is null" in missing.error
    assert missing.traceback and "handler.py" in missing.traceback

    undeclared = await pool.invoke(Invocation(b"secret"), timeout=10)
    assert (undeclared.status, undeclared.kind) == (500, "error")  # retried: a deploy fixes it
    assert "SecretNotFound: secret 'nope' is not available to function 'sdk-fn'" in str(
        undeclared.error
    )
    assert "declare it under `secrets:`" in str(undeclared.error)

    bad = await pool.invoke(Invocation(b"set"), timeout=10)
    assert bad.status == 500 and "unsupported type 'set'" in str(bad.error)

    assert pool.stats["crashes"] == 0 and pool.stats["restarts"] == 0  # one worker throughout
    logged = [json.loads(line) for stream, line in pool.lines if line.startswith("{")]
    assert logged[0]["vm"] == "test-01" and logged[0]["token"] == "[REDACTED]"
    assert logged[0]["event"] == sample["id"] and logged[0]["attempt"] == 2
    text = "\n".join(line for _, line in pool.lines)
    assert "tok-123456" not in text
    assert "error: handler return value has unsupported type 'set'" in text


def test_ensure_sdk_copies_once_by_content(tmp_path: Path) -> None:
    first = ensure_sdk(tmp_path)
    assert ensure_sdk(tmp_path) == first
    files = {p.relative_to(first).as_posix() for p in first.rglob("*.py")}
    assert {"veba/__init__.py", "veba/sdk/__init__.py", "veba/sdk/event.py"} <= files
    assert not any(p.startswith("veba/functions") for p in files)
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no leftovers


def test_ctx_secret_of_an_undeclared_secret_is_clear(
    veba_event: Callable[..., dict], veba_invoke: Callable[..., Any], tmp_path: Path
) -> None:
    fn = tmp_path / "ce"
    fn.mkdir()
    (fn / "handler.py").write_text("def handle(event, ctx):\n    return ctx.secret('nope')\n")
    event = veba_event("VmPoweredOnEvent")
    response = veba_invoke(fn, event, lang="veba-cloudevent", raises=False)
    assert response.status == 500
    assert response.error == (
        "SecretMissing: secret 'nope' is not available to function 'ce': "
        "declare it under `secrets:` in stack.yml (functions.ce.secrets)"
    )
    assert veba_invoke(fn, event, lang="veba-cloudevent", secrets={"nope": "x\n"}).text == "x"
