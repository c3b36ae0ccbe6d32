"""`veba.sdk.state` against a real appliance API (uvicorn in a thread, real SQLite):
`@idempotent`, `@latest_only` and the store client, in every handler signature."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from tests.support import ServedAppliance
from veba.functions.worker import CloudEvent, EventContext, Headers, HttpEvent, _function_logger
from veba.sdk.event import MissingField, NotACloudEvent
from veba.sdk.state import (
    IdempotencyInProgress,
    IdempotencyKeyReused,
    RevisionConflict,
    Status,
    StoreClient,
    StoreDenied,
    StoreUnavailable,
    idempotent,
    latest_only,
    store,
)

SOURCE = "https://vc01.example/sdk"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServedAppliance]:
    served = ServedAppliance(tmp_path / "data").start()
    yield served
    served.stop()


@pytest.fixture
def client(served: ServedAppliance) -> StoreClient:
    return StoreClient(served.url, served.issue("fn-a"), "fn-a")


@pytest.fixture
def env(served: ServedAppliance, monkeypatch: pytest.MonkeyPatch) -> ServedAppliance:
    """The worker's environment, as the appliance sets it for fn-a's pool."""
    monkeypatch.setenv("VEBA_API_URL", served.url)
    monkeypatch.setenv("VEBA_STORE_TOKEN", served.issue("fn-a"))
    monkeypatch.setenv("VEBA_FUNCTION_NAME", "fn-a")
    monkeypatch.setenv("VEBA_FUNCTION_TIMEOUT", "10")
    return served


def event(key: int, vm: str = "vm-56", *, eid: str | None = None, **data: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": eid or f"evt-{key}",
        "source": SOURCE,
        "type": "com.vmware.event.router/event",
        "subject": "VmPoweredOnEvent",
        "datacontenttype": "application/json",
        "data": {"Key": key, "Vm": {"Name": vm, "Vm": {"Type": "VirtualMachine", "Value": vm}}}
        | data,
    }


def records(served: ServedAppliance, prefix: str = "") -> list[dict[str, Any]]:
    r = httpx.get(
        f"{served.url}/api/v1/store/fn-a",
        params={"prefix": prefix},
        headers={"Authorization": f"Bearer {served.token}"},
    )
    r.raise_for_status()
    entries: list[dict[str, Any]] = r.json()["entries"]
    return entries


# --- @idempotent -----------------------------------------------------------------------


def test_a_duplicate_gets_the_stored_result(env: ServedAppliance) -> None:
    calls: list[str] = []

    @idempotent
    def handle(req: str) -> dict[str, Any]:
        calls.append(req)
        return {"ticket": len(calls), "raw": b"\x00\xff", "pair": (1, "a"), "$odd": [None]}

    text = json.dumps(event(1))
    first = handle(text)
    second = handle(text)
    assert len(calls) == 1
    assert second == first == {"ticket": 1, "raw": b"\x00\xff", "pair": (1, "a"), "$odd": [None]}
    [record] = records(env, "idempotent.")
    assert record["value"]["status"] == Status.COMPLETED
    assert record["value"]["event"] == "evt-1"
    assert record["expires_at"] == pytest.approx(time.time() + 3600, abs=60)


def test_the_key_is_a_path_or_a_function(env: ServedAppliance) -> None:
    runs: list[int] = []

    @idempotent(key="data.Key", expires_after=60, name="by-key")
    def by_key(req: str) -> int:
        runs.append(json.loads(req)["data"]["Key"])
        return len(runs)

    # Different CloudEvent ids, the same vCenter event: one run.
    assert by_key(json.dumps(event(7, eid="a"))) == 1
    assert by_key(json.dumps(event(7, eid="b"))) == 1
    assert by_key(json.dumps(event(8, eid="c"))) == 2

    @idempotent(key=lambda e: e.require("data.Vm.Name"), payload=None)
    def by_vm(req: str) -> str:
        runs.append(0)
        return "ok"

    by_vm(json.dumps(event(1, "vm-1")))
    by_vm(json.dumps(event(2, "vm-1")))  # another payload, no check asked for
    assert runs.count(0) == 1
    record = records(env, "idempotent.by-key.")[0]["value"]
    assert record["key"] in ("7", "8")
    assert records(env, "idempotent.by-key.")[0]["expires_at"] < time.time() + 61


def test_another_payload_under_the_same_key_is_an_error(env: ServedAppliance) -> None:
    @idempotent(key="data.Key")
    def handle(req: str) -> str:
        return "done"

    handle(json.dumps(event(5)))
    changed = event(5, eid="other", FullFormattedMessage="something else")
    with pytest.raises(IdempotencyKeyReused, match="different payload") as info:
        handle(json.dumps(changed))
    assert info.value.http_status == 422  # the worker answers 422: not retried


def test_a_failed_call_leaves_no_record(env: ServedAppliance) -> None:
    attempts: list[int] = []

    @idempotent
    def handle(req: str) -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("ticket system down")
        return "filed"

    text = json.dumps(event(3))
    with pytest.raises(ConnectionError):
        handle(text)
    assert records(env) == []
    assert handle(text) == "filed"
    assert handle(text) == "filed"
    assert len(attempts) == 2


def test_an_error_status_is_not_stored(env: ServedAppliance) -> None:
    answers = iter([{"statusCode": 503, "body": "busy"}, {"statusCode": 201, "body": "made"}])

    @idempotent
    def handle(event: HttpEvent, context: Any) -> Any:
        return next(answers)

    request = HttpEvent(json.dumps(event(4)).encode(), Headers({}), "POST", {}, "/")
    assert handle(request, None) == {"statusCode": 503, "body": "busy"}
    assert handle(request, None) == {"statusCode": 201, "body": "made"}
    assert handle(request, None) == {"statusCode": 201, "body": "made"}  # stored


def test_every_handler_signature(env: ServedAppliance) -> None:
    runs: list[str] = []

    @idempotent
    def plain(req: str) -> str:
        runs.append("plain")
        return "p"

    @idempotent
    def http(event: HttpEvent, context: Any) -> dict[str, Any]:
        runs.append("http")
        return {"statusCode": 200, "body": b"h"}

    @idempotent
    def native(event: CloudEvent, ctx: EventContext) -> tuple[Any, ...]:
        runs.append("native")
        return {"n": 1}, 202, {"X-A": "b"}

    ce = event(9)
    structured = json.dumps(ce).encode()
    binary = HttpEvent(
        json.dumps(ce["data"]).encode(),
        Headers(
            {
                "ce-specversion": "1.0",
                "ce-id": ce["id"],
                "ce-source": SOURCE,
                "ce-type": ce["type"],
                "content-type": "application/json",
            }
        ),
        "POST",
        {},
        "/",
    )
    attrs = {k: v for k, v in ce.items() if k != "data"}
    ctx = EventContext("fn-a", None, time.time() + 10, 1, _function_logger("fn-a"), Headers({}))
    for _ in range(2):
        assert plain(structured.decode()) == "p"
        assert http(HttpEvent(structured, Headers({}), "POST", {}, "/"), None)["body"] == b"h"
        assert http(binary, None)["body"] == b"h"  # binary mode: the same event
        assert native(CloudEvent(attrs, ce["data"]), ctx) == ({"n": 1}, 202, {"X-A": "b"})
    assert sorted(runs) == ["http", "native", "plain"]


def test_no_cloudevent_and_missing_key_are_clear_errors(env: ServedAppliance) -> None:
    @idempotent(key="data.Host.Host.Value")
    def handle(req: str) -> None:
        raise AssertionError("must not run")

    with pytest.raises(NotACloudEvent, match="none of its arguments"):
        handle("plain text")
    with pytest.raises(MissingField, match=r"data\.Host") as info:
        handle(json.dumps(event(1)))
    assert info.value.http_status == 422


def test_concurrent_duplicates_run_once_and_all_get_the_result(env: ServedAppliance) -> None:
    effects: list[int] = []
    start = threading.Barrier(5)

    @idempotent
    def handle(req: str) -> dict[str, Any]:
        effects.append(threading.get_ident())
        time.sleep(0.5)  # the others arrive while this one is IN_PROGRESS
        return {"by": threading.get_ident()}

    results: list[Any] = [None] * 5
    text = json.dumps(event(11))

    def call(i: int) -> None:
        start.wait()
        results[i] = handle(text)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(effects) == 1
    assert results == [{"by": effects[0]}] * 5


def test_a_waiter_gives_up_at_its_own_deadline(env: ServedAppliance) -> None:
    holding = threading.Event()
    release = threading.Event()

    @idempotent
    def handle(event: Any, ctx: Any) -> str:
        holding.set()
        release.wait(10)
        return "late"

    text = json.dumps(event(12))
    holder = threading.Thread(target=handle, args=(text, SimpleNamespace(deadline=None)))
    holder.start()
    try:
        assert holding.wait(10)
        t0 = time.monotonic()
        with pytest.raises(IdempotencyInProgress, match="in progress") as info:
            handle(text, SimpleNamespace(deadline=time.time() + 1.0))
        assert info.value.http_status == 503  # retried
        assert time.monotonic() - t0 < 2.0
    finally:
        release.set()
        holder.join()
    assert handle(text, SimpleNamespace(deadline=None)) == "late"


HOLDER = """
import json, os, sys, time
from veba.sdk.state import idempotent

@idempotent(name="job")
def handle(req):
    open(sys.argv[1], "w").write("holding")
    time.sleep(60)
    return "never"

handle(sys.argv[2])
"""


def test_a_dead_holder_is_taken_over_when_its_record_expires(
    env: ServedAppliance, tmp_path: Path
) -> None:
    """A worker killed mid-call (as at its timeout) leaves an IN_PROGRESS record
    that expires with the function's timeout; the duplicate waiting for it then runs."""
    marker = tmp_path / "holding"
    text = json.dumps(event(13))
    holder_env = {**os.environ, "VEBA_FUNCTION_TIMEOUT": "1"}  # record lives 1 s + grace
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(marker), text], env=holder_env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "holder did not start"
            time.sleep(0.02)
        [record] = records(env)
        assert record["value"]["status"] == Status.IN_PROGRESS
        assert record["expires_at"] == pytest.approx(time.time() + 3, abs=1)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    runs: list[int] = []

    @idempotent(name="job")  # the same record as the holder's
    def handle(req: str) -> str:
        runs.append(1)
        return "taken over"

    t0 = time.monotonic()
    assert handle(text) == "taken over"
    assert runs == [1]
    assert 0.5 < time.monotonic() - t0 < 8  # it waited for the expiry, then ran
    assert records(env)[0]["value"]["status"] == Status.COMPLETED


def test_an_unreachable_store_fails_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens here once closed
    monkeypatch.setenv("VEBA_API_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("VEBA_STORE_TOKEN", "vst_x")
    monkeypatch.setenv("VEBA_FUNCTION_NAME", "fn-a")
    ran: list[int] = []

    @idempotent
    def handle(req: str) -> None:
        ran.append(1)

    @latest_only(key="data.Vm.Vm.Value")
    def newest(req: str) -> None:
        ran.append(1)

    for fn in (handle, newest):
        with pytest.raises(StoreUnavailable, match="unreachable") as info:
            fn(json.dumps(event(1)))
        assert info.value.http_status == 503
    assert ran == []


def test_without_a_configured_store_the_error_says_what_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("VEBA_API_URL", "VEBA_STORE_TOKEN", "VEBA_FUNCTION_NAME"):
        monkeypatch.delenv(name, raising=False)

    @idempotent
    def handle(req: str) -> None:
        raise AssertionError("must not run")

    with pytest.raises(StoreUnavailable, match="VEBA_API_URL, VEBA_STORE_TOKEN"):
        handle(json.dumps(event(1)))


# --- the client ------------------------------------------------------------------------


def test_client_cas_expiry_and_keep_alive(client: StoreClient) -> None:
    assert client.get("k") is None
    made = client.create("k", {"v": 1}, ttl=30)
    with pytest.raises(RevisionConflict) as info:
        client.create("k", {"v": 2})
    assert info.value.current is not None and info.value.current.value == {"v": 1}
    updated = client.put("k", {"v": 3}, expect_revision=made.revision)
    assert updated.revision > made.revision and updated.expires_at is None
    assert [e.key for e in client.list()] == ["k"]
    assert client.delete("k", expect_revision=updated.revision) is True
    assert client.delete("k") is False

    # One connection, kept alive across calls...
    sock = client._local.conn.sock
    client.get("k")
    assert client._local.conn.sock is sock
    # ...and a dead one is replaced without the caller noticing.
    sock.shutdown(socket.SHUT_RDWR)
    assert client.put("k", 1).value == 1
    assert client._local.conn.sock is not sock


def test_client_tokens_open_their_own_namespace_only(served: ServedAppliance) -> None:
    token_a = served.issue("fn-a")
    with pytest.raises(StoreDenied, match="403"):
        StoreClient(served.url, token_a, "fn-b").get("k")
    with pytest.raises(StoreDenied, match="401"):
        StoreClient(served.url, "vst_forged", "fn-a").get("k")
    assert StoreClient(served.url, token_a, "fn-a").get("k") is None


def test_store_gives_the_functions_own_client(env: ServedAppliance) -> None:
    store().put("settings", {"threshold": 3})
    assert store() is store()
    assert store().namespace == "fn-a"
    assert records(env)[0]["value"] == {"threshold": 3}


# --- @latest_only ------------------------------------------------------------------------


def test_latest_only_runs_newer_events_only(env: ServedAppliance) -> None:
    ran: list[tuple[str, int]] = []

    @latest_only(key="data.Vm.Vm.Value")
    def handle(req: str) -> str:
        ce = json.loads(req)
        ran.append((ce["data"]["Vm"]["Vm"]["Value"], ce["data"]["Key"]))
        return "ran"

    answers: dict[Any, Any] = {}
    for key, vm in [(10, "vm-1"), (12, "vm-1"), (11, "vm-1"), (5, "vm-2"), (13, "vm-1")]:
        answers[key] = handle(json.dumps(event(key, vm)))
    answers[9] = handle(json.dumps(event(9, "vm-1")))
    answers[12.5] = handle(json.dumps(event(12, "vm-1", eid="again")))  # same Key, other id
    assert ran == [("vm-1", 10), ("vm-1", 12), ("vm-2", 5), ("vm-1", 13)]
    assert answers[11] == {
        "skipped": True,
        "reason": "11 is not newer than 12 (event evt-12) for vm-1",
    }
    assert answers[9]["skipped"] and answers[12.5]["skipped"]
    # The very event that set the watermark, delivered again (its attempt failed): runs.
    assert handle(json.dumps(event(13, "vm-1"))) == "ran"
    marks = {e["value"]["key"]: e["value"]["order"] for e in records(env, "latest.")}
    assert marks == {"vm-1": 13, "vm-2": 5}


def test_latest_only_watermarks_are_per_source(env: ServedAppliance) -> None:
    ran: list[int] = []

    @latest_only(key="data.Vm.Vm.Value")
    def handle(req: str) -> None:
        ran.append(json.loads(req)["data"]["Key"])

    handle(json.dumps(event(100)))
    other_vcenter = event(3) | {"source": "https://vc02.example/sdk"}
    handle(json.dumps(other_vcenter))  # vm-56 of another vCenter: its own Keys
    assert ran == [100, 3]


def test_latest_only_skip_results_by_signature(env: ServedAppliance) -> None:
    @latest_only(key="data.Vm.Vm.Value")
    def http(event: HttpEvent, context: Any) -> dict[str, Any]:
        return {"statusCode": 200, "body": "ran"}

    @latest_only(key="data.Vm.Vm.Value", name="native")
    def native(event: CloudEvent, ctx: Any) -> str:
        return "ran"

    @latest_only(key="data.Vm.Vm.Value", name="custom", on_skip=lambda why: f"no: {why}")
    def custom(req: str) -> str:
        return "ran"

    def as_http(ce: dict[str, Any]) -> HttpEvent:
        return HttpEvent(json.dumps(ce).encode(), Headers({}), "POST", {}, "/")

    def as_native(ce: dict[str, Any]) -> CloudEvent:
        return CloudEvent({k: v for k, v in ce.items() if k != "data"}, ce["data"])

    assert http(as_http(event(2)), None)["body"] == "ran"
    skipped = http(as_http(event(1)), None)
    assert skipped["statusCode"] == 200 and skipped["body"]["skipped"] is True
    assert skipped["headers"] == {"X-Veba-Skipped": "latest_only"}
    assert native(as_native(event(2)), None) == "ran"
    body, status, headers = native(as_native(event(1)), None)
    assert status == 200 and body["skipped"] and headers["X-Veba-Skipped"] == "latest_only"
    assert custom(json.dumps(event(2))) == "ran"
    assert custom(json.dumps(event(1))).startswith("no: 1 is not newer than 2")


def test_latest_only_needs_the_key_and_a_numeric_order(env: ServedAppliance) -> None:
    @latest_only(key="data.Host.Host.Value")
    def by_host(req: str) -> None:
        raise AssertionError("must not run")

    @latest_only(key="data.Vm.Vm.Value", order_by="data.ChainId")
    def by_chain(req: str) -> None:
        raise AssertionError("must not run")

    with pytest.raises(MissingField, match=r"data\.Host"):
        by_host(json.dumps(event(1)))
    with pytest.raises(MissingField, match=r"data\.ChainId"):
        by_chain(json.dumps(event(1)))
    with pytest.raises(MissingField, match="not a number"):
        by_chain(json.dumps(event(1, ChainId="abc")))


def test_latest_only_concurrent_workers_never_move_the_watermark_back(
    env: ServedAppliance,
) -> None:
    keys = list(range(1, 61))
    random.Random(3).shuffle(keys)
    ran: list[int] = []
    lock = threading.Lock()

    @latest_only(key="data.Vm.Vm.Value")
    def handle(req: str) -> None:
        with lock:
            ran.append(json.loads(req)["data"]["Key"])

    def worker(part: list[int]) -> None:
        for key in part:
            handle(json.dumps(event(key)))

    threads = [threading.Thread(target=worker, args=(keys[i::6],)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 60 in ran and len(ran) == len(set(ran)) < 60
    [mark] = records(env, "latest.")
    assert mark["value"]["order"] == 60
