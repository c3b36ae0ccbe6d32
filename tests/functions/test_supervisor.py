"""Warm pools under faults: exceptions, timeouts, crashes, load errors; logs, secrets, env."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from veba.functions import FunctionLoadError, FunctionPool, Invocation

from .conftest import Logs, PoolFactory, process_gone, wait_until

ECHO_OR_FAULT = """
    import os, sys, time

    def handle(req):
        if req == "raise":
            return 1 / 0
        if req.startswith("sleep"):
            time.sleep(float(req.split()[1]))
        if req == "exit":
            print("about to exit", file=sys.stderr)
            os._exit(3)
        if req == "segv":
            import ctypes
            ctypes.string_at(0)
        return f"{req} from {os.getpid()}"
"""


def pid_of(body: bytes) -> int:
    return int(body.split()[-1])


async def test_handler_exception_is_an_error_outcome_and_worker_lives_on(
    pool: PoolFactory, logs: Logs
) -> None:
    fn = await pool(ECHO_OR_FAULT)
    before = await fn.invoke(Invocation(b"a"), timeout=10)
    out = await fn.invoke(Invocation(b"raise"), timeout=10)
    assert (out.kind, out.status, out.ok) == ("error", 500, False)
    assert out.error == "ZeroDivisionError: division by zero"
    assert out.traceback is not None and "handler.py" in out.traceback
    assert "ZeroDivisionError" in out.traceback
    after = await fn.invoke(Invocation(b"b"), timeout=10)
    assert after.ok and pid_of(after.body) == pid_of(before.body)
    await wait_until(lambda: any("ZeroDivisionError" in line for line in logs.of("stderr")))
    assert fn.stats["errors"] == 1 and fn.stats["restarts"] == 0


async def test_timeout_kills_and_restarts_while_pipelined_calls_complete(
    pool: PoolFactory, logs: Logs
) -> None:
    fn = await pool(ECHO_OR_FAULT, workers=1, pipeline=8)
    first_pid = fn.stats["pids"][0]
    slow = asyncio.create_task(fn.invoke(Invocation(b"sleep 60"), timeout=0.5))
    await wait_until(lambda: fn.stats["in_flight"] == 1)
    queued = [asyncio.create_task(fn.invoke(Invocation(b"q%d" % i), timeout=10)) for i in range(5)]
    await wait_until(lambda: fn.stats["in_flight"] == 6)  # pipelined behind the slow one
    out = await slow
    assert (out.kind, out.status) == ("timeout", 0)
    assert out.error is not None and "timed out after 0.5s" in out.error
    assert 0.5 <= out.duration < 10
    done = await asyncio.gather(*queued)
    assert [o.body.split()[0] for o in done] == [b"q%d" % i for i in range(5)]
    assert all(o.ok for o in done)
    new_pid = pid_of(done[0].body)
    assert new_pid != first_pid
    await wait_until(lambda: process_gone(first_pid))
    assert fn.stats["restarts"] == 1 and fn.stats["timeouts"] == 1
    assert any("timeout" in line for line in logs.of("system"))


async def test_each_call_keeps_its_own_timeout_behind_a_call_with_a_longer_one(
    pool: PoolFactory,
) -> None:
    # A worker has one timer, due at its first running call's timeout: a call
    # with a shorter timeout that runs after it must still end at its own.
    fn = await pool(ECHO_OR_FAULT, workers=1, pipeline=8)
    first = asyncio.create_task(fn.invoke(Invocation(b"sleep 0.3"), timeout=60))
    await wait_until(lambda: fn.stats["in_flight"] == 1)
    short = asyncio.create_task(fn.invoke(Invocation(b"sleep 60"), timeout=0.5))
    assert (await first).ok
    out = await asyncio.wait_for(short, 20)  # not after the first call's 60 s
    assert (out.kind, out.status) == ("timeout", 0)
    assert 0.5 <= out.duration < 10
    again = await fn.invoke(Invocation(b"a"), timeout=10)  # a new worker, timed anew
    assert again.ok and fn.stats["timeouts"] == 1


async def test_a_call_that_answers_in_time_is_never_timed_out(pool: PoolFactory) -> None:
    # Many calls on one worker, each well within its timeout, over more than
    # several timeouts' worth of time: the worker's timer looks, finds each
    # running call young, and waits for the next.
    fn = await pool(ECHO_OR_FAULT, workers=1, pipeline=8)
    outs = []
    for _ in range(12):
        outs.append(await fn.invoke(Invocation(b"sleep 0.1"), timeout=0.3))
    assert all(o.ok for o in outs), [o.error for o in outs if not o.ok]
    assert fn.stats["timeouts"] == 0 and fn.stats["restarts"] == 0


@pytest.mark.parametrize(
    ("request_body", "death"), [(b"exit", "exit code 3"), (b"segv", "SIGSEGV")]
)
async def test_crash_fails_the_running_call_and_restarts(
    pool: PoolFactory, logs: Logs, request_body: bytes, death: str
) -> None:
    fn = await pool(ECHO_OR_FAULT, workers=1)
    first_pid = fn.stats["pids"][0]
    crash = asyncio.create_task(fn.invoke(Invocation(request_body), timeout=10))
    behind = [asyncio.create_task(fn.invoke(Invocation(b"b%d" % i), timeout=10)) for i in range(3)]
    out = await crash
    assert (out.kind, out.status, out.ok) == ("crash", 0, False)
    assert out.error is not None and death in out.error
    if request_body == b"exit":
        assert out.traceback is not None and "about to exit" in out.traceback
    done = await asyncio.gather(*behind)
    assert all(o.ok for o in done), done
    assert pid_of(done[0].body) != first_pid
    assert fn.stats["crashes"] == 1 and fn.stats["restarts"] == 1
    assert any("crashed" in line for line in logs.of("system"))


async def test_load_balances_over_workers(pool: PoolFactory) -> None:
    fn = await pool(ECHO_OR_FAULT, workers=2, pipeline=2)
    outs = await asyncio.gather(
        *(fn.invoke(Invocation(b"sleep 0.05"), timeout=10) for _ in range(8))
    )
    assert all(o.ok for o in outs)
    assert {pid_of(o.body) for o in outs} == set(fn.stats["pids"])


async def test_cancelled_invocations_do_not_disturb_the_pool(pool: PoolFactory) -> None:
    fn = await pool(ECHO_OR_FAULT, workers=1, pipeline=1)
    running = asyncio.create_task(fn.invoke(Invocation(b"sleep 0.3"), timeout=10))
    waiting = asyncio.create_task(fn.invoke(Invocation(b"never"), timeout=10))
    await wait_until(lambda: fn.stats["queued"] == 1)
    waiting.cancel()
    running.cancel()
    await asyncio.gather(running, waiting, return_exceptions=True)
    assert fn.stats["queued"] == 0
    assert (await fn.invoke(Invocation(b"after"), timeout=10)).body.startswith(b"after")


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import os\n\ndef handle(req)\n    return req\n", ["handler.py", "line 3", "SyntaxError"]),
        ("import no_such_module_veba\n", ["handler.py", "ModuleNotFoundError", "no_such_module"]),
        ("def other(req):\n    return req\n", ["handler.py", "defines no function 'handle'"]),
        ("import os\nos._exit(2)\n", ["handler.py", "exit code 2"]),
        (
            "def handle(event, context):\n    return None\n",
            ["handler.py", "lang python3 calls handle(req)", "needs lang python3-http"],
        ),
    ],
)
async def test_load_errors_name_the_handler_file(
    python: Path, make_handler: Callable[..., Path], source: str, expected: list[str]
) -> None:
    folder = make_handler(source)
    fn = FunctionPool("broken", python=python, handler_dir=folder, lang="python3", workers=2)
    with pytest.raises(FunctionLoadError) as info:
        await fn.start()
    message = str(info.value)
    assert message.startswith(str(folder / "handler.py"))
    for part in expected:
        assert part in message
    assert fn.stats["alive"] == 0 and fn.secrets_dir is None


async def test_stdout_and_stderr_lines_reach_the_log_sink(pool: PoolFactory, logs: Logs) -> None:
    fn = await pool(
        """
        import sys
        print("loading")

        def handle(req):
            print("out", req)
            print("err", req, file=sys.stderr)
            return None
        """,
        name="chatty",
    )
    await fn.invoke(Invocation(b"x"), timeout=10)
    await wait_until(lambda: "out x" in logs.of("stdout"))
    await wait_until(lambda: "err x" in logs.of("stderr"))
    assert "loading" in logs.of("stdout")
    assert all(function == "chatty" for function, _, _ in logs.lines)
    assert any("ready" in line for line in logs.of("system"))


# Answers with a digest of each secret: the values themselves would be scrubbed.
READ_SECRETS = """
    import hashlib, os, stat

    def handle(req):
        folder = os.environ["VEBA_SECRETS_DIR"]
        return {
            "dir": folder,
            "same": os.environ["secret_mount_path"] == folder,
            "dir_mode": stat.S_IMODE(os.stat(folder).st_mode),
            "files": {
                name: [hashlib.sha256(open(os.path.join(folder, name), "rb").read()).hexdigest(),
                       stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode)]
                for name in sorted(os.listdir(folder))
            },
        }
"""


def _digest(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()


async def test_secrets_are_private_files_in_memory(pool: PoolFactory, tmp_path: Path) -> None:
    a = await pool(READ_SECRETS, secrets={"vc-password": b"hunter2", "token": b"t0k"})
    b = await pool(READ_SECRETS, secrets={"other": b"b-only"})
    seen_a = json.loads((await a.invoke(Invocation(b""), timeout=10)).body)
    seen_b = json.loads((await b.invoke(Invocation(b""), timeout=10)).body)
    assert seen_a["files"] == {
        "token": [_digest(b"t0k"), 0o600],
        "vc-password": [_digest(b"hunter2"), 0o600],
    }
    assert seen_b["files"] == {"other": [_digest(b"b-only"), 0o600]}
    assert seen_a["same"] and seen_a["dir_mode"] == 0o700
    folder = Path(seen_a["dir"])
    if Path("/dev/shm").is_dir():
        assert folder.parent == Path("/dev/shm")
    assert tmp_path not in folder.parents  # not beside the function's code or data
    await a.stop()
    assert not folder.exists()


async def test_worker_environment_is_minimal_and_isolated(
    pool: PoolFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VEBA_TOKEN", "appliance-secret")
    fn = await pool(
        """
        import os, sys, importlib.util

        def handle(req):
            return {
                "env": dict(os.environ),
                "yaml": importlib.util.find_spec("yaml") is not None,
                "veba.sdk": importlib.util.find_spec("veba.sdk") is not None,
                "veba.functions": importlib.util.find_spec("veba.functions") is not None,
                "path": sys.path,
            }
        """,
        name="isolated",
        environment={"VCENTER_URL": "https://vc/sdk"},
    )
    seen = json.loads((await fn.invoke(Invocation(b""), timeout=10)).body)
    env = seen["env"]
    assert "VEBA_TOKEN" not in env
    assert env["VCENTER_URL"] == "https://vc/sdk"
    assert env["VEBA_FUNCTION_NAME"] == "isolated"
    assert env["VEBA_SECRETS_DIR"] == str(fn.secrets_dir)
    assert "PATH" in env
    assert not seen["yaml"]  # the appliance's packages are not there...
    assert seen["veba.sdk"] and not seen["veba.functions"]  # ...only its stdlib-only SDK
    worker_dir = str(Path(sys.modules["veba.functions"].__file__ or "").parent)
    assert worker_dir not in seen["path"]


APPLIANCE = """
import asyncio, sys
from pathlib import Path
from veba.functions import FunctionPool

async def main():
    pool = FunctionPool("orphan", python=Path(sys.argv[1]), handler_dir=Path(sys.argv[2]),
                        lang="python3", workers=2)
    await pool.start()
    print(" ".join(map(str, pool.stats["pids"])), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_workers_die_with_a_killed_appliance(
    python: Path, make_handler: Callable[..., Path], tmp_path: Path
) -> None:
    folder = make_handler("def handle(req):\n    return req\n")
    script = tmp_path / "appliance.py"
    script.write_text(textwrap.dedent(APPLIANCE))
    with subprocess.Popen(
        [sys.executable, str(script), str(python), str(folder)],
        stdout=subprocess.PIPE,
        text=True,
    ) as appliance:
        try:
            assert appliance.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(appliance.stdout.readline), 30)
            pids = [int(p) for p in line.split()]
            assert len(pids) == 2 and not any(process_gone(p) for p in pids)
            appliance.send_signal(signal.SIGKILL)
            appliance.wait(timeout=30)
            await wait_until(lambda: all(process_gone(p) for p in pids))
        finally:
            if appliance.poll() is None:
                appliance.kill()


async def test_stop_ends_workers_and_fails_unanswered_calls(pool: PoolFactory) -> None:
    fn = await pool(ECHO_OR_FAULT, workers=1, pipeline=1, stop_grace=0.5)
    pid, secrets = fn.stats["pids"][0], fn.secrets_dir
    assert secrets is not None and secrets.is_dir()
    running = asyncio.create_task(fn.invoke(Invocation(b"sleep 60"), timeout=120))
    queued = asyncio.create_task(fn.invoke(Invocation(b"later"), timeout=120))
    await wait_until(lambda: fn.stats["queued"] == 1)
    await fn.stop()
    assert process_gone(pid)
    for task in (running, queued):
        out = await task
        assert out.kind == "crash" and out.error == "function pool stopped"
    with pytest.raises(RuntimeError):
        await fn.invoke(Invocation(b"x"), timeout=1)
    assert not secrets.exists()


async def test_restart_keeps_trying_until_the_handler_loads_again(
    pool: PoolFactory, logs: Logs, tmp_path: Path
) -> None:
    flag = tmp_path / "broken"
    fn = await pool(
        f"""
        import os
        if os.path.exists({str(flag)!r}):
            raise RuntimeError("not today")

        def handle(req):
            if req == "exit":
                os._exit(1)
            return "fine"
        """,
        workers=1,
    )
    flag.touch()
    crashed = await fn.invoke(Invocation(b"exit"), timeout=10)
    assert crashed.kind == "crash"
    waiting = asyncio.create_task(fn.invoke(Invocation(b"x"), timeout=10))
    await wait_until(lambda: any("restart failed" in line for line in logs.of("system")))
    assert any("not today" in line for line in logs.of("system"))
    assert not waiting.done() and fn.stats["alive"] == 0
    flag.unlink()
    out = await asyncio.wait_for(waiting, 30)
    assert (out.kind, out.body) == ("ok", b"fine\n")
    assert fn.stats["alive"] == 1


PRINTS = """
    import sys

    def handle(req):
        print(f"{req} one")
        print(f"{req} two", file=sys.stderr)
        sys.stdout.write(f"{req} left open")  # no newline: it ends with its call
        return "ok"
"""


async def test_what_a_call_prints_is_handed_over_under_its_events_scope(
    python: Path, make_handler: Callable[..., Path]
) -> None:
    from veba.tracing import EventScope, current_scope, event_scope

    seen: list[tuple[str, str, str | None, int | None]] = []

    def sink(function: str, stream: str, line: str) -> None:
        scope = current_scope()
        seen.append((stream, line, scope and scope.event_id, scope and scope.attempt))

    fn = FunctionPool(
        "tagged", python=python, handler_dir=make_handler(PRINTS), lang="python3", log_sink=sink
    )
    await fn.start()
    try:

        async def call(n: int) -> None:
            with event_scope(EventScope(f"e{n}", function="tagged", delivery=n, attempt=n)):
                assert (await fn.invoke(Invocation(b"c%d" % n), timeout=10)).ok

        await asyncio.gather(*(call(n) for n in range(1, 5)))  # pipelined on one worker
        await fn.invoke(Invocation(b"bare"), timeout=10)
        await wait_until(lambda: sum("bare" in line for _, line, _, _ in seen) == 3)
    finally:
        await fn.stop()
    printed = [entry for entry in seen if entry[0] != "system"]
    for n in range(1, 5):
        mine = sorted((s, line) for s, line, event, attempt in printed if event == f"e{n}")
        assert mine == [
            ("stderr", f"c{n} two"),
            ("stdout", f"c{n} left open"),
            ("stdout", f"c{n} one"),
        ]
        assert all(attempt == n for _, _, event, attempt in printed if event == f"e{n}")
    assert [event for _, line, event, _ in printed if "bare" in line] == [None] * 3
