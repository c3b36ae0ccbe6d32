"""examples/vro-workflow against a local imitation of vRO's REST API
(``POST /vco/api/workflows/{id}/executions``): the request's auth and body, one
execution per event even when it is redelivered, and clear failures."""

from __future__ import annotations

import base64
import json
import re
import uuid
from typing import Any

import pytest

from tests.examples.support import LocalServer, Reply, Request, StoreService, example
from veba.testing import HandlerError

VRO_WORKFLOW = example("vro-workflow")
WORKFLOW = "c0ffee00-1111-4222-8333-444455556666"
USER, PASSWORD = "svc-veba@vsphere.local", "Orch3strat0r!"
EXECUTIONS = re.compile(r"^/vco/api/workflows/([^/]+)/executions/?$")


class FakeVro:
    """Answers as vRO does: 202 and the execution's URL in Location; 401 for wrong
    credentials, 404 for an unknown workflow, 400 for a body that is not a context."""

    def __init__(self) -> None:
        self.server: LocalServer | None = None
        self.executions: list[str] = []

    def __call__(self, request: Request) -> Reply:
        assert self.server is not None
        match = EXECUTIONS.match(request.path)
        if request.method != "POST" or match is None:
            return 404, {}, b""
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if request.headers.get("authorization") != expected:
            return 401, {"Content-Type": "application/json"}, b'{"status":401}'
        if match.group(1) != WORKFLOW:
            return 404, {"Content-Type": "application/json"}, b'{"status":404}'
        try:
            assert isinstance(request.json()["parameters"], list)
        except (ValueError, KeyError, AssertionError):
            return 400, {}, b"not an execution context"
        execution = str(uuid.uuid4())
        self.executions.append(execution)
        location = f"{self.server.url}/vco/api/workflows/{WORKFLOW}/executions/{execution}/"
        return 202, {"Location": location}, b""


def vroconfig(server: LocalServer, password: str = PASSWORD) -> str:
    return f'[vro]\nserver = "{server.url}"\nuser = "{USER}"\npassword = "{password}"\n'


@pytest.fixture
def vro(local_server: Any) -> tuple[FakeVro, LocalServer]:
    fake = FakeVro()
    fake.server = local_server(fake)
    return fake, fake.server


def test_starts_the_workflow_once_per_event(
    vro: tuple[FakeVro, LocalServer], veba_store: StoreService, veba_event: Any, veba_invoke: Any
) -> None:
    fake, server = vro
    event = veba_event(
        "VmCreatedEvent", {"data.Vm.Name": "app-new-01", "data.UserName": "LAB\\alice"}
    )
    options = {
        "secrets": {"vroconfig": vroconfig(server)},
        "environment": {**veba_store.env("vro-workflow"), "VRO_WORKFLOW_ID": WORKFLOW},
    }
    response = veba_invoke(VRO_WORKFLOW, event, **options)

    assert response.status == 200
    result = response.json()
    assert result["workflow"] == WORKFLOW and result["execution"] == fake.executions[0]
    assert result["location"].endswith(f"/executions/{fake.executions[0]}/")
    (request,) = server.wait_for(1)
    assert request.headers["content-type"] == "application/json"
    assert request.headers["authorization"].startswith("Basic ")
    user, _, password = (
        base64.b64decode(request.headers["authorization"][6:]).decode().partition(":")
    )
    assert (user, password) == (USER, PASSWORD)

    def string(name: str, value: str) -> dict[str, Any]:
        return {
            "name": name,
            "type": "string",
            "scope": "local",
            "value": {"string": {"value": value}},
        }

    assert request.json() == {
        "parameters": [
            string("vmName", "app-new-01"),
            string("vmId", event["data"]["Vm"]["Vm"]["Value"]),
            string("eventType", "VmCreatedEvent"),
            string("eventId", event["id"]),
            string("userName", "LAB\\alice"),
            string("message", event["data"]["FullFormattedMessage"]),
        ]
    }

    # Redelivered (a lost ack): the stored execution, no second run.
    again = veba_invoke(VRO_WORKFLOW, event, attempt=2, **options)
    assert again.json() == result
    assert len(server.requests) == 1 and len(fake.executions) == 1


def test_inputs_follow_vro_parameters(
    vro: tuple[FakeVro, LocalServer], veba_store: StoreService, veba_event: Any, veba_invoke: Any
) -> None:
    _, server = vro
    event = veba_event("VmClonedEvent", {"data.Vm.Name": "app-new-02"})
    environment = {
        **veba_store.env("vro-workflow"),
        "VRO_WORKFLOW_ID": WORKFLOW,
        "VRO_PARAMETERS": "name=data.Vm.Name, key=data.Key, template=data.Template, "
        "source=data.SourceVm, missing=data.NoSuchField?",
        "VRO_EVENT_PARAMETER": "cloudEvent",
    }
    veba_invoke(
        VRO_WORKFLOW, event, secrets={"vroconfig": vroconfig(server)}, environment=environment
    )
    params = {p["name"]: p for p in server.wait_for(1)[0].json()["parameters"]}
    assert list(params) == ["name", "key", "template", "source", "cloudEvent"]  # no "missing"
    assert params["key"]["value"] == {"number": {"value": event["data"]["Key"]}}
    assert params["template"]["value"] == {"boolean": {"value": False}}
    assert json.loads(params["source"]["value"]["string"]["value"])["Name"] == "build-02"
    assert json.loads(params["cloudEvent"]["value"]["string"]["value"]) == event


def test_bad_events_and_refusals_fail_clearly(
    vro: tuple[FakeVro, LocalServer], veba_store: StoreService, veba_event: Any, veba_invoke: Any
) -> None:
    fake, server = vro
    environment = {**veba_store.env("vro-workflow"), "VRO_WORKFLOW_ID": WORKFLOW}

    no_vm = veba_event("VmCreatedEvent")
    no_vm["data"]["Vm"] = None
    with pytest.raises(HandlerError) as failed:
        veba_invoke(
            VRO_WORKFLOW, no_vm, secrets={"vroconfig": vroconfig(server)}, environment=environment
        )
    assert failed.value.response.status == 422  # not retried: the same event fails again
    assert "has no data.Vm.Name: data.Vm is null" in str(failed.value)
    assert server.requests == []  # vRO never saw it

    event = veba_event("VmCreatedEvent", {"data.Key": 7001})
    with pytest.raises(HandlerError) as failed:
        veba_invoke(
            VRO_WORKFLOW,
            event,
            secrets={"vroconfig": vroconfig(server, password="wrong-password")},
            environment=environment,
        )
    assert failed.value.response.status == 500  # a redeployed secret can fix it: retried
    assert f"vRO refused the credentials of user '{USER}' (secret vroconfig): 401" in str(
        failed.value
    )
    assert "wrong-password" not in str(failed.value)

    with pytest.raises(HandlerError) as failed:
        veba_invoke(
            VRO_WORKFLOW,
            event,
            secrets={"vroconfig": vroconfig(server)},
            environment={**environment, "VRO_WORKFLOW_ID": "no-such-workflow"},
        )
    assert "vRO has no workflow 'no-such-workflow' (VRO_WORKFLOW_ID): 404" in str(failed.value)
    assert fake.executions == []
