"""Following one event: `veba logs --event`, the appliance's JSON log lines, the
traceparent each attempt carries, and a span per attempt over OTLP.

One `veba serve` (JSON log at debug level, an OTLP receiver of the test's own)
with two functions on the same topic: `greet` prints and answers, `flaky` prints
and fails its first attempt. Two events go in: one with a traceparent of its
own, one without.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.e2e.harness import ApplianceProcess, write_function, write_stack
from tests.support import wait_for
from veba.events import Event
from veba.tracing import trace_id_of

SAMPLE = Path(__file__).parent.parent / "data" / "cloudevent-vm-powered-off.json"
INCOMING_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
INCOMING_SPAN = "00f067aa0ba902b7"
TRACEPARENT = re.compile(r"traceparent=00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")

# python3-http, reading the plain HTTP header.
GREET = """
import json

def handle(event, context):
    ce = json.loads(event.body)
    print(f"greet got {ce['id']} traceparent={event.headers.get('traceparent')}")
    return {"statusCode": 200, "body": "hi"}
"""

# python3-http through veba.sdk's Event; fails the first attempt of each event.
FLAKY = """
import os
from veba.sdk import Event

def handle(event, context):
    ce = Event(event)
    marker = os.path.join(os.environ["OUT"], "seen-" + ce.id)
    first = not os.path.exists(marker)
    print(f"flaky got {ce.id} traceparent={ce.traceparent} first={first}")
    if first:
        open(marker, "w").close()
        raise RuntimeError("flaky says no, the first time")
    return {"statusCode": 200, "body": "ok"}
"""


class _Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP collector: keeps each ExportTraceServiceRequest it is sent."""

    requests: list[ExportTraceServiceRequest]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.server.requests.append(request)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Scene:
    app: ApplianceProcess
    traced: str  # the event that came with a traceparent
    plain: str  # the one that came without
    plain_event: Event
    spans: list[Any] = field(default_factory=list)


@pytest.fixture(scope="module")
def scene(_open_root: Path) -> Iterator[Scene]:
    root = Path(tempfile.mkdtemp(prefix="story-", dir=_open_root))
    root.chmod(0o777)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.requests = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    env = {**os.environ, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    app = ApplianceProcess(
        root / "data",
        "--no-simulator",
        "--log-json",
        "--log-level",
        "debug",
        "--otlp-endpoint",
        endpoint,
        env=env,
    )
    try:
        app.start()
        write_function(root / "fn" / "greet", GREET)
        write_function(root / "fn" / "flaky", FLAKY)
        topic = {"topic": "VmPoweredOffEvent"}
        retry = {"retry": 2, "backoffDelay": "PT0.1S", "jitter": 0}
        stack = write_stack(
            root / "fn" / "stack.yml",
            {
                "greet": {"lang": "python3-http", "handler": "./greet", "annotations": topic},
                "flaky": {
                    "lang": "python3-http",
                    "handler": "./flaky",
                    "annotations": topic,
                    "environment": {"OUT": str(root)},
                    "delivery": retry,
                },
            },
        )
        app.cli("up", "-f", str(stack))
        sample = json.loads(SAMPLE.read_text())
        traced = {
            **sample,
            "id": "story-traced-1",
            "traceparent": f"00-{INCOMING_TRACE}-{INCOMING_SPAN}-01",
        }
        plain = {**sample, "id": "story-plain-2"}
        with app.client() as http:
            for event in (traced, plain):
                answer = http.post(
                    "/webhook",
                    json=event,
                    headers={"Content-Type": "application/cloudevents+json"},
                )
                assert answer.status_code == 200, answer.text

            def delivered() -> bool:
                for ref in (traced["id"], plain["id"]):
                    shown = http.get(f"/api/v1/events/{ref}").json()
                    states = [d["status"] for d in shown["deliveries"]]
                    if states != ["delivered", "delivered"]:
                        return False
                return True

            wait_for(delivered, 60, "both events delivered to both functions")
        plain_event = Event({k: v for k, v in plain.items() if k != "data"}, plain["data"])
        yield Scene(app, traced["id"], plain["id"], plain_event, server.requests)  # type: ignore[attr-defined]
    finally:
        app.stop()
        server.shutdown()


def _story(scene: Scene, ref: str) -> dict[str, Any]:
    return json.loads(scene.app.cli("logs", "--event", ref, "-o", "json").stdout)


def _printed(story: dict[str, Any], function: str) -> list[tuple[str, str, str]]:
    """(trace id, span id, text) of what `function` printed, attempt by attempt."""
    out = []
    for chapter in story["chapters"]:
        if chapter["kind"] == "output" and chapter["stream"] == "stdout":
            if chapter["function"] != function:
                continue
            match = TRACEPARENT.search(chapter["text"])
            assert match, chapter
            out.append((match[1], match[2], chapter["text"]))
    return out


def test_logs_event_tells_the_story_from_arrival_to_each_functions_output(scene: Scene) -> None:
    shown = scene.app.cli("logs", "--event", scene.traced).stdout.splitlines()
    assert shown[0].startswith(f"event {scene.traced} (seq 1), trace {INCOMING_TRACE}")

    def at(pattern: str) -> int:
        found = [i for i, line in enumerate(shown) if re.search(pattern, line)]
        assert len(found) == 1, (pattern, shown)
        return found[0]

    received = at(r"veba +received from https://10\.0\.0\.1:443/sdk: .* VmPoweredOffEvent")
    logged = at(r"veba +logged as seq 1, for flaky, greet")
    to_greet = at(r"greet +delivery \d+ to greet")
    to_flaky = at(r"flaky +delivery \d+ to flaky")
    greet_said = at(r"greet +stdout \| greet got story-traced-1 traceparent=")
    greet_ok = at(r"greet +attempt 1 ok 200 in \d+ ms")
    first = at(r"flaky +stdout \| flaky got story-traced-1 .* first=True")
    failed = at(r"flaky +attempt 1 error 500 in \d+ ms: RuntimeError: flaky says no")
    second = at(r"flaky +stdout \| flaky got story-traced-1 .* first=False")
    flaky_ok = at(r"flaky +attempt 2 ok 200")
    assert received < logged < min(to_greet, to_flaky)
    assert max(to_greet, to_flaky) < min(greet_said, first)
    assert greet_said < greet_ok
    assert first < failed < second < flaky_ok

    # By seq too, and as JSON: the failed attempt keeps its traceback, scrubbed.
    story = _story(scene, "1")
    assert story["event_id"] == scene.traced
    (error,) = [c["error"] for c in story["chapters"] if c["kind"] == "outcome" and c["error"]]
    assert "Traceback" in error and "RuntimeError: flaky says no" in error


def test_appliance_log_lines_about_an_event_carry_its_id(scene: Scene) -> None:
    lines = []
    for raw in scene.app.log_path.read_text().splitlines():
        if raw.startswith("{"):
            lines.append(json.loads(raw))
    about = [line for line in lines if line.get("event_id") == scene.traced]
    logged = [line for line in about if "logged" in line["message"]]
    assert logged and logged[0]["logger"] == "veba.appliance"
    attempts = [
        (line["function"], line["attempt"], line["message"])
        for line in about
        if line.get("logger") == "veba.dispatch"
    ]
    assert (
        "flaky",
        1,
        "flaky: attempt 1 error 500 (RuntimeError: flaky says no, the first time)",
    ) in attempts
    assert any(fn == "greet" and n == 1 and "ok 200" in m for fn, n, m in attempts), attempts
    assert all(line["trace_id"] == INCOMING_TRACE for line in about if "attempt" in line)


def test_each_attempt_carries_a_traceparent_of_the_events_trace(scene: Scene) -> None:
    # An event that came with a traceparent keeps its trace; each attempt is a new span.
    traced = _story(scene, scene.traced)
    assert traced["trace_id"] == INCOMING_TRACE
    flaky = _printed(traced, "flaky")
    greet = _printed(traced, "greet")
    assert len(flaky) == 2 and len(greet) == 1
    assert {trace for trace, _, _ in flaky + greet} == {INCOMING_TRACE}
    spans = {span for _, span, _ in flaky + greet}
    assert len(spans) == 3 and INCOMING_SPAN not in spans

    # One without: the trace id comes from (source, id), the same on every attempt.
    plain = _story(scene, scene.plain)
    derived = trace_id_of(scene.plain_event)
    assert plain["trace_id"] == derived != INCOMING_TRACE
    flaky = _printed(plain, "flaky")
    assert [trace for trace, _, _ in flaky] == [derived, derived]
    assert flaky[0][1] != flaky[1][1]


def test_each_attempt_is_exported_as_a_span_with_the_ids_it_sent(scene: Scene) -> None:
    def exported() -> dict[str, list[Any]] | None:
        by_event: dict[str, list[Any]] = {}
        for request in list(scene.spans):
            for resource in request.resource_spans:
                for scoped in resource.scope_spans:
                    for span in scoped.spans:
                        attrs = {a.key: a.value for a in span.attributes}
                        event_id = attrs["cloudevents.event_id"].string_value
                        by_event.setdefault(event_id, []).append((span, attrs))
        complete = all(len(by_event.get(e, [])) == 3 for e in (scene.traced, scene.plain))
        return by_event if complete else None

    by_event = wait_for(exported, 30, "a span per attempt at the OTLP receiver")
    printed = {span for _, span, _ in _printed(_story(scene, scene.traced), "flaky")}
    printed |= {span for _, span, _ in _printed(_story(scene, scene.traced), "greet")}
    spans = by_event[scene.traced]
    assert {s.trace_id.hex() for s, _ in spans} == {INCOMING_TRACE}
    assert {s.parent_span_id.hex() for s, _ in spans} == {INCOMING_SPAN}
    assert {s.span_id.hex() for s, _ in spans} == printed
    names = sorted(
        (s.name, a["veba.attempt"].int_value, a["veba.outcome"].string_value) for s, a in spans
    )
    assert names == [
        ("deliver flaky", 1, "retried"),
        ("deliver flaky", 2, "delivered"),
        ("deliver greet", 1, "delivered"),
    ]
    failed = next(s for s, a in spans if a["veba.outcome"].string_value == "retried")
    assert failed.status.code == 2 and "flaky says no" in failed.status.message  # ERROR
    # Without an incoming traceparent the attempts are roots of the derived trace.
    plain = by_event[scene.plain]
    assert {s.trace_id.hex() for s, _ in plain} == {trace_id_of(scene.plain_event)}
    assert {s.parent_span_id for s, _ in plain} == {b""}
