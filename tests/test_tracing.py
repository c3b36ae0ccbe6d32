"""Trace context per attempt (W3C traceparent, CloudEvents' distributed-tracing
extension) and the event scope that log lines and function output carry."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from veba.events import Event
from veba.functionlogs import LogHub
from veba.targets.functions import delivery_request
from veba.tracing import (
    EventScope,
    ScopeFilter,
    event_scope,
    parse_traceparent,
    trace_for,
    trace_id_of,
    with_trace,
)

INCOMING = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _event(**extra: str) -> Event:
    return Event(
        {"id": "e-1", "source": "https://vc/sdk", "type": "t", "specversion": "1.0", **extra},
        {"Key": 1},
    )


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # unknown version
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero span id
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # short
    ],
)
def test_an_invalid_traceparent_is_ignored(value: str | None) -> None:
    assert parse_traceparent(value) is None
    trace = trace_for(_event(**({"traceparent": value} if value else {})))
    assert trace.parent_id is None and trace.trace_id == trace_id_of(_event())


def test_an_incoming_trace_is_kept_and_each_attempt_is_a_new_span_under_it() -> None:
    event = _event(traceparent=INCOMING, tracestate="vendor=abc")
    first, second = trace_for(event), trace_for(event)
    assert first.trace_id == second.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert first.parent_id == second.parent_id == "00f067aa0ba902b7"
    assert first.span_id != second.span_id
    assert first.state == "vendor=abc"
    assert parse_traceparent(first.traceparent) == (first.trace_id, first.span_id, "01")


def test_without_one_the_trace_id_follows_from_source_and_id() -> None:
    assert trace_id_of(_event()) == trace_id_of(_event())  # any node, any restart
    assert trace_id_of(_event()) != trace_id_of(Event({**_event().attributes, "id": "e-2"}))
    other_source = Event({**_event().attributes, "source": "https://vc2/sdk"})
    assert trace_id_of(_event()) != trace_id_of(other_source)


def test_a_delivery_carries_the_traceparent_in_every_mode_and_the_log_keeps_none() -> None:
    logged = _event(tracestate="vendor=abc")
    trace = trace_for(logged)
    sent = with_trace(logged, trace)
    assert "traceparent" not in logged.attributes  # what the log keeps is unchanged
    headers, body = delivery_request(sent, attempt=1, deadline=None)
    assert headers["traceparent"] == trace.traceparent == json.loads(body)["traceparent"]
    assert json.loads(body) == sent.to_dict()  # the logged JSON, the attribute spliced in
    assert headers["tracestate"] == "vendor=abc"
    headers, _ = delivery_request(sent, attempt=1, deadline=None, binary=True)
    assert headers["ce-traceparent"] == headers["traceparent"] == trace.traceparent


def test_stdlib_log_lines_carry_the_scope_bound_where_they_are_said() -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    handler.addFilter(ScopeFilter())
    logger = logging.getLogger("veba.test.scope")
    logger.addHandler(handler)
    try:

        async def deliver(n: int) -> None:
            with event_scope(EventScope(f"e-{n}", function="f", delivery=n, attempt=1)):
                await asyncio.sleep(0.01 * (2 - n))  # interleaved: each task its own scope
                logger.warning("attempt failed")

        async def both() -> None:
            await asyncio.gather(deliver(1), deliver(2))

        asyncio.run(both())
        logger.warning("no event here")
    finally:
        logger.removeHandler(handler)
    scopes = [r.scope for r in records]
    assert {s.get("event_id") for s in scopes[:2]} == {"e-1", "e-2"}
    assert all(s["delivery_id"] == int(s["event_id"][2:]) for s in scopes[:2])
    assert scopes[2] == {}


def test_lines_of_an_event_are_found_in_a_file_whose_time_reads_before_its_arrival(
    tmp_path: Path,
) -> None:
    # File times come from the kernel's coarse clock: a line printed a moment
    # after the event arrived can be in a file stamped a few ms before that
    # (the story missed such a line when a delivery began at once).
    hub = LogHub(tmp_path)
    with event_scope(EventScope("ev-1", delivery=2, attempt=1)):
        hub.write("fn", "stdout", "said at once")
    hub.close()
    written = (tmp_path / "fn.log").stat().st_mtime
    arrived = written + 0.005
    found = LogHub(tmp_path).event_lines("fn", "ev-1", since=arrived)
    assert [(line.text, line.delivery) for line in found] == [("said at once", 2)]
    # A file last written long before the event is still skipped unread.
    os.utime(tmp_path / "fn.log", (written - 3600, written - 3600))
    assert LogHub(tmp_path).event_lines("fn", "ev-1", since=arrived) == []


def test_function_lines_filed_under_an_event_are_found_again_after_a_restart(
    tmp_path: Path,
) -> None:
    odd = "id with spaces ] and = signs/%"
    hub = LogHub(tmp_path, max_bytes=400, keep=3)  # small: the lines rotate across files
    for n in range(12):
        scope = EventScope(odd if n % 3 == 0 else f"other-{n}", delivery=7, attempt=n // 3 + 1)
        with event_scope(scope):
            hub.write("fn", "stdout", f"line {n}")
    hub.write("fn", "stdout", "not about any event")
    # A function printing a tag of its own does not put lines into a story.
    forged = quote(odd, safe="!$&'()*+,-./:;<>?@^_`{|}~")
    hub.write("fn", "stdout", f"[event={forged} delivery=7 attempt=1] forged")
    hub.close()
    assert len(list(tmp_path.glob("fn.log*"))) > 1
    again = LogHub(tmp_path, max_bytes=400, keep=3)
    found = again.event_lines("fn", odd)
    assert [(line.text, line.delivery, line.attempt) for line in found] == [
        ("line 0", 7, 1),
        ("line 3", 7, 2),
        ("line 6", 7, 3),
        ("line 9", 7, 4),
    ]
    assert again.event_lines("fn", "id with spaces") == []
    untagged = (tmp_path / "fn.log").read_text().splitlines()[-2]
    assert untagged.endswith(" stdout not about any event")


def test_opentelemetry_is_imported_only_for_otlp_export() -> None:
    # (FastAPI imports opentelemetry's API by itself when it is installed.)
    code = (
        "import sys, veba.appliance, veba.api, veba.cli, veba.dispatch;"
        " sys.exit(any(name.startswith(('opentelemetry.sdk', 'opentelemetry.exporter'))"
        " for name in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_otlp_export_without_the_extra_is_refused_saying_what_to_install(tmp_path: Path) -> None:
    # As if `pip install 'pyveba[otel]'` had not been run: the SDK cannot be found.
    code = """
import sys
from importlib.abc import MetaPathFinder

class NoOtel(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.startswith(("opentelemetry.sdk", "opentelemetry.exporter")):
            raise ModuleNotFoundError(name)
        return None

sys.meta_path.insert(0, NoOtel())
sys.argv = ["veba", "serve", "--otlp-endpoint", "http://127.0.0.1:4318", "--data-dir", sys.argv[1]]
from veba.cli import main
main()
"""
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "--otlp-endpoint needs the OpenTelemetry SDK" in done.stderr
    assert "pip install 'pyveba[otel]'" in done.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was written
