"""Each handler signature, as the OpenFaaS templates and veba-cloudevent define it."""

from __future__ import annotations

import json
import time

from veba.functions import Invocation

from .conftest import Logs, PoolFactory, wait_until

EVENT = {
    "specversion": "1.0",
    "id": "08179137-b8e0-4973-b05f-8f212bf5003b",
    "source": "https://vc.local/sdk",
    "type": "com.vmware.event.router/event",
    "subject": "VmPoweredOffEvent",
    "time": "2020-02-11T21:29:54.9052539Z",
    "datacontenttype": "application/json",
    "vsphereapiversion": "8.0.2.0",
    "data": {
        "Key": 9902,
        "Vm": {"Name": "test-01", "Vm": {"Type": "VirtualMachine", "Value": "vm-56"}},
    },
}


async def test_python3_answers_as_the_classic_watchdog(pool: PoolFactory, logs: Logs) -> None:
    """OpenFaaS's classic templates answer with what the handler printed, then
    ``print(handle(req))``; every line still reaches the function's log."""
    fn = await pool(
        """
        import sys

        def handle(req):
            if req == "dict":
                return {"got": req}
            if req == "none":
                print("only printed")
                return None
            if req == "stderr":
                sys.stderr.write("to stderr\\n")
                return "done"
            print("first")
            return "hello " + req
        """
    )
    ok = await fn.invoke(Invocation(b"w\xc3\xb6rld"), timeout=10)
    assert (ok.kind, ok.status, ok.body) == ("ok", 200, "first\nhello wörld\n".encode())
    assert ok.headers["Content-Type"].startswith("text/plain")
    as_json = await fn.invoke(Invocation(b"dict"), timeout=10)
    assert json.loads(as_json.body) == {"got": "dict"} and as_json.body.endswith(b"\n")
    assert as_json.headers["Content-Type"] == "application/json"
    none = await fn.invoke(Invocation(b"none"), timeout=10)
    assert (none.ok, none.body) == (True, b"only printed\n")
    # stderr is the log, not the answer, unless combine_output is true (below).
    assert (await fn.invoke(Invocation(b"stderr"), timeout=10)).body == b"done\n"
    assert none.started is not None and abs(none.started - time.time()) < 60
    assert none.duration >= 0
    await wait_until(
        lambda: "only printed" in logs.of("stdout") and "to stderr" in logs.of("stderr")
    )


async def test_python3_combine_output_true_answers_with_stderr_too(pool: PoolFactory) -> None:
    fn = await pool(
        """
        import sys

        def handle(req):
            sys.stderr.write("also answered\\n")
            return req
        """,
        environment={"combine_output": "true", "content_type": "application/json"},
    )
    out = await fn.invoke(Invocation(b'{"a": 1}'), timeout=10)
    assert out.body == b'also answered\n{"a": 1}\n'
    assert out.headers["Content-Type"] == "application/json"


async def test_python3_flask_tuples(pool: PoolFactory) -> None:
    fn = await pool(
        """
        def handle(req):
            if req == "created":
                return "made", 201
            if req == "teapot":
                return {"short": "stout"}, 418, {"X-Kind": "teapot"}
            return req
        """,
        lang="python3-flask",
    )
    created = await fn.invoke(Invocation(b"created"), timeout=10)
    assert (created.status, created.body, created.kind) == (201, b"made", "ok")
    teapot = await fn.invoke(Invocation(b"teapot"), timeout=10)
    assert (teapot.status, teapot.kind) == (418, "error")
    assert teapot.headers["X-Kind"] == "teapot"
    assert json.loads(teapot.body) == {"short": "stout"}


async def test_python3_http_event_and_context(pool: PoolFactory) -> None:
    fn = await pool(
        """
        def handle(event, context):
            assert isinstance(event.body, bytes)
            return {
                "statusCode": 202,
                "body": {
                    "body": event.body.decode(),
                    "ctype": event.headers["content-type"],
                    "same": event.headers.get("Content-Type"),
                    "method": event.method,
                    "query": event.query,
                    "path": event.path,
                    "hostname": context.hostname,
                },
                "headers": {"X-Handled": "yes"},
            }
        """,
        lang="python3-http",
        name="http-fn",
    )
    inv = Invocation(
        b'{"a": 1}',
        headers={"Content-Type": "application/json"},
        method="PUT",
        path="/tag",
        query={"dry": "1"},
    )
    out = await fn.invoke(inv, timeout=10)
    assert (out.kind, out.status) == ("ok", 202)
    assert out.headers["X-Handled"] == "yes"
    assert json.loads(out.body) == {
        "body": '{"a": 1}',
        "ctype": "application/json",
        "same": "application/json",
        "method": "PUT",
        "query": {"dry": "1"},
        "path": "/tag",
        "hostname": "http-fn-0",
    }


async def test_python3_http_bad_return_is_an_error_not_a_crash(pool: PoolFactory) -> None:
    fn = await pool(
        """
        def handle(event, context):
            if event.body == b"str":
                return "not a dict"
            if event.body == b"status":
                return {"statusCode": "two hundred"}
            return {"body": b"bytes stay bytes"}
        """,
        lang="python3-http",
    )
    bad = await fn.invoke(Invocation(b"str"), timeout=10)
    assert (bad.kind, bad.status) == ("error", 500)
    assert bad.error is not None and "'str'" in bad.error and "statusCode" in bad.error
    status = await fn.invoke(Invocation(b"status"), timeout=10)
    assert status.error is not None and "invalid status code" in status.error
    fine = await fn.invoke(Invocation(b"x"), timeout=10)
    assert (fine.ok, fine.body) == (True, b"bytes stay bytes")


async def test_veba_cloudevent_structured_and_binary(pool: PoolFactory) -> None:
    fn = await pool(
        """
        def handle(event, ctx):
            ctx.logger.info("handling %s", event.id)
            return {
                "id": event.id,
                "type": event["type"],
                "subject": event.subject,
                "time": event.time,
                "ext": event.vsphereapiversion,
                "missing": event.get("dataschema", "none"),
                "vm": event.data["Vm"]["Name"] if event.data else None,
                "attrs": sorted(event.attributes),
                "function": ctx.function_name,
                "attempt": ctx.attempt,
                "deadline": ctx.deadline,
                "secrets": str(ctx.secrets_dir),
            }
        """,
        lang="veba-cloudevent",
        name="ce-fn",
    )
    deadline = time.time() + 30
    structured = Invocation(
        json.dumps(EVENT).encode(),
        headers={
            "content-type": "application/cloudevents+json",
            "X-Veba-Attempt": "3",
            "X-Veba-Deadline": str(deadline),
        },
    )
    out = await fn.invoke(structured, timeout=10)
    assert out.ok, out
    got = json.loads(out.body)
    assert got["id"] == EVENT["id"] and got["type"] == EVENT["type"]
    assert (got["subject"], got["time"], got["ext"]) == (
        "VmPoweredOffEvent",
        EVENT["time"],
        "8.0.2.0",
    )
    assert (got["missing"], got["vm"]) == ("none", "test-01")
    assert "data" not in got["attrs"] and "specversion" in got["attrs"]
    assert (got["function"], got["attempt"]) == ("ce-fn", 3)
    assert got["deadline"] == deadline
    assert got["secrets"] == str(fn.secrets_dir)

    binary = Invocation(
        json.dumps(EVENT["data"]).encode(),
        headers={
            "ce-specversion": "1.0",
            "ce-id": "b-1",
            "ce-source": "https://vc.local/sdk",
            "ce-type": "com.vmware.event.router/event",
            "ce-subject": "VmPoweredOnEvent",
            "content-type": "application/json",
        },
    )
    got = json.loads((await fn.invoke(binary, timeout=10)).body)
    assert (got["id"], got["subject"], got["vm"], got["attempt"]) == (
        "b-1",
        "VmPoweredOnEvent",
        "test-01",
        1,
    )
    assert got["deadline"] is None


async def test_veba_cloudevent_rejects_a_body_that_is_no_event(pool: PoolFactory) -> None:
    fn = await pool("def handle(event, ctx):\n    return None\n", lang="veba-cloudevent")
    out = await fn.invoke(Invocation(b"not json"), timeout=10)
    assert (out.kind, out.status) == ("error", 400)
    assert out.error is not None and "not a structured CloudEvent" in out.error


async def test_unsupported_return_type_is_named(pool: PoolFactory) -> None:
    fn = await pool(
        """
        class Thing:
            pass

        def handle(req):
            return Thing() if req == "thing" else req
        """
    )
    out = await fn.invoke(Invocation(b"thing"), timeout=10)
    assert (out.kind, out.status) == ("error", 500)
    assert out.error is not None and "'Thing'" in out.error
    assert (await fn.invoke(Invocation(b"next"), timeout=10)).body == b"next\n"


async def test_module_state_survives_between_calls(pool: PoolFactory) -> None:
    fn = await pool(
        """
        import os
        calls = 0

        def handle(req):
            global calls
            calls += 1
            return {"calls": calls, "pid": os.getpid()}
        """
    )
    results = [json.loads((await fn.invoke(Invocation(b""), timeout=10)).body) for _ in range(5)]
    assert [r["calls"] for r in results] == [1, 2, 3, 4, 5]
    assert len({r["pid"] for r in results}) == 1


async def test_helpers_import_as_in_openfaas_templates(pool: PoolFactory) -> None:
    fn = await pool(
        """
        from .helpers import shout
        import helpers

        def handle(req):
            return shout(req) + helpers.shout("!")
        """,
        files={"helpers.py": "def shout(s):\n    return s.upper()\n"},
    )
    assert (await fn.invoke(Invocation(b"hey"), timeout=10)).body == b"HEY!\n"


async def test_write_debug_logs_the_response(pool: PoolFactory, logs: Logs) -> None:
    fn = await pool(
        "def handle(req):\n    return 'debug-' + req\n", environment={"write_debug": "true"}
    )
    await fn.invoke(Invocation(b"body"), timeout=10)
    await wait_until(lambda: "debug-body" in logs.of("stderr"))
