"""examples/echo: the event comes back as it went in, and the SDK logger's line
names its subject, VM and user."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.examples.support import example
from veba.testing import HandlerError

ECHO = example("echo")


def log_lines(stderr: str) -> list[dict[str, Any]]:
    """The SDK's JSON lines (in worker mode each is prefixed with ``[echo stderr] ``)."""
    lines = []
    for raw in stderr.splitlines():
        text = raw.split("] ", 1)[1] if raw.startswith("[echo ") else raw
        if text.startswith("{"):
            lines.append(json.loads(text))
    return lines


@pytest.mark.parametrize("mode", ["inprocess", "worker"])
def test_logs_and_returns_the_event(
    veba_event: Any, veba_invoke: Any, capsys: pytest.CaptureFixture[str], mode: str
) -> None:
    event = veba_event(
        "VmPoweredOnEvent", {"data.Vm.Name": "web-01", "data.UserName": "LAB\\alice"}
    )
    response = veba_invoke(ECHO, event, mode=mode)

    assert response.status == 200
    assert response.json() == event
    line = log_lines(capsys.readouterr().err)[-1]
    assert line["msg"] == "VmPoweredOnEvent" and line["level"] == "info"
    assert (line["function"], line["event"], line["subject"]) == (
        "echo",
        event["id"],
        "VmPoweredOnEvent",
    )
    assert (line["vm"], line["moref"], line["user"]) == (
        "web-01",
        event["data"]["Vm"]["Vm"]["Value"],
        "LAB\\alice",
    )
    assert line["key"] == event["data"]["Key"]


def test_an_event_without_a_vm_is_logged_with_nulls(
    veba_event: Any, veba_invoke: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    event = veba_event("EnteredMaintenanceModeEvent")
    assert event["data"]["Vm"] is None
    response = veba_invoke(ECHO, event)
    assert response.status == 200 and response.json() == event
    line = log_lines(capsys.readouterr().err)[-1]
    assert (line["msg"], line["vm"], line["moref"]) == ("EnteredMaintenanceModeEvent", None, None)


def test_what_is_not_a_cloudevent_is_refused_with_a_400(veba_invoke: Any) -> None:
    # vCenter's event data without the CloudEvent around it: a common mistake when
    # testing by hand (`curl -d @event.json`).
    data = {"Key": 42, "CreatedTime": "2024-01-01T00:00:00Z", "Vm": None}
    with pytest.raises(HandlerError) as failed:
        veba_invoke(ECHO, json.dumps(data))
    assert failed.value.response.status == 400  # not retried: the same body fails again
    assert "looks like a vCenter event's data; pass the whole CloudEvent" in str(failed.value)
