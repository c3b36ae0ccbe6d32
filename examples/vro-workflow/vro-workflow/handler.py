"""vro-workflow: run a vRealize Orchestrator (Aria Automation Orchestrator) workflow
for each event, with inputs taken from the event.

``POST {server}/vco/api/workflows/{VRO_WORKFLOW_ID}/executions`` with basic auth
(the ``vroconfig`` secret) and a JSON execution context; vRO answers 202 with the
new execution's URL in ``Location``. ``VRO_PARAMETERS`` maps workflow inputs to
event paths (``vmName=data.Vm.Name,...``; a trailing ``?`` makes one optional).

``@idempotent``: a redelivery of an event does not start the workflow again; it
gets the first call's execution. Only a post that vRO certainly did not act on
(connection refused, 502/503/504) is retried within the call.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from veba.sdk import Event, VCenterConfig, get_logger, idempotent, remaining, retry, secret

log = get_logger()

WORKFLOW_ID = os.environ.get("VRO_WORKFLOW_ID", "").strip()
PARAMETERS = os.environ.get(
    "VRO_PARAMETERS",
    "vmName=data.Vm.Name,vmId=data.Vm.Vm.Value,eventType=subject,eventId=id,"
    "userName=data.UserName?,message=data.FullFormattedMessage?",
)
EVENT_PARAMETER = os.environ.get("VRO_EVENT_PARAMETER", "").strip()  # the whole event, as JSON


class VroUnavailable(RuntimeError):
    """vRO did not take the request and did not act on it (refused, 502, 503, 504)."""


class VroError(RuntimeError):
    """vRO refused the request (a 500 for the delivery: retried, then dead-lettered)."""


def mapping(spec: str) -> list[tuple[str, str, bool]]:
    """``name=path[?],...`` as (input name, event path, required)."""
    out = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, path = item.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path.rstrip("?"):
            raise ValueError(
                f"VRO_PARAMETERS: {item!r} is not name=path (e.g. vmName=data.Vm.Name)"
            )
        out.append((name, path.rstrip("?"), not path.endswith("?")))
    return out


def parameter(name: str, value: Any) -> dict[str, Any]:
    """One input of a vRO execution context, typed as vRO wants it."""
    if isinstance(value, bool):
        kind, inner = "boolean", value
    elif isinstance(value, int | float):
        kind, inner = "number", value
    elif isinstance(value, str):
        kind, inner = "string", value
    else:  # objects and lists: as JSON text
        kind, inner = "string", json.dumps(value)
    return {"name": name, "type": kind, "scope": "local", "value": {kind: {"value": inner}}}


def execution_context(event: Event) -> dict[str, Any]:
    parameters = []
    for name, path, required in mapping(PARAMETERS):
        value = event.require(path) if required else event.get(path)  # MissingField: a 422
        if value is not None:
            parameters.append(parameter(name, value))
    if EVENT_PARAMETER:
        parameters.append(parameter(EVENT_PARAMETER, json.dumps(event.to_dict())))
    return {"parameters": parameters}


def vro_config() -> VCenterConfig:
    """server, user, password, insecure from the secret's [vro] table (parsed, and
    checked with clear errors, as the SDK parses a vcconfig)."""
    doc = tomllib.loads(secret("vroconfig"))
    table = doc.get("vro", doc)
    if not isinstance(table, dict):
        raise ValueError("secret 'vroconfig': [vro] is not a table")
    return VCenterConfig.from_toml(table, "vroconfig")


def start(config: VCenterConfig, workflow: str, body: dict[str, Any]) -> str:
    """Start the workflow; the new execution's URL."""
    url = (
        f"{config.scheme}://{config.host}:{config.port}/vco/api/workflows/"
        f"{urllib.parse.quote(workflow, safe='')}/executions"
    )
    token = base64.b64encode(f"{config.user}:{config.password}".encode()).decode("ascii")
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={
            "Authorization": f"Basic {token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        },
        method="POST",
    )
    context = None
    if config.scheme == "https":
        context = ssl.create_default_context()
        if config.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    left = remaining()
    timeout = 30.0 if left is None else max(0.5, min(30.0, left))
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            location = response.headers.get("Location") or ""
            if response.status != 202 or not location:
                raise VroError(f"vRO answered {response.status} without an execution to follow")
            return location
    except urllib.error.HTTPError as exc:
        detail = exc.read(500).decode("utf-8", "replace").strip()
        if exc.code in (502, 503, 504):
            raise VroUnavailable(f"vRO answered {exc.code}") from None
        if exc.code == 401:
            raise VroError(
                f"vRO refused the credentials of user {config.user!r} (secret vroconfig): 401"
            ) from None
        if exc.code == 404:
            raise VroError(f"vRO has no workflow {workflow!r} (VRO_WORKFLOW_ID): 404") from None
        raise VroError(f"vRO refused to start the workflow: {exc.code} {detail}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ConnectionRefusedError):
            raise VroUnavailable(f"vRO refused the connection: {exc.reason}") from None
        raise  # a timeout or reset: vRO may have started it, so not retried here


@idempotent  # key: the CloudEvent's source and id, which a redelivery keeps
def handle(event, context):
    ev = Event(event)
    if not WORKFLOW_ID:
        raise ValueError("VRO_WORKFLOW_ID is not set: add it under environment: in stack.yml")
    body = execution_context(ev)
    config = vro_config()
    location = retry(lambda: start(config, WORKFLOW_ID, body), attempts=4, on=VroUnavailable)
    execution = location.rstrip("/").rsplit("/", 1)[-1]
    log.info(
        "workflow started", workflow=WORKFLOW_ID, execution=execution, vm=ev.get("data.Vm.Name")
    )
    return {
        "statusCode": 200,
        "body": {"workflow": WORKFLOW_ID, "execution": execution, "location": location},
    }
