"""OpenFaaS-era VEBA functions, unchanged: secrets read from /var/openfaas/secrets,
a pod-style hostname, chaining through gateway.openfaas:8080, every template name.

The functions below are written the way VEBA's published Python examples are
(tagging, pre-filter, echo): hard-coded OpenFaaS paths and names, nothing
veba-specific. Events come from the built-in simulator.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.harness import ApplianceProcess, read_jsonl, wait_for, write_function, write_stack

VCCONFIG = """[vcenter]
server = "vcsa.lab.local"
user = "administrator@vsphere.local"
pass = "Tagging-S3cret!"
"""

# As VEBA's tagging example: the vCenter config from the OpenFaaS secret path.
TAGGING = """
import json, os, socket

VC_CONFIG = '/var/openfaas/secrets/vcconfig'

def handle(req):
    cevent = json.loads(req)
    with open(VC_CONFIG, 'r') as vcconfigfile:
        vcconfig = vcconfigfile.read()
    line = json.dumps({
        "subject": cevent["subject"],
        "vm": cevent["data"]["Vm"]["Name"],
        "server_line": vcconfig.splitlines()[1],
        "secrets": sorted(os.listdir('/var/openfaas/secrets')),
        "shm": sorted(os.listdir('/dev/shm')),
        "hostname": socket.gethostname(),
        "env_hostname": os.environ.get("HOSTNAME"),
    })
    with open(os.environ["OUT"], "a") as out:
        out.write(line + "\\n")
    print("tagged", cevent["data"]["Vm"]["Name"])
"""

# As VEBA's pre-filter: find its own name from the pod's hostname, add it to the
# event's faasstack and call the next function through the OpenFaaS gateway.
PRE_FILTER = """
import json, os, socket, urllib.request

def faasFunctionName():
    return "-".join(socket.gethostname().split("-")[:-2])

def handle(req):
    cevent = json.loads(req)
    cevent.setdefault('faasstack', []).append(faasFunctionName())
    func = os.getenv("call_function", default="")
    route = os.getenv("call_route", default="function")
    request = urllib.request.Request(
        f'http://gateway.openfaas:8080/{route}/{func}', data=json.dumps(cevent).encode(),
        method="POST")
    with urllib.request.urlopen(request, timeout=20) as res:
        return res.read().decode(), res.status
"""

# The chained function: records what reached it.
CHAINED = """
import json, os

def handle(req):
    cevent = json.loads(req)
    with open(os.environ["OUT"], "a") as out:
        out.write(json.dumps({"id": cevent["id"], "faasstack": cevent.get("faasstack"),
                              "via": os.environ.get("VIA")}) + "\\n")
    return "chained got " + cevent["id"]
"""


def _powered_on(app: ApplianceProcess) -> dict[str, Any]:
    """A VmPoweredOnEvent from the built-in simulator, now."""
    with app.client() as http:
        r = http.post(
            "/api/v1/providers/simulator/trigger", json={"event_class": "VmPoweredOnEvent"}
        )
        assert r.status_code == 200, r.text
        # The operation may log other events first (a DRS placement, say).
        events = [e for e in r.json()["events"] if e["subject"] == "VmPoweredOnEvent"]
        assert len(events) == 1, r.json()
        event: dict[str, Any] = events[0]
        return event


def test_secrets_are_read_from_the_openfaas_path_and_the_hostname_is_pod_style(
    appliance_factory: type, tmp_path: Path
) -> None:
    out = tmp_path / "tagging.jsonl"
    app = appliance_factory.start("--simulator-rate", "0")
    (tmp_path / "vcconfig.toml").write_text(VCCONFIG)
    app.cli("secret", "create", "vcconfig", "--from-file", str(tmp_path / "vcconfig.toml"))
    app.cli("secret", "create", "not-declared", "--from-literal", "other-function-only")
    write_function(tmp_path / "fn" / "handler", TAGGING)
    stack = write_stack(
        tmp_path / "fn" / "stack.yml",
        {
            "pytag-fn": {
                "lang": "python3",
                "handler": "./handler",
                "image": "vmware/veba-python-tagging:latest",
                "environment": {"write_debug": True, "read_debug": True, "OUT": str(out)},
                "secrets": ["vcconfig"],
                "annotations": {"topic": "VmPoweredOnEvent"},
            }
        },
    )
    app.cli("up", "-f", str(stack))
    event = _powered_on(app)

    got = wait_for(lambda: read_jsonl(out), 60, "the tagging function to read its secret")[0]
    assert got["vm"] == event["data"]["Vm"]["Name"] and got["subject"] == "VmPoweredOnEvent"
    assert got["server_line"] == 'server = "vcsa.lab.local"'
    # Only its own secret, and nothing of any other function in its /dev/shm.
    assert got["secrets"] == ["vcconfig"] and got["shm"] == []
    # A Deployment's pod name: <function>-<hash>-<5 chars>, so VEBA code that
    # strips the last two parts finds its own name.
    hostname = got["hostname"]
    assert "-".join(hostname.split("-")[:-2]) == "pytag-fn", hostname
    assert len(hostname.split("-")[-1]) == 5 and got["env_hostname"] == hostname

    # The decrypted value is on no shared disk or memory folder of the machine.
    for path in Path("/dev/shm").glob("veba-secrets*pytag-fn*"):
        raise AssertionError(f"secrets folder left on the host: {path}")
    for path in app.data_dir.rglob("*"):
        if path.is_file():
            assert b"Tagging-S3cret!" not in path.read_bytes(), path


# As VEBA's ESX MTU fixer (lang: python): one Kubernetes secret with three keys,
# each read from its own file, as OpenFaaS mounts them.
MTU_FIXER = """
import json, os

def handle(req):
    with open("/var/openfaas/secrets/vc-user", "r") as vc_user:
        vcenter_user = vc_user.read()
    with open("/var/openfaas/secrets/vc-password", "r") as vc_pass:
        vcenter_pass = vc_pass.read()
    with open("/var/openfaas/secrets/vc-host", "r") as vc_host:
        vcenter_host = vc_host.read()
    with open(os.environ["OUT"], "a") as out:
        out.write(json.dumps({"host": vcenter_host, "user": vcenter_user,
                              "pass_len": len(vcenter_pass),
                              "files": sorted(os.listdir("/var/openfaas/secrets"))}) + "\\n")
    return "Changed hosts:\\n"
"""


def test_a_secret_with_several_keys_is_one_file_per_key(
    appliance_factory: type, tmp_path: Path
) -> None:
    out = tmp_path / "mtu.jsonl"
    app = appliance_factory.start("--simulator-rate", "0")
    # The create_secret.sh of VEBA's example, with veba for kubectl.
    app.cli(
        "secret", "create", "vc-credentials",
        "--from-literal=vc-password=Mtu-P4ss=word",
        "--from-literal=vc-host=vcsa.lab.local",
        "--from-literal=vc-user=administrator@vsphere.local",
    )  # fmt: skip
    write_function(tmp_path / "fn" / "esx-mtu-fixer", MTU_FIXER)
    stack = write_stack(
        tmp_path / "fn" / "stack.yml",
        {
            "esx-mtu-fixer": {
                "lang": "python",
                "handler": "./esx-mtu-fixer",
                "image": "vmware/veba-python-esx-mtu:latest",
                "annotations": {"topic": "VmPoweredOnEvent"},
                "environment": {"write_debug": True, "read_debug": True, "OUT": str(out)},
                "secrets": ["vc-credentials"],
            }
        },
    )
    app.cli("up", "-f", str(stack))
    _powered_on(app)
    got = wait_for(lambda: read_jsonl(out), 120, "the MTU fixer to read its three keys")[0]
    assert got == {
        "host": "vcsa.lab.local",
        "user": "administrator@vsphere.local",
        "pass_len": len("Mtu-P4ss=word"),
        "files": ["vc-host", "vc-password", "vc-user"],
    }
    # Its answer is what the classic template prints: the return value and a newline.
    assert app.cli("invoke", "esx-mtu-fixer", "--data", "{}").stdout.startswith("Changed hosts:")


def test_a_function_calls_another_through_gateway_openfaas(
    appliance_factory: type, tmp_path: Path
) -> None:
    out = tmp_path / "chained.jsonl"
    app = appliance_factory.start("--simulator-rate", "0")
    write_function(tmp_path / "fn" / "pre-filter", PRE_FILTER)
    write_function(tmp_path / "fn" / "veba-echo", CHAINED)
    functions = {
        "pre-filter": {
            "lang": "python3-flask",
            "handler": "./pre-filter",
            "environment": {"call_function": "veba-echo"},
            "annotations": {"topic": "VmPoweredOnEvent"},
        },
        "pre-filter-async": {
            "lang": "python3-flask",
            "handler": "./pre-filter",
            "environment": {"call_function": "veba-echo", "call_route": "async-function"},
            "annotations": {"topic": "VmPoweredOnEvent"},
        },
        "veba-echo": {
            "lang": "python3",
            "handler": "./veba-echo",
            "environment": {"OUT": str(out)},
        },
    }
    app.cli("up", "-f", str(write_stack(tmp_path / "fn" / "stack.yml", functions)))
    event = _powered_on(app)

    def both() -> list[dict[str, Any]]:
        got = read_jsonl(out)
        return got if len(got) == 2 else []

    got = wait_for(both, 60, "the synchronous and the asynchronous chained call")
    assert {g["id"] for g in got} == {event["id"]}
    assert sorted(g["faasstack"][0] for g in got) == ["pre-filter", "pre-filter-async"]

    # Both callers' deliveries succeeded: the gateway answered them.
    def delivered() -> list[dict[str, Any]]:
        with app.client() as http:
            ds = http.get(f"/api/v1/events/{event['id']}").json()["deliveries"]
        return ds if all(d["status"] == "delivered" for d in ds) else []

    deliveries = wait_for(delivered, 30, "both deliveries recorded as delivered")
    assert sorted(d["subscription"] for d in deliveries) == ["pre-filter", "pre-filter-async"]


WHERE_IS_THE_GATEWAY = """
import socket

def handle(req):
    return socket.gethostbyname("gateway.openfaas")
"""


def test_the_gateway_for_functions_refuses_everyone_else(
    appliance_factory: type, tmp_path: Path
) -> None:
    app = appliance_factory.start("--no-simulator")
    write_function(tmp_path / "fn" / "whereis", WHERE_IS_THE_GATEWAY)
    write_function(tmp_path / "fn" / "target", "def handle(req):\n    return 'secret work'\n")
    functions = {
        "whereis": {"lang": "python3-flask", "handler": "./whereis"},
        "target": {"lang": "python3-flask", "handler": "./target"},
    }
    app.cli("up", "-f", str(write_stack(tmp_path / "fn" / "stack.yml", functions)))
    address = app.cli("invoke", "whereis").stdout.strip()
    assert address.startswith("127.") and address != "127.0.0.1", address
    # The test process is not one of veba's workers: no anonymous call goes through.
    for route in ("function", "async-function"):
        r = httpx.post(f"http://{address}:8080/{route}/target", content=b"x", timeout=30)
        assert r.status_code == 403, (route, r.text)
        assert "function workers only" in r.json()["error"]
    assert app.cli("invoke", "target").stdout.strip() == "secret work"


# One function per OpenFaaS Python template name VEBA users have, each with its
# template's handler signature; each records the event and answers its way.
TEMPLATES: dict[str, tuple[str, bytes]] = {
    "python": (
        """
import json, os

def handle(req):
    cevent = json.loads(req)
    with open(os.environ["OUT"], "a") as out:
        out.write(json.dumps({"lang": os.environ["LANG_NAME"], "id": cevent["id"]}) + "\\n")
    print("classic output")
    return cevent["subject"]
""",
        b"classic output\nVmPoweredOnEvent\n",
    ),
    "python3-flask": (
        """
import json, os

def handle(req):
    cevent = json.loads(req)
    with open(os.environ["OUT"], "a") as out:
        out.write(json.dumps({"lang": os.environ["LANG_NAME"], "id": cevent["id"]}) + "\\n")
    return {"subject": cevent["subject"]}, 201, {"X-Template": "flask"}
""",
        b'{"subject": "VmPoweredOnEvent"}',
    ),
    "python3-http": (
        """
import json, os

def handle(event, context):
    cevent = json.loads(event.body)
    with open(os.environ["OUT"], "a") as out:
        out.write(json.dumps({"lang": os.environ["LANG_NAME"], "id": cevent["id"],
                              "host": context.hostname}) + "\\n")
    return {"statusCode": 202, "body": cevent["subject"], "headers": {"X-Template": "http"}}
""",
        b"VmPoweredOnEvent",
    ),
}
TEMPLATE_OF = {
    "python": "python",
    "python3": "python",
    "python3-debian": "python",
    "python3-flask": "python3-flask",
    "python3-flask-debian": "python3-flask",
    "python3-http": "python3-http",
    "python3-http-debian": "python3-http",
}


def test_every_openfaas_python_template_name_runs_its_handler_unchanged(
    appliance_factory: type, tmp_path: Path
) -> None:
    out = tmp_path / "templates.jsonl"
    out.touch(0o666)  # seven functions, seven users (under a root appliance), one file
    out.chmod(0o666)
    app = appliance_factory.start("--simulator-rate", "0")
    functions = {}
    for lang, template in TEMPLATE_OF.items():
        name = f"fn-{lang}"
        write_function(tmp_path / "fn" / name, TEMPLATES[template][0])
        functions[name] = {
            "lang": lang,
            "handler": f"./{name}",
            "environment": {"OUT": str(out), "LANG_NAME": lang},
            "annotations": {"topic": "VmPoweredOnEvent"},
        }
    app.cli("up", "-f", str(write_stack(tmp_path / "fn" / "stack.yml", functions)))
    event = _powered_on(app)

    def all_got_it() -> list[dict[str, Any]]:
        got = [g for g in read_jsonl(out) if g["id"] == event["id"]]
        return got if len(got) == len(TEMPLATE_OF) else []

    got = wait_for(all_got_it, 60, "the event in every template")
    assert sorted(g["lang"] for g in got) == sorted(TEMPLATE_OF)
    http_host = next(g["host"] for g in got if g["lang"] == "python3-http")
    assert "-".join(http_host.split("-")[:-2]) == "fn-python3-http"

    # A synchronous call answers in each template's convention.
    body = json.dumps({**event, "id": "sync-call"}).encode()
    with app.client() as http:
        for lang, template in TEMPLATE_OF.items():
            r = http.post(f"/function/fn-{lang}", content=body)
            assert r.content == TEMPLATES[template][1], (lang, r.content)
            expected = {"python": 200, "python3-flask": 201, "python3-http": 202}[template]
            assert r.status_code == expected, lang
            if template != "python":
                assert r.headers["X-Template"] == template.removeprefix("python3-"), lang


# A curious function: what of the appliance's data dir can it read?
SNOOPS = """
import json, os

def handle(req):
    data_dir = req.strip()
    seen = {}
    for name in ("secret.key", "token", "events.db"):
        try:
            with open(os.path.join(data_dir, name), "rb") as f:
                seen[name] = len(f.read())
        except OSError as exc:
            seen[name] = exc.__class__.__name__
    listing = sorted(os.listdir(data_dir))
    return json.dumps({"seen": seen, "listing": listing, "uid": os.getuid(),
                       "functions": sorted(os.listdir(os.path.join(data_dir, "functions")))})
"""


def test_a_function_sees_none_of_the_appliance_but_its_own_code(
    appliance_factory: type, tmp_path: Path
) -> None:
    app = appliance_factory.start("--no-simulator")
    write_function(tmp_path / "fn" / "snoop", SNOOPS)
    write_function(
        tmp_path / "fn" / "other", "import os\n\ndef handle(req):\n    return str(os.getuid())\n"
    )
    functions = {
        "snoop": {"lang": "python3-flask", "handler": "./snoop"},
        "other": {"lang": "python3-flask", "handler": "./other"},
    }
    app.cli("up", "-f", str(write_stack(tmp_path / "fn" / "stack.yml", functions)))
    with app.client() as http:
        r = http.post("/function/snoop", content=str(app.data_dir.resolve()).encode())
    assert r.status_code == 200, r.text
    got = r.json()
    # No key to decrypt the secrets, no API token, no event log, no other function.
    assert got["seen"] == dict.fromkeys(("secret.key", "token", "events.db"), "FileNotFoundError")
    assert got["listing"] == ["functions", "venvs"]
    assert got["functions"] == ["snoop"]
    # Under a root appliance, each function runs as its own unprivileged user.
    if os.geteuid() == 0:
        other_uid = int(app.cli("invoke", "other").stdout)
        assert got["uid"] not in (0, other_uid) and other_uid != 0, (got["uid"], other_uid)
    # The appliance itself still has all of it.
    assert (app.data_dir / "secret.key").exists() and (
        app.data_dir / "functions" / "other"
    ).is_dir()
