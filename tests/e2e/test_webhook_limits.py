"""The webhook's memory is bounded whatever is sent: bodies over the limit get a
413 before they are read whole (Content-Length or chunked), and events that are
accepted do not pile up in memory. Measured on the real process: its VmRSS."""

from __future__ import annotations

import http.client
import json
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import VEBA, ApplianceProcess, free_port

MiB = 1 << 20
CE_JSON = {"Content-Type": "application/cloudevents+json"}
BATCH = {"Content-Type": "application/cloudevents-batch+json"}


def rss(app: ApplianceProcess) -> int:
    """The appliance's resident memory, in bytes."""
    assert app.proc is not None
    for line in Path(f"/proc/{app.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def event(event_id: str, size: int) -> dict[str, object]:
    return {"specversion": "1.0", "id": event_id, "source": "limits", "type": "t",
            "data": {"blob": "x" * size}}  # fmt: skip


def chunks(total: int) -> Iterator[bytes]:
    """A chunked body (no Content-Length): the limit must be counted as it streams."""
    chunk = b"x" * MiB
    for _ in range(total // MiB):
        yield chunk


def test_large_bodies_get_413_and_memory_stays_flat(appliance_factory: type) -> None:
    app: ApplianceProcess = appliance_factory.start("--no-simulator")
    hundred = b"{" + b" " * (100 * MiB) + b"}"
    with app.client() as http:
        assert http.post("/webhook", json=event("warm-up", 1000), headers=CE_JSON).is_success
        before = rss(app)

        def post(how: str) -> httpx.Response:
            with app.client() as own:
                if how == "chunked":
                    return own.post("/webhook", content=chunks(100 * MiB), headers=CE_JSON)
                if how == "batch":
                    return own.post("/webhook", content=hundred, headers=BATCH)
                if how == "anonymous":
                    return httpx.post(f"{app.url}/webhook", content=hundred, headers=CE_JSON)
                return own.post("/webhook", content=hundred, headers=CE_JSON)

        kinds = ["length", "length", "chunked", "chunked", "batch", "anonymous"]
        with ThreadPoolExecutor(len(kinds)) as pool:
            answers = list(pool.map(post, kinds))
        assert [r.status_code for r in answers] == [413, 413, 413, 413, 413, 401]
        assert "an event may be 1 MiB at most" in answers[0].json()["error"]
        assert "a batch of events may be 16 MiB at most" in answers[4].json()["error"]

        # 20 MiB: over the batch limit as a batch, over the event limit as one event.
        twenty = json.dumps([event(f"b{i}", MiB // 2) for i in range(40)]).encode()
        assert len(twenty) > 20 * MiB
        r = http.post("/webhook", content=twenty, headers=BATCH)
        assert r.status_code == 413 and "16 MiB at most" in r.json()["error"]
        r = http.post("/webhook", json=event("one-big", 20 * MiB), headers=CE_JSON)
        assert r.status_code == 413 and "1 MiB at most" in r.json()["error"]
        # Each event of a batch within the batch limit must fit the event limit too.
        r = http.post(
            "/webhook",
            content=json.dumps([event("fits", 1000), event("too-big", 2 * MiB)]),
            headers=BATCH,
        )
        assert r.status_code == 413 and r.json()["error"].startswith("event [1] is ")
        assert http.get("/api/v1/events/fits").status_code == 404  # nothing of it kept

        # Events at the limit are taken, and do not pile up in memory: 300 MiB of
        # them pass through, and the appliance holds no more than its caches.
        for i in range(30):
            batch = [event(f"max-{i}-{j}", MiB - 200) for j in range(10)]
            r = http.post("/webhook", content=json.dumps(batch), headers=BATCH)
            assert r.status_code == 200 and r.json()["accepted"] == 10, r.text
        grown = rss(app) - before
        assert grown < 150 * MiB, f"RSS grew {grown / MiB:.0f} MiB"
        shown = http.get("/api/v1/events/max-29-9").json()
        assert len(shown["event"]["data"]["blob"]) == MiB - 200


def test_the_limits_are_the_operators(appliance_factory: type) -> None:
    app: ApplianceProcess = appliance_factory.start(
        "--no-simulator", "--webhook-max-event", "64KiB", "--webhook-max-batch", "256KiB"
    )
    assert "events up to 64 KiB, batches up to 256 KiB" in app.log_path.read_text()
    with app.client() as http:
        assert http.post("/webhook", json=event("small", 60_000), headers=CE_JSON).is_success
        r = http.post("/webhook", json=event("large", 70_000), headers=CE_JSON)
        assert r.status_code == 413 and "64 KiB at most" in r.json()["error"]
        batch = json.dumps([event(f"s{i}", 60_000) for i in range(5)])
        r = http.post("/webhook", content=batch, headers=BATCH)
        assert r.status_code == 413 and "256 KiB at most" in r.json()["error"]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--webhook-max-event", "1XB"], "--webhook-max-event '1XB': expected a size like 1MiB"),
        (["--webhook-max-event", "100"], "--webhook-max-event '100': at least 1KiB"),
        (["--webhook-max-event", "2MiB", "--webhook-max-batch", "1MiB"],
         "--webhook-max-batch 1MiB is smaller than --webhook-max-event 2MiB"),
        (["--webhook-open", "--webhook-token", "t"], "--webhook-open takes events without"),
    ],
)  # fmt: skip
def test_bad_limits_and_contradictions_are_refused_in_one_line(
    args: list[str], said: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [VEBA, "serve", "--listen", f"127.0.0.1:{free_port()}", "--data-dir",
         str(tmp_path / "data"), *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = (result.stdout + result.stderr).strip()
    assert result.returncode != 0 and said in out, out
    assert len(out.splitlines()) == 1 and out.startswith("error: "), out


def test_a_sender_s_keep_alive_connection_outlives_a_pause(appliance_factory: type) -> None:
    # uvicorn closes a connection idle for 5 s unless told otherwise; a sender
    # that keeps idle connections longer (Go's net/http, as VEBA's router and
    # Knative's, 90 s) and posts after a pause raced that close: its event got
    # a reset, not a 200. The appliance keeps idle connections 120 s.
    app: ApplianceProcess = appliance_factory.start("--no-simulator")
    conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=30)
    headers = {**CE_JSON, "Authorization": f"Bearer {app.token}"}
    try:
        conn.request("POST", "/webhook", json.dumps(event("before", 10)), headers)
        assert conn.getresponse().read() is not None and conn.sock is not None
        first = conn.sock
        # Idle past uvicorn's default: the pause itself is what is tested.
        time.sleep(6.5)
        conn.request("POST", "/webhook", json.dumps(event("after", 10)), headers)
        response = conn.getresponse()
        response.read()
        assert response.status == 200
        assert conn.sock is first  # the same connection, not a new one
    finally:
        conn.close()
