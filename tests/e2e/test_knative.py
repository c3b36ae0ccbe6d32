"""VEBA's Knative-era functions run unchanged: a function.yaml (Service + Triggers) and a
Flask app started by its Procfile, deployed with `veba up -f function.yaml`, getting
simulator events in VEBA v0.8's shape (binary mode) as its Triggers select them.

The app is written the way VEBA's kn-py-* examples are (Flask, and `from_http` of
the `cloudevents` package from PyPI); its venv is built once per test session.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.harness import (
    RECORDER,
    ApplianceProcess,
    read_jsonl,
    wait_for,
    write_function,
    write_stack,
)
from tests.support import free_port
from veba.functions._webproc import listening_beyond_loopback

# In the style of VEBA's kn-py-echo: read the CloudEvent with from_http, log it,
# answer 204. It also writes what it saw to $OUT, and fails when told to.
HANDLER = """\
from flask import Flask, request, jsonify
from cloudevents.http import from_http
import json, logging, os, time

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s : %(message)s")

app = Flask(__name__)
if os.environ.get("LEAK"):
    print("starting with", os.environ[os.environ["LEAK"]], flush=True)


@app.route("/", methods=["POST"])
def record():
    try:
        event = from_http(request.headers, request.get_data(), None)
    except Exception as e:
        msg = f"could not decode cloud event: {e}"
        app.logger.error(msg)
        resp = jsonify({"status": 400, "error": msg})
        resp.status_code = 400
        return resp
    seen = {
        "attributes": {k: str(v) for k, v in event._attributes.items()},
        "data": event.data,
        "binary": "ce-type" in {k.lower() for k in request.headers.keys()},
        "pid": os.getpid(),
        "at": time.time(),
        "env": {k: os.environ.get(k) for k in os.environ.get("SHOW_ENV", "").split(",") if k},
    }
    with open(os.environ["OUT"], "a") as out:
        out.write(json.dumps(seen) + "\\n")
    app.logger.info(f"***cloud event*** {event['type']} {event['id']}")
    status = int(os.environ.get("FAIL_WITH", "0"))
    if status:
        resp = jsonify({"status": status, "error": "the vCenter said no"})
        resp.status_code = status
        return resp
    return {}, 204
"""
REQUIREMENTS = "flask>=2.3,<4\ncloudevents>=1.9,<2\n"
PROCFILE = (
    "web: FLASK_ENV=development FLASK_APP=handler.py"
    " python3 -m flask run --host=0.0.0.0 --port=$PORT\n"
)
V08 = "com.vmware.vsphere.{}.v0"


# A python3-http handler reading a binary-mode CloudEvent (the v0.8 shape).
BINARY_RECORDER = """
import json, os

def handle(event, context):
    line = json.dumps({"id": event.headers["ce-id"], "type": event.headers["ce-type"],
                       "eventclass": event.headers["ce-eventclass"],
                       "data": json.loads(event.body)})
    with open(os.environ["OUT"], "a") as out:
        out.write(line + "\\n")
    return {"statusCode": 200, "body": "ok"}
"""


def service(name: str, env: dict[str, str], **container: Any) -> dict[str, Any]:
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": {"app": "veba-ui"}},
        "spec": {
            "template": {
                "metadata": {
                    "annotations": {
                        "autoscaling.knative.dev/maxScale": "1",
                        "autoscaling.knative.dev/minScale": "1",
                    }
                },
                "spec": {
                    "containers": [
                        {
                            "image": f"ghcr.io/example/{name}:1.0",
                            "env": [{"name": k, "value": v} for k, v in env.items()],
                            **container,
                        }
                    ]
                },
            }
        },
    }


def trigger(name: str, service_name: str, event_class: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": name, "labels": {"app": "veba-ui"}},
        "spec": {
            "broker": "default",
            "filter": {"attributes": {"type": V08.format(event_class)}},
            "subscriber": {
                "ref": {
                    "apiVersion": "serving.knative.dev/v1",
                    "kind": "Service",
                    "name": service_name,
                }
            },
            **spec,
        },
    }


def knative_function(folder: Path, *documents: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "handler.py").write_text(HANDLER)
    (folder / "requirements.txt").write_text(REQUIREMENTS)
    (folder / "Procfile").write_text(PROCFILE)
    path = folder / "function.yaml"
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def flask_venvs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One venv cache for the session, so pip installs Flask once."""
    return tmp_path_factory.mktemp("knative-venvs")


@pytest.fixture
def start(appliance_factory: type, tmp_path: Path, flask_venvs: Path) -> Any:
    """Start `veba serve` (simulator paused) with the session's venv cache."""

    def run(*args: str) -> ApplianceProcess:
        data = tmp_path / "data"
        data.mkdir(exist_ok=True)
        if not (data / "venvs").exists():
            (data / "venvs").symlink_to(flask_venvs, target_is_directory=True)
        return appliance_factory.start("--simulator-rate", "0", *args, data_dir=data)  # type: ignore[no-any-return]

    return run


def simulate(app: ApplianceProcess, event_class: str, count: int = 1) -> list[dict[str, Any]]:
    """Have the simulator emit events now; the ones of ``event_class`` (v0.7, as logged)."""
    with app.client() as http:
        r = http.post(
            "/api/v1/providers/simulator/trigger", json={"event_class": event_class, "count": count}
        )
        assert r.status_code == 200, r.text
    return [e for e in r.json()["events"] if e["subject"] == event_class]


def process_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_a_knative_function_gets_its_triggers_events_in_v08_binary_shape(
    start: Any, tmp_path: Path
) -> None:
    app = start()
    out = tmp_path / "seen.jsonl"
    # kn-py-slack's way: the secret's keys become environment variables (envFrom).
    # (Stored with several keys as `kubectl create secret --from-literal` makes them.)
    from veba.secrets import SecretStore

    secrets = SecretStore(app.data_dir)
    asyncio.run(
        secrets.put_keys(
            "notify-secret",
            {"SLACK_SECRET": b"https://hooks.example/T0/B0/s3cr3t", "CHANNEL": b"ops"},
        )
    )
    fn = knative_function(
        tmp_path / "kn-py-notify",
        service(
            "kn-py-notify",
            {"OUT": str(out), "SHOW_ENV": "SLACK_SECRET,CHANNEL,PORT", "LEAK": "SLACK_SECRET"},
            envFrom=[{"secretRef": {"name": "notify-secret"}}],
        ),
        # Two Triggers on one Service, as kn-py-vm-attr has four.
        trigger("kn-py-notify-off", "kn-py-notify", "VmPoweredOffEvent"),
        trigger("kn-py-notify-created", "kn-py-notify", "VmCreatedEvent"),
    )
    result = app.cli("up", "-f", str(fn))
    assert "kn-py-notify: deployed" in result.stderr

    off = simulate(app, "VmPoweredOffEvent", 2)
    created = simulate(app, "VmCreatedEvent")
    on = simulate(app, "VmPoweredOnEvent")
    wanted = {e["id"]: e for e in off + created}
    assert len(wanted) == 3 and on

    got = wait_for(
        lambda: (
            (lines := read_jsonl(out))
            and {s["attributes"]["id"] for s in lines} >= set(wanted)
            and lines
        ),
        120,
        "the power-off and created events at the Flask app",
    )
    assert {s["attributes"]["id"] for s in got} == set(wanted)  # nothing else
    for seen in got:
        logged = wanted[seen["attributes"]["id"]]
        attrs = seen["attributes"]
        assert seen["binary"], "a Knative broker sends binary mode"
        assert attrs["type"] == V08.format(logged["subject"])
        assert attrs["source"] == logged["source"] and attrs["source"].startswith("https://")
        assert attrs["eventclass"] == "event"
        assert attrs["vsphereapiversion"] == logged["vsphereapiversion"]
        assert attrs["datacontenttype"] == "application/json"
        assert "subject" not in attrs
        assert seen["data"] == logged["data"] and seen["data"]["Key"] == logged["data"]["Key"]
        assert seen["env"]["SLACK_SECRET"] == "https://hooks.example/T0/B0/s3cr3t"
        assert seen["env"]["CHANNEL"] == "ops"

    # The app listens on loopback only, on the port veba gave it.
    port = int(got[0]["env"]["PORT"])
    described = json.loads(app.cli("list", "-o", "json").stdout)
    assert [(f["name"], f["lang"], f["status"], f["eventShape"]) for f in described] == [
        ("kn-py-notify", "knative", "ready", "v0.8")
    ]
    assert listening_beyond_loopback(port) == []
    other = _other_address()
    if other is not None:  # the machine has an address beside loopback: try it
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://{other}:{port}/", timeout=2)

    # `veba invoke --event` sends a sample in the function's shape; `veba logs` shows
    # the app's lines, with the secret's value scrubbed.
    app.cli("invoke", "kn-py-notify", "--event", "VmPoweredOffEvent")
    wait_for(lambda: len(read_jsonl(out)) == 4, 60, "the invoked sample")
    assert read_jsonl(out)[-1]["attributes"]["type"] == V08.format("VmPoweredOffEvent")
    logs = app.cli("logs", "kn-py-notify", "--tail", "200").stdout
    assert "***cloud event*** com.vmware.vsphere.VmPoweredOffEvent.v0" in logs
    assert "starting with [REDACTED]" in logs and "s3cr3t" not in logs

    # `veba remove -f` removes it and ends its processes.
    pids = {s["pid"] for s in read_jsonl(out)}
    assert "removed kn-py-notify" in app.cli("remove", "-f", str(fn)).stderr
    assert json.loads(app.cli("list", "-o", "json").stdout) == []
    wait_for(lambda: all(process_gone(p) for p in pids), 30, "the Flask app to end")
    simulate(app, "VmPoweredOffEvent")
    assert len(read_jsonl(out)) == 4


def _other_address() -> str | None:
    """This machine's address on its default route, if it has one (not loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent for a UDP connect
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


class _DeadLetters(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def dead_letter_sink() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    received: list[tuple[dict[str, str], bytes]] = []
    handler = type("Handler", (_DeadLetters,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/dead", received
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_trigger_delivery_retries_with_its_backoff_then_dead_letters(
    start: Any, tmp_path: Path, dead_letter_sink: tuple[str, list[Any]]
) -> None:
    sink, received = dead_letter_sink
    app = start()
    out = tmp_path / "seen.jsonl"
    delivery = {
        "retry": 2,
        "backoffPolicy": "linear",
        "backoffDelay": "PT0.4S",
        "deadLetterSink": {"uri": sink},
    }
    fn = knative_function(
        tmp_path / "kn-py-fail",
        service("kn-py-fail", {"OUT": str(out), "FAIL_WITH": "500"}),
        trigger("kn-py-fail-off", "kn-py-fail", "VmPoweredOffEvent", delivery=delivery),
    )
    app.cli("up", "-f", str(fn))
    (event,) = simulate(app, "VmPoweredOffEvent")

    def dead() -> list[dict[str, Any]]:
        return json.loads(app.cli("dlq", "list", "-o", "json").stdout)

    (letter,) = wait_for(dead, 60, "the event in the dead-letter queue")
    assert (letter["subscription"], letter["attempts"], letter["last_status"]) == (
        "kn-py-fail",
        3,
        500,
    )
    assert letter["event_id"] == event["id"]
    shown = json.loads(app.cli("dlq", "show", str(letter["id"])).stdout)
    assert "HTTP 500" in shown["last_error"] and "the vCenter said no" in shown["last_error"]
    starts = [a["started"] for a in shown["history"]]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # linear, 0.4 s: about 0.4 then 0.8 s between the three attempts (20 % jitter).
    assert gaps[0] >= 0.3 and gaps[1] >= 0.6, gaps
    seen = read_jsonl(out)
    assert [s["attributes"]["id"] for s in seen] == [event["id"]] * 3
    # The dead-letter sink hears it as Knative sends it: the v0.8 event, binary mode.
    (headers, body), *_ = wait_for(lambda: received, 30, "the dead-letter sink")
    assert headers["ce-type"] == V08.format("VmPoweredOffEvent")
    assert headers["ce-knativeerrorcode"] == "500"
    assert headers["ce-knativeerrordest"] == "kn-py-fail"
    assert json.loads(body) == event["data"]


def test_one_vcenter_event_reaches_a_v07_and_a_v08_function_each_in_its_shape(
    start: Any, tmp_path: Path
) -> None:
    app = start()
    v07_out, v08_out = tmp_path / "v07.jsonl", tmp_path / "v08.jsonl"
    stack_v08_out = tmp_path / "stack-v08.jsonl"
    write_function(tmp_path / "stack" / "power", RECORDER)
    write_function(tmp_path / "stack" / "power-v08", BINARY_RECORDER)
    stack = write_stack(
        tmp_path / "stack" / "stack.yml",
        {
            "power": {
                "lang": "python3-http",
                "handler": "./power",
                "annotations": {"topic": "VmPoweredOffEvent"},
                "environment": {"OUT": str(v07_out)},
            },
            # A stack.yml function may choose v0.8's shape (and may name v0.8's type).
            "power-v08": {
                "lang": "python3-http",
                "handler": "./power-v08",
                "annotations": {
                    "topic": "com.vmware.vsphere.VmPoweredOffEvent.v0",
                    "veba.event-shape": "v0.8",
                },
                "environment": {"OUT": str(stack_v08_out)},
            },
        },
    )
    app.cli("up", "-f", str(stack))
    fn = knative_function(
        tmp_path / "kn-py-power",
        service("kn-py-power", {"OUT": str(v08_out)}),
        trigger("kn-py-power-off", "kn-py-power", "VmPoweredOffEvent"),
    )
    app.cli("up", "-f", str(fn))
    (event,) = simulate(app, "VmPoweredOffEvent")
    wait_for(lambda: read_jsonl(v07_out) and read_jsonl(v08_out), 60, "both functions")
    (v07,) = read_jsonl(v07_out)
    (v08,) = read_jsonl(v08_out)
    assert (v07["id"], v07["type"], v07["subject"]) == (
        event["id"],
        "com.vmware.event.router/event",
        "VmPoweredOffEvent",
    )
    assert v08["attributes"]["id"] == event["id"] and v08["binary"]
    assert v08["attributes"]["type"] == V08.format("VmPoweredOffEvent")
    assert v07["source"] == v08["attributes"]["source"] and v07["data"] == v08["data"]
    (stack_v08,) = wait_for(lambda: read_jsonl(stack_v08_out), 60, "the v0.8 stack function")
    assert stack_v08 == {
        "id": event["id"],
        "type": V08.format("VmPoweredOffEvent"),
        "eventclass": "event",
        "data": event["data"],
    }

    # An event that is not vSphere's passes unchanged, in binary mode, to a Trigger on it.
    hook = {
        "specversion": "1.0",
        "id": "build-42",
        "source": "https://ci.example/pipelines/7",
        "type": "com.example.build.finished",
        "subject": "VmPoweredOffEvent",  # a subject alone does not make it vSphere's
        "datacontenttype": "application/json",
        "data": {"result": "green"},
    }
    fn2 = knative_function(
        tmp_path / "kn-py-ci",
        service("kn-py-ci", {"OUT": str(tmp_path / "ci.jsonl")}),
        {
            **trigger("kn-py-ci-builds", "kn-py-ci", "X"),
            "spec": {
                **trigger("kn-py-ci-builds", "kn-py-ci", "X")["spec"],
                "filter": {"attributes": {"type": "com.example.build.finished"}},
            },
        },
    )
    app.cli("up", "-f", str(fn2))
    with app.client() as http:
        r = http.post(
            "/webhook", json=hook, headers={"Content-Type": "application/cloudevents+json"}
        )
        assert r.status_code == 200, r.text
    (ci,) = wait_for(lambda: read_jsonl(tmp_path / "ci.jsonl"), 60, "the webhook event")
    assert ci["binary"] and ci["data"] == {"result": "green"}
    assert {k: ci["attributes"][k] for k in ("id", "source", "type", "subject")} == {
        k: hook[k] for k in ("id", "source", "type", "subject")
    }


def test_a_killed_app_is_restarted_and_no_event_is_lost(start: Any, tmp_path: Path) -> None:
    app = start()
    out = tmp_path / "seen.jsonl"
    fn = knative_function(
        tmp_path / "kn-py-steady",
        service("kn-py-steady", {"OUT": str(out)}),
        trigger(
            "kn-py-steady-off",
            "kn-py-steady",
            "VmPoweredOffEvent",
            delivery={"retry": 10, "backoffDelay": "PT0.2S"},
        ),
    )
    app.cli("up", "-f", str(fn))
    first = simulate(app, "VmPoweredOffEvent")
    (seen,) = wait_for(lambda: read_jsonl(out), 60, "the first event")
    os.kill(seen["pid"], signal.SIGKILL)
    # Events keep coming while the app is down and while it comes back.
    later = [e for _ in range(5) for e in simulate(app, "VmPoweredOffEvent")]
    wanted = {e["id"] for e in first + later}

    def all_arrived() -> bool:
        return {s["attributes"]["id"] for s in read_jsonl(out)} >= wanted

    wait_for(all_arrived, 120, "every event after the app was killed")
    assert seen["pid"] not in {s["pid"] for s in read_jsonl(out)[1:]}
    logs = app.cli("logs", "kn-py-steady", "--tail", "500").stdout
    assert "restarting in" in logs

    # The apps die with the appliance, even when it cannot stop them (SIGKILL).
    pid = read_jsonl(out)[-1]["pid"]
    app.kill()
    wait_for(lambda: process_gone(pid), 30, "the Flask app to die with the appliance")


@pytest.mark.parametrize(
    ("break_it", "expected"),
    [
        (
            lambda docs, folder: docs[0]["spec"]["template"]["spec"]["containers"][0].update(
                {"imagePullPolicie": "Always"}
            ),
            "function.yaml: Service/kn-py-broken.spec.template.spec.containers[0]"
            ".imagePullPolicie: unknown field",
        ),
        (
            lambda docs, folder: docs[1]["spec"]["subscriber"]["ref"].update(
                {"name": "kn-py-elsewhere"}
            ),
            "function.yaml: Trigger/kn-py-broken-off.spec.subscriber.ref.name: names Service"
            " 'kn-py-elsewhere', which is not in this file",
        ),
        (
            lambda docs, folder: (folder / "Procfile").write_text("worker: python3 jobs.py\n"),
            "Procfile: web: missing; veba runs the Procfile's web process",
        ),
        (
            lambda docs, folder: docs[0]["spec"]["template"]["spec"]["containers"][0].update(
                {"envFrom": [{"secretRef": {"name": "kn-py-broken-secret"}}]}
            ),
            "function.yaml: Service/kn-py-broken.spec.template.spec.containers[0]"
            ".envFrom[0].secretRef.name: secret 'kn-py-broken-secret' does not exist",
        ),
    ],
    ids=["unknown-field", "trigger-names-another-service", "no-web-line", "missing-secret"],
)
def test_a_broken_function_yaml_is_refused_with_its_file_and_field(
    start: Any, tmp_path: Path, break_it: Any, expected: str
) -> None:
    app = start("--no-simulator")
    folder = tmp_path / "kn-py-broken"
    docs = [
        service("kn-py-broken", {"OUT": str(tmp_path / "x")}),
        trigger("kn-py-broken-off", "kn-py-broken", "VmPoweredOffEvent"),
    ]
    knative_function(folder, *docs)
    break_it(docs, folder)
    (folder / "function.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    result = app.cli("up", "-f", str(folder / "function.yaml"), check=False)
    assert result.returncode == 1
    assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert json.loads(app.cli("list", "-o", "json").stdout) == []
