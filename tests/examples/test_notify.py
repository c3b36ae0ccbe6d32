"""examples/notify against a local webhook: a post that fails twice with 503 is
retried and arrives once, with the right fields; the retries stop before the
delivery's deadline; bad events and refused posts fail clearly."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.examples.support import LocalServer, Reply, Request, example
from veba.testing import HandlerError

NOTIFY = example("notify")
HOOK_PATH = "/services/T0000/B0000/abcdefghijklmnop"


def flaky(failures: int, status: int = 503) -> Callable[[Request], Reply]:
    """Answers ``status`` to the first ``failures`` requests, then 200 "ok"."""
    seen = {"n": 0}

    def respond(request: Request) -> Reply:
        seen["n"] += 1
        if seen["n"] <= failures:
            return status, {"Content-Type": "text/plain"}, b"service unavailable"
        return 200, {"Content-Type": "text/plain"}, b"ok"

    return respond


def test_maintenance_posted_to_slack_once_after_two_503s(
    local_server: Any, veba_event: Any, veba_invoke: Any
) -> None:
    server: LocalServer = local_server(flaky(2))
    event = veba_event(
        "EnteredMaintenanceModeEvent",
        {"data.Host.Name": "esx06.lab.local", "data.UserName": "LAB\\bob"},
    )
    response = veba_invoke(NOTIFY, event, secrets={"webhook": server.url + HOOK_PATH})

    assert response.status == 200
    assert response.json()["status"] == 200
    requests = server.wait_for(3)
    assert len(server.requests) == 3  # two refused, one accepted: it arrived once
    accepted = requests[-1]
    assert all(r.body == accepted.body for r in requests)  # the same post, retried
    assert (accepted.method, accepted.path) == ("POST", HOOK_PATH)
    assert accepted.headers["content-type"] == "application/json"

    payload = accepted.json()
    assert payload["text"] == ":wrench: Host esx06.lab.local entered maintenance mode"
    blocks = payload["blocks"]
    assert [b["type"] for b in blocks] == ["section", "section", "context"]
    facts = [f["text"] for f in blocks[1]["fields"]]
    assert facts[0] == "*Object*\nesx06.lab.local"
    assert facts[1] == "*Where*\nDC01 / Cluster-02"
    assert facts[2] == "*User*\nLAB\\bob"
    assert facts[3] == f"*Time*\n{event['data']['CreatedTime']}"
    context = blocks[2]["elements"][0]["text"]
    assert event["id"] in context and "EnteredMaintenanceModeEvent" in context


def test_alarms_as_pagerduty_events_trigger_then_resolve(
    local_server: Any, veba_event: Any, veba_invoke: Any
) -> None:
    server: LocalServer = local_server(flaky(0, 202))
    secret = f'url = "{server.url}/v2/enqueue"\nrouting_key = "R0UT1NGKEY0123456789"\n'
    options = {"secrets": {"webhook": secret}, "environment": {"NOTIFY_FORMAT": "pagerduty"}}
    yellow = veba_event("AlarmStatusChangedEvent")
    green = copy.deepcopy(yellow)  # the same alarm, back to green a minute later
    green["id"] = f"{yellow['id']}-green"
    green["data"].update(From="yellow", To="green", Key=yellow["data"]["Key"] + 1)
    veba_invoke(NOTIFY, yellow, **options)
    veba_invoke(NOTIFY, green, **options)

    first, second = (r.json() for r in server.wait_for(2))
    assert first["routing_key"] == "R0UT1NGKEY0123456789"
    assert (first["event_action"], second["event_action"]) == ("trigger", "resolve")
    assert first["dedup_key"] == second["dedup_key"]  # the same incident
    assert first["dedup_key"].endswith("/alarm/alarm-62/vm-74")
    body = first["payload"]
    assert body["summary"] == "Alarm 'Virtual machine memory usage' on dns-01: green → yellow"
    assert (body["severity"], body["component"], body["class"]) == (
        "warning",
        "dns-01",
        "AlarmStatusChangedEvent",
    )
    assert body["custom_details"]["event"] == yellow["id"]
    assert second["payload"]["severity"] == "info"


def test_retries_stop_before_the_delivery_deadline(
    local_server: Any, veba_event: Any, veba_invoke: Any
) -> None:
    server: LocalServer = local_server(flaky(1000))  # never accepts
    event = veba_event("ExitMaintenanceModeEvent")
    started = time.monotonic()
    with pytest.raises(HandlerError) as failed:
        veba_invoke(NOTIFY, event, secrets={"webhook": server.url + HOOK_PATH}, timeout=1.0)
    took = time.monotonic() - started

    assert failed.value.response.status == 500  # the appliance retries it, with backoff
    assert "WebhookUnavailable: the webhook answered 503" in str(failed.value)
    assert "before the delivery's deadline" in (failed.value.traceback or "")
    assert took < 1.2  # answered in time (all 5 posts would take over 1.5 s of backoff)
    assert 2 <= len(server.requests) < 5  # fewer than NOTIFY_ATTEMPTS: the deadline won


def test_bad_events_and_refused_posts_fail_clearly(
    local_server: Any, veba_event: Any, veba_invoke: Any
) -> None:
    server: LocalServer = local_server(flaky(1000, 404))  # a revoked webhook
    secrets = {"webhook": server.url + HOOK_PATH}

    no_host = veba_event("EnteredMaintenanceModeEvent")
    no_host["data"]["Host"] = None
    with pytest.raises(HandlerError) as failed:
        veba_invoke(NOTIFY, no_host, secrets=secrets)
    assert failed.value.response.status == 422  # about the event: not retried
    assert "has no data.Host.Name: data.Host is null" in str(failed.value)

    other = veba_event("VmPoweredOnEvent")
    with pytest.raises(HandlerError) as failed:
        veba_invoke(NOTIFY, other, secrets=secrets)
    assert failed.value.response.status == 422
    assert "not 'VmPoweredOnEvent': check the function's topic" in str(failed.value)
    assert server.requests == []  # neither was posted

    with pytest.raises(HandlerError) as failed:
        veba_invoke(NOTIFY, veba_event("EnteredMaintenanceModeEvent"), secrets=secrets)
    assert "WebhookRejected: the webhook refused the post: 404" in str(failed.value)
    assert len(server.requests) == 1  # a 4xx is not retried within the call
