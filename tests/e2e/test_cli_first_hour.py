"""The CLI as a newcomer meets it: which appliance a command talks to and why,
sample events of any type, events by the seq the list shows, readable views."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.harness import ApplianceProcess, write_function, write_stack
from tests.support import free_port, wait_for

SAMPLE = Path(__file__).parent.parent / "data" / "cloudevent-vm-powered-off.json"
STRUCTURED = {"Content-Type": "application/cloudevents+json"}

HELLO = """
def handle(event, context):
    return {"statusCode": 200, "body": "hello"}
"""

# Answers with the CloudEvent it got: binary mode's ce-* headers, and the body.
MIRROR = """
import json

def handle(event, context):
    ce = {k.lower()[3:]: v for k, v in event.headers.items() if k.lower().startswith("ce-")}
    return {"statusCode": 200, "body": json.dumps({"headers": ce, "body": json.loads(event.body)})}
"""

BROKEN = """
def handle(event, context):
    raise RuntimeError("the tag service said no")
"""


def test_every_command_talks_to_the_same_appliance_and_says_why(
    appliance_factory: type, tmp_path: Path
) -> None:
    app: ApplianceProcess = appliance_factory.start("--no-simulator")
    folder = tmp_path / "fn"
    write_function(folder / "hello", HELLO)
    stack = write_stack(
        folder / "stack.yml", {"hello": {"lang": "python3-http", "handler": "./hello"}}
    )
    nowhere = f"http://127.0.0.1:{free_port()}"
    stack.write_text(stack.read_text().replace("http://127.0.0.1:8080", nowhere))
    no_url = {"VEBA_URL": None}  # as a newcomer runs it: no variables set

    # Beside a stack.yml naming another gateway, `up` and `list` both go there, and say why.
    for command in (["up"], ["list"], ["logs", "hello"]):
        refused = app.cli(*command, cwd=folder, check=False, env=no_url)
        assert refused.returncode == 1, command
        assert (
            f"cannot reach the appliance at {nowhere} (from stack.yml provider.gateway)"
            in refused.stderr
        ), command
        # ... and which appliance this machine's data directory has.
        assert f"serves on {app.url}: pass --gateway {app.url}" in refused.stderr, command

    # --gateway wins over the stack for every command, and `up` says where it deploys.
    up = app.cli("up", "--gateway", app.url, cwd=folder, env=no_url)
    assert f"hello: deploying to {app.url} (from --gateway)" in up.stderr
    listed = app.cli("list", "--gateway", app.url, "-o", "json", cwd=folder, env=no_url)
    assert [f["name"] for f in json.loads(listed.stdout)] == ["hello"]

    # Elsewhere: the appliance this data directory records, for both, and `up -f` says so.
    stack.write_text(stack.read_text().replace(nowhere, app.url))
    up = app.cli("up", "-f", str(stack), cwd=tmp_path, env=no_url)
    assert f"hello: deploying to {app.url} (from {stack} provider.gateway)" in up.stderr
    assert "hello" in app.cli("list", cwd=tmp_path, env=no_url).stdout
    assert "hello" in app.cli("list", cwd=folder, env=no_url).stdout


def test_invoke_event_builds_any_catalogue_type_in_the_functions_shape(
    appliance_factory: type, tmp_path: Path
) -> None:
    app: ApplianceProcess = appliance_factory.start("--no-simulator")
    write_function(tmp_path / "fn" / "mirror", MIRROR)
    stack = write_stack(
        tmp_path / "fn" / "stack.yml",
        {
            "mirror": {"lang": "python3-http", "handler": "./mirror"},
            "mirror8": {"lang": "python3-http", "handler": "./mirror",
                        "annotations": {"veba.event-shape": "v0.8"}},
        },
    )  # fmt: skip
    app.cli("up", "-f", str(stack))

    # A type the built-in simulator does not make: built from its pyVmomi class.
    got = json.loads(
        app.cli(
            "invoke", "mirror", "--event", "HostConnectionLostEvent",
            "--set", "data.Host.Name=esx42.lab.local",
        ).stdout
    )  # fmt: skip
    event = got["body"]  # v0.7: structured, the whole CloudEvent in the body
    assert (event["type"], event["subject"]) == (
        "com.vmware.event.router/event",
        "HostConnectionLostEvent",
    )
    data = event["data"]
    assert data["Host"]["Name"] == "esx42.lab.local"
    assert data["Host"]["Host"]["Type"] == "HostSystem"
    assert data["Host"]["Host"]["Value"].startswith("host-")
    assert data["Datacenter"]["Datacenter"]["Value"].startswith("datacenter-")
    assert data["CreatedTime"].endswith("Z") and data["UserName"]
    assert data["FullFormattedMessage"].startswith("vCenter lost its connection to a host")

    # The v0.8 shape for a function that asks for it: binary mode, v0.8's type.
    got = json.loads(app.cli("invoke", "mirror8", "--event", "VmRenamedEvent").stdout)
    assert got["headers"]["type"] == "com.vmware.vsphere.VmRenamedEvent.v0"
    assert got["headers"]["eventclass"] == "event" and "subject" not in got["headers"]
    assert got["body"]["Vm"]["Vm"]["Type"] == "VirtualMachine"
    assert {"OldName", "NewName"} <= set(got["body"])

    # An EventEx id VEBA's examples subscribe to, known without a vCenter.
    got = json.loads(app.cli("invoke", "mirror", "--event", "com.vmware.sso.LoginFailure").stdout)
    assert got["body"]["subject"] == "com.vmware.sso.LoginFailure"
    assert got["body"]["data"]["EventTypeId"] == "com.vmware.sso.LoginFailure"

    # A misspelled path is refused with the real one; --add sets a new field on purpose.
    typo = app.cli(
        "invoke", "mirror", "--event", "VmPoweredOnEvent", "--set", "data.Vm.Nmae=x", check=False
    )
    assert typo.returncode == 1 and "Traceback" not in typo.stderr
    assert "did you mean data.Vm.Name?" in typo.stderr
    added = app.cli(
        "invoke", "mirror", "--event", "VmPoweredOnEvent", "--add", "data.Vm.Nmae=x"
    ).stdout
    assert json.loads(added)["body"]["data"]["Vm"]["Nmae"] == "x"
    unknown = app.cli("invoke", "mirror", "--event", "VmPowerdOnEvent", check=False)
    assert unknown.returncode == 1 and "did you mean VmPoweredOnEvent" in unknown.stderr

    # The shell completes deployed function names (bash, as `veba --install-completion` sets up).
    for words in ("veba invoke mir", "veba logs mir", "veba replay mir"):
        completion = {"_VEBA_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": "2"}
        assert app.cli(env=completion).stdout.split() == ["mirror", "mirror8"], words

    # The catalogue describes the common types without a vCenter.
    shown = app.cli("catalog", "show", "HostConnectionLostEvent", "-o", "json").stdout
    assert json.loads(shown)["description"].startswith("vCenter lost its connection")


def test_events_and_dead_letters_by_seq_in_readable_views(
    appliance_factory: type, tmp_path: Path
) -> None:
    app: ApplianceProcess = appliance_factory.start("--no-simulator")
    write_function(tmp_path / "fn" / "broken", BROKEN)
    stack = write_stack(
        tmp_path / "fn" / "stack.yml",
        {"broken": {"lang": "python3-http", "handler": "./broken",
                    "annotations": {"topic": "VmPoweredOffEvent"}, "delivery": {"retry": 0}}},
    )  # fmt: skip
    app.cli("up", "-f", str(stack))
    event = json.loads(SAMPLE.read_text())
    with app.client() as http:
        assert http.post("/webhook", json=event, headers=STRUCTURED).status_code == 200
    dead = wait_for(
        lambda: json.loads(app.cli("dlq", "list", "-o", "json").stdout), 60, "the dead letter"
    )
    (row,) = json.loads(app.cli("events", "list", "-o", "json").stdout)

    # The seq the list shows works as well as the id; an unknown one says which it tried.
    by_seq = json.loads(app.cli("events", "show", str(row["seq"]), "-o", "json").stdout)
    assert by_seq == json.loads(app.cli("events", "show", event["id"], "-o", "json").stdout)
    assert by_seq["event"]["id"] == event["id"] and by_seq["deliveries"][0]["status"] == "dead"
    missing = app.cli("events", "show", "99999", check=False)
    assert missing.returncode == 1 and "no event with id or seq '99999'" in missing.stderr

    # Readable: local times with how long ago, the traceback as lines, no epoch floats.
    shown = app.cli("events", "show", str(row["seq"]), "-o", "table").stdout
    assert "subject" in shown and "VmPoweredOffEvent" in shown and " ago)" in shown
    assert "delivery" in shown and "dead" in shown
    assert str(row["received"]) not in shown
    letter = app.cli("dlq", "show", str(dead[0]["id"]), "-o", "table").stdout
    lines = letter.splitlines()
    assert any("Traceback (most recent call last):" in line for line in lines)
    assert any("RuntimeError: the tag service said no" in line for line in lines)
    assert "\\n" not in letter and " ago)" in letter
    assert f"veba dlq redrive {dead[0]['id']}" in letter
    status = app.cli("status", "-o", "table").stdout
    assert "broken" in status and "ready" in status and "dead" in status
    assert not status.lstrip().startswith("{")
    # JSON on request, as before.
    assert json.loads(app.cli("status", "-o", "json").stdout)["functions"] == {"broken": "ready"}
