"""What the dashboard stands on, from a script: the live stream (filters, the
last events first, ending at once when `veba serve` stops), pausing a function
(events wait, none lost, and the pause outlives a restart), replaying one
event to a chosen function, and `/` behind the sign-in."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.harness import RECORDER, ApplianceProcess, read_jsonl, write_function, write_stack
from tests.support import wait_for

SAMPLE = json.loads(
    (Path(__file__).parent.parent / "data" / "cloudevent-vm-powered-off.json").read_text()
)
STRUCTURED = {"Content-Type": "application/cloudevents+json"}


def _post(app: ApplianceProcess, event_id: str, subject: str, vm: str = "web-01") -> None:
    data = dict(SAMPLE["data"], Vm={"Name": vm, "Vm": {"Type": "VirtualMachine", "Value": "vm-1"}})
    event = dict(SAMPLE, id=event_id, subject=subject, data=data)
    with app.client() as http:
        assert http.post("/webhook", json=event, headers=STRUCTURED).status_code == 200


def _frames(
    app: ApplianceProcess, params: dict[str, Any], got: list[Any], done: threading.Event
) -> None:
    """Read the stream into `got` (event frames' rows, or ("gap", n)) until it ends."""
    headers = {"Authorization": f"Bearer {app.token}"}
    kind = ""
    with httpx.stream(
        "GET", f"{app.url}/api/v1/events/stream", params=params, headers=headers, timeout=None
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind == "events":
                got.extend(json.loads(line[6:]))
            elif line.startswith("data: ") and kind == "gap":
                got.append(("gap", json.loads(line[6:])["missed"]))
    done.set()


def test_the_live_stream_filters_and_ends_when_the_appliance_stops(
    appliance_factory: type,
) -> None:
    app: ApplianceProcess = appliance_factory.start("--no-simulator")
    _post(app, "before", "VmPoweredOnEvent")
    every: list[Any] = []
    web: list[Any] = []
    ended = [threading.Event(), threading.Event()]
    readers = [
        threading.Thread(target=_frames, args=(app, {"backlog": 5}, every, ended[0]), daemon=True),
        threading.Thread(
            target=_frames,
            args=(app, {"type": "poweredon", "name": "WEB", "source": "10.0.0"}, web, ended[1]),
            daemon=True,
        ),
    ]
    for reader in readers:
        reader.start()
    wait_for(lambda: every, 30, "the backlog")
    assert every[0]["id"] == "before" and every[0]["names"]["vm"] == "web-01"
    time.sleep(0.5)  # both streams are watching (no signal to wait on from outside)
    _post(app, "on-web", "VmPoweredOnEvent", vm="web-02")
    _post(app, "off-web", "VmPoweredOffEvent", vm="web-02")
    _post(app, "on-db", "VmPoweredOnEvent", vm="db-01")
    wait_for(lambda: len(every) >= 4, 30, "3 live events")
    assert [row["id"] for row in every] == ["before", "on-web", "off-web", "on-db"]
    assert [row["seq"] for row in every] == sorted(row["seq"] for row in every)
    wait_for(lambda: web, 30, "the filtered stream's event")
    assert [row["id"] for row in web] == ["on-web"]  # no backlog asked; filters hold

    # A frame holds at most `rows` rows, the newest; a gap counts the others.
    few: list[Any] = []
    ended.append(threading.Event())
    threading.Thread(target=_frames, args=(app, {"rows": 2}, few, ended[2]), daemon=True).start()
    time.sleep(0.5)  # watching
    batch = [dict(SAMPLE, id=f"burst-{i}", subject="VmPoweredOnEvent") for i in range(5)]
    with app.client() as http:
        headers = {"Content-Type": "application/cloudevents-batch+json"}
        assert http.post("/webhook", json=batch, headers=headers).status_code == 200
        assert http.get("/api/v1/events/stream", params={"backlog": 501}).status_code == 400
    wait_for(lambda: len(few) >= 3, 30, "the burst's frame")
    assert few[0] == ("gap", 3) and [row["id"] for row in few[1:]] == ["burst-3", "burst-4"]

    # `veba serve` stops at once with streams open, and they end.
    started = time.monotonic()
    app.stop()
    assert time.monotonic() - started < 10
    assert all(e.wait(10) for e in ended)


def _deploy_recorder(app: ApplianceProcess, tmp_path: Path) -> Path:
    out = tmp_path / "got.jsonl"
    write_function(tmp_path / "fn" / "rec", RECORDER)
    stack = write_stack(
        tmp_path / "fn" / "stack.yml",
        {"rec": {"lang": "python3-http", "handler": "./rec", "environment": {"OUT": str(out)},
                 "annotations": {"topic": "VmPoweredOnEvent"}}},
    )  # fmt: skip
    app.cli("up", "-f", str(stack))
    return out


def test_a_paused_function_keeps_its_events_across_a_restart_until_resumed(
    appliance_factory: type, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    app: ApplianceProcess = appliance_factory.start("--no-simulator", data_dir=data)
    out = _deploy_recorder(app, tmp_path)
    assert "paused rec" in app.cli("pause", "rec").stdout
    for i in range(5):
        _post(app, f"on-{i}", "VmPoweredOnEvent")
    with app.client() as http:
        wait_for(
            lambda: (
                http.get("/api/v1/status").json()["deliveries"].get("rec", {}).get("pending") == 5
            ),
            30,
            "5 pending deliveries",
        )
    listed = json.loads(app.cli("list", "-o", "json").stdout)
    assert [(f["name"], f["paused"]) for f in listed] == [("rec", True)]
    assert "paused" in app.cli("status", "-o", "table").stdout
    assert read_jsonl(out) == []
    missing = app.cli("pause", "nobody", check=False)
    assert missing.returncode != 0 and "not deployed" in missing.stderr

    app.stop()
    again = appliance_factory.start("--no-simulator", data_dir=data)
    with again.client() as http:
        wait_for(lambda: http.get("/system/function/rec").json()["status"] == "ready", 60, "rec")
        assert http.get("/system/function/rec").json()["paused"] is True
        time.sleep(1)  # a running dispatcher would have leased them by now
        assert http.get("/api/v1/status").json()["deliveries"]["rec"].get("pending") == 5
    assert read_jsonl(out) == []

    assert "resumed rec" in again.cli("resume", "rec").stdout
    got = wait_for(lambda: len(read_jsonl(out)) >= 5 and read_jsonl(out), 60, "5 events")
    assert sorted(e["id"] for e in got) == [f"on-{i}" for i in range(5)]
    assert json.loads(again.cli("list", "-o", "json").stdout)[0]["paused"] is False


def test_one_event_replays_to_a_chosen_function(appliance_factory: type, tmp_path: Path) -> None:
    app: ApplianceProcess = appliance_factory.start("--no-simulator")
    _post(app, "off-1", "VmPoweredOffEvent")  # rec does not subscribe to it
    _post(app, "on-1", "VmPoweredOnEvent")
    _post(app, "on-2", "VmPoweredOnEvent")  # only the one asked for is replayed
    out = _deploy_recorder(app, tmp_path)
    with app.client() as http:
        r = http.post("/api/v1/events/on-1/replay", json={"function": "rec"})
        assert r.status_code == 200 and r.json()["replayed"] == 1
        r = http.post("/api/v1/events/off-1/replay", json={"function": "rec"})
        assert r.status_code == 409 and "force" in r.json()["error"]
        r = http.post("/api/v1/events/off-1/replay", json={"function": "rec", "force": True})
        assert r.status_code == 200
        assert http.post("/api/v1/events/nope/replay", json={"function": "rec"}).status_code == 404
        r = http.post("/api/v1/events/on-1/replay", json={"function": "nobody"})
        assert r.status_code == 404
        assert http.post("/api/v1/events/on-1/replay", json={"fn": "rec"}).status_code == 400
    got = wait_for(lambda: len(read_jsonl(out)) >= 2 and read_jsonl(out), 60, "2 replayed")
    time.sleep(0.5)  # nothing else follows
    assert (
        sorted(e["id"] for e in read_jsonl(out))
        == ["off-1", "on-1"]
        == sorted(e["id"] for e in got)
    )
    shown = json.loads(app.cli("events", "show", "on-1", "-o", "json").stdout)
    assert [(d["subscription"], d["status"]) for d in shown["deliveries"]] == [("rec", "delivered")]


def test_the_dashboard_is_behind_the_sign_in(appliance_factory: type) -> None:
    app: ApplianceProcess = appliance_factory.start("--no-simulator")
    with httpx.Client(base_url=app.url, timeout=30) as anonymous:
        r = anonymous.get("/", headers={"Accept": "text/html"})
        assert r.status_code == 303 and r.headers["location"] == "/login?next=/"
        for path in ("/", "/dashboard/static/app.js", "/api/v1/events/stream", "/api/v1/overview"):
            assert anonymous.get(path).status_code == 401, path
        assert anonymous.post("/api/v1/functions/x/pause").status_code == 401
    with httpx.Client(base_url=app.url, timeout=30) as browser:
        r = browser.post("/login", data={"token": app.token})
        assert r.status_code == 303 and r.headers["location"] == "/"
        page = browser.get("/")
        assert page.status_code == 200 and "/dashboard/static/app.js" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert browser.get("/dashboard/static/style.css").status_code == 200
        # A change from the cookie alone must come from the page (its Origin).
        assert browser.post("/api/v1/functions/x/pause").status_code == 403
        r = browser.post("/api/v1/functions/x/pause", headers={"Origin": app.url})
        assert r.status_code == 404 and "not deployed" in r.json()["error"]
