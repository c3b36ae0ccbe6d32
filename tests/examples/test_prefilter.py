"""examples/prefilter: events about matching VMs are dropped (by name, and by
inventory path looked up in govmomi's simulator); the rest are forwarded to a
local downstream (or returned); a bad regex fails clearly."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.examples.support import LocalServer, Reply, Request, example, vcconfig
from tests.vcsim import VCSim, free_port, wait_task
from veba.testing import HandlerError

PREFILTER = example("prefilter")
# For the tests that must not reach vCenter: nothing listens there.
NO_VCENTER = (
    f'[vcenter]\nserver = "http://127.0.0.1:{free_port()}"\nuser = "u"\npassword = "p4ss"\n'
)


def downstream(*statuses: int) -> Any:
    """Answers the given statuses in turn, then 200 {"ok": true}."""
    queue = list(statuses)

    def respond(request: Request) -> Reply:
        status = queue.pop(0) if queue else 200
        body = {"ok": status < 300, "status": status}
        return status, {"Content-Type": "application/json"}, json.dumps(body).encode()

    return respond


def test_drops_by_name_and_forwards_the_rest(
    local_server: Any, veba_event: Any, veba_invoke: Any
) -> None:
    server: LocalServer = local_server(downstream(503))  # the first post fails
    environment = {"DROP_VM_NAME": "^vCLS-", "FORWARD_URL": f"{server.url}/function/tag-vm"}
    secrets = {"vcconfig": NO_VCENTER}

    vcls = veba_event("VmPoweredOnEvent", {"data.Vm.Name": "vCLS-4c3b0d6e"})
    dropped = veba_invoke(PREFILTER, vcls, environment=environment, secrets=secrets)
    assert dropped.status == 200 and dropped.headers["X-Veba-Dropped"] == "prefilter"
    assert dropped.json() == {
        "dropped": True,
        "reason": "VM name 'vCLS-4c3b0d6e' matches DROP_VM_NAME",
    }

    web = veba_event("VmPoweredOnEvent", {"data.Vm.Name": "web-01"})
    kept = veba_invoke(PREFILTER, web, environment=environment, secrets=secrets)
    assert kept.status == 200 and kept.json() == {"ok": True, "status": 200}  # downstream's
    first, second = server.wait_for(2)  # a 503, retried; vCLS was never posted
    assert len(server.requests) == 2
    assert (second.method, second.path) == ("POST", "/function/tag-vm")
    assert second.headers["content-type"] == "application/cloudevents+json"
    assert second.json() == web and first.body == second.body

    # No VM, nothing to match: passed on.
    host = veba_event("EnteredMaintenanceModeEvent")
    assert veba_invoke(PREFILTER, host, environment=environment, secrets=secrets).ok
    assert server.wait_for(3)[2].json() == host


def test_without_forward_url_the_kept_event_is_the_answer(
    veba_event: Any, veba_invoke: Any
) -> None:
    event = veba_event("VmPoweredOffEvent", {"data.Vm.Name": "db-01"})
    response = veba_invoke(
        PREFILTER,
        event,
        environment={"DROP_VM_NAME": "^vCLS-", "FORWARD_URL": ""},
        secrets={"vcconfig": NO_VCENTER},
    )
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/cloudevents+json"
    assert response.json() == event


def test_drops_by_inventory_path_looked_up_in_vcenter(
    sim: VCSim, veba_event: Any, veba_invoke: Any
) -> None:
    si = sim.connect()
    keep, sandboxed = sim.vms(si)[:2]
    datacenter = si.content.rootFolder.childEntity[0]
    wait_task(datacenter.vmFolder.CreateFolder("Sandbox").MoveIntoFolder_Task([sandboxed]))
    options = {
        "environment": {"DROP_VM_NAME": "", "DROP_VM_PATH": "/vm/Sandbox/", "FORWARD_URL": ""},
        "secrets": {"vcconfig": vcconfig(sim)},
    }

    def about(vm: Any, moref: str | None = None) -> dict[str, Any]:
        fields = {"data.Vm.Name": vm.name, "data.Vm.Vm.Value": moref or vm._moId}
        return dict(veba_event("VmPoweredOnEvent", {**fields, "source": sim.url}))

    dropped = veba_invoke(PREFILTER, about(sandboxed), **options)
    assert dropped.json() == {
        "dropped": True,
        "reason": f"VM path '/DC0/vm/Sandbox/{sandboxed.name}' matches DROP_VM_PATH",
    }
    kept = about(keep)  # /DC0/vm/DC0_H0_VM0
    assert veba_invoke(PREFILTER, kept, **options).json() == kept
    # A VM vCenter no longer has (removed since): its path is unknown, so it passes.
    gone = about(sandboxed, moref="vm-9999")
    assert veba_invoke(PREFILTER, gone, **options).json() == gone


def test_a_bad_regex_or_a_refusing_downstream_fail_clearly(
    local_server: Any, veba_event: Any, veba_invoke: Any
) -> None:
    event = veba_event("VmPoweredOnEvent", {"data.Vm.Name": "web-01"})
    with pytest.raises(HandlerError) as failed:
        veba_invoke(
            PREFILTER,
            event,
            environment={"DROP_VM_NAME": "^(vCLS-", "FORWARD_URL": ""},
            secrets={"vcconfig": NO_VCENTER},
        )
    assert failed.value.response.status == 500
    assert "DROP_VM_NAME='^(vCLS-' is not a valid regular expression" in str(failed.value)

    # The downstream says the event is bad (422): that is the answer, not retried here
    # nor by the appliance (a 4xx other than 404/408/409/429).
    server: LocalServer = local_server(downstream(422))
    refused = veba_invoke(
        PREFILTER,
        event,
        environment={"DROP_VM_NAME": "", "FORWARD_URL": server.url},
        secrets={"vcconfig": NO_VCENTER},
        raises=False,
    )
    assert refused.status == 422 and refused.json() == {"ok": False, "status": 422}
    assert len(server.requests) == 1
