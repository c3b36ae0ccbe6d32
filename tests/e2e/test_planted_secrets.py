"""Secrets never leave the function: two planted values, used, printed, logged and
raised by functions of two templates, are found in no output of veba — no CLI
command, no API answer, no dead letter, no log file, no database file, and not
in /dev/shm after the appliance is killed."""

from __future__ import annotations

import base64
import json
import os
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.e2e.harness import ApplianceProcess, wait_for, write_function, write_stack

SAMPLE = Path(__file__).parent.parent / "data" / "cloudevent-vm-powered-off.json"
STRUCTURED = {"Content-Type": "application/cloudevents+json"}
# One plain, one with a backslash and both quotes (escaped in JSON and repr).
PLANTED = f"planted-{uuid.uuid4().hex}"
QUOTED = f"q\\uo\"te'{uuid.uuid4().hex[:16]}\\"

# Reads both secrets and leaks them every way a careless handler can.
LEAKS = """
import base64, json, logging, os
from veba.sdk import get_logger

log = get_logger()

def secrets():
    folder = "/var/openfaas/secrets"
    return [open(os.path.join(folder, name)).read().strip() for name in ("planted", "quoted")]

def leak():
    planted, quoted = secrets()
    basic = base64.b64encode(f"svc:{planted}".encode()).decode()
    print("connecting with", planted, {"password": quoted})
    print(json.dumps({"planted": planted, "quoted": quoted}))
    print("Authorization: Basic " + basic, base64.b64encode(quoted.encode()).decode())
    log.info("login", password=planted, quoted=quoted, config={"pw": quoted})
    logging.getLogger("client").error("login failed: %s %r", planted, {"pw": quoted})
    return planted, quoted
"""

HTTP_HANDLER = (
    LEAKS
    + """
def handle(event, context):
    planted, quoted = leak()
    raise PermissionError(f"login refused for {planted} with {quoted}: {dict(pw=quoted)}")
"""
)

CLASSIC_HANDLER = (
    LEAKS
    + """
def handle(req):
    planted, quoted = leak()
    if "specversion" in req:  # events fail; a plain call answers with what it printed
        raise ValueError(f"bad login {planted!r} {[quoted]}")
    return {"planted": planted, "quoted": quoted}
"""
)


def needles(value: str) -> list[bytes]:
    """Every shape of ``value`` that must not be found: as it is, as JSON and repr
    show it (and escapes of those), and base64-encoded, alone and as Basic auth."""

    def as_json(text: str) -> str:
        return json.dumps(text)[1:-1]

    def as_repr(text: str) -> str:
        return repr(text)[1:-1]

    def as_repr_escaping_both(text: str) -> str:  # repr of a text that holds both quotes
        return repr(text + "'\"")[1:-4]

    forms = {value, as_json(value), as_repr(value), as_repr_escaping_both(value)}
    forms |= {as_json(form) for form in list(forms)} | {as_repr(form) for form in list(forms)}
    texts = {form.encode() for form in forms}
    texts.add(base64.b64encode(value.encode()))
    texts.add(base64.b64encode(f"svc:{value}".encode()))
    return sorted(texts)


NEEDLES = needles(PLANTED) + needles(QUOTED)


def assert_clean(what: str, data: bytes | str) -> None:
    raw = data.encode() if isinstance(data, str) else data
    for needle in NEEDLES:
        assert needle not in raw, f"{what} holds a planted secret as {needle!r}"


class DeadLetterSink:
    """A real HTTP server taking dead letters, as a Knative sink would."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append((dict(self.headers.items()), body))
                self.send_response(202)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dead"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def sink() -> Iterator[DeadLetterSink]:
    server = DeadLetterSink()
    yield server
    server.stop()


def test_planted_secrets_are_found_in_no_output(
    appliance_factory: type, tmp_path: Path, sink: DeadLetterSink
) -> None:
    app: ApplianceProcess = appliance_factory.start("--no-simulator")
    (tmp_path / "planted").write_text(PLANTED + "\n")
    (tmp_path / "quoted").write_text(QUOTED)
    app.cli("secret", "create", "planted", "--from-file", str(tmp_path / "planted"))
    app.cli("secret", "create", "quoted", "--from-file", str(tmp_path / "quoted"))
    write_function(tmp_path / "fn" / "leaky-http", HTTP_HANDLER)
    write_function(tmp_path / "fn" / "leaky-classic", CLASSIC_HANDLER)
    delivery = {"retry": 1, "backoffDelay": "PT0.1S", "jitter": 0, "deadLetterSink": sink.url}
    common = {
        "secrets": ["planted", "quoted"],
        "annotations": {"topic": "VmPoweredOffEvent"},
        "delivery": delivery,
    }
    stack = write_stack(
        tmp_path / "fn" / "stack.yml",
        {
            "leaky-http": {"lang": "python3-http", "handler": "./leaky-http", **common},
            "leaky-classic": {"lang": "python3", "handler": "./leaky-classic", **common},
        },
    )
    app.cli("up", "-f", str(stack))
    event = dict(json.loads(SAMPLE.read_text()), id=f"planted-event-{uuid.uuid4()}")
    with app.client() as http:
        assert http.post("/webhook", json=event, headers=STRUCTURED).status_code == 200

    # Both deliveries fail twice, land in the DLQ and at the dead-letter sink.
    def dead() -> list[dict]:
        rows = json.loads(app.cli("dlq", "list", "-o", "json").stdout)
        return rows if len(rows) == 2 else []

    letters = wait_for(dead, 90, "both deliveries in the dead-letter queue")
    wait_for(lambda: len(sink.requests) == 2, 60, "both dead letters at the sink")

    outputs: dict[str, bytes | str] = {}
    cli = {
        "veba dlq list": ("dlq", "list", "-o", "json"),
        "veba events show": ("events", "show", event["id"]),
        "veba list": ("list", "-o", "json"),
        "veba invoke leaky-http": ("invoke", "leaky-http", "--data", "{}"),
        "veba invoke leaky-classic": ("invoke", "leaky-classic", "--data", "{}"),
        "veba logs leaky-http": ("logs", "leaky-http"),
        "veba logs leaky-classic -o json": ("logs", "leaky-classic", "-o", "json"),
    }
    for letter in letters:
        cli[f"veba dlq show {letter['id']}"] = ("dlq", "show", str(letter["id"]))
    for what, args in cli.items():
        result = app.cli(*args, check=False)
        outputs[what] = result.stdout + result.stderr

    with app.client() as http:
        api = [
            "/api/v1/dlq",
            f"/api/v1/events/{event['id']}",
            "/api/v1/deliveries",
            "/api/v1/overview",  # each function's last error
            "/metrics",
            "/system/functions",
            "/system/logs?name=leaky-http&tail=0",
            "/system/logs?name=leaky-classic&tail=0",
            *(f"/api/v1/dlq/{letter['id']}" for letter in letters),
        ]
        for path in api:
            response = http.get(path)
            assert response.status_code == 200, path
            outputs[f"GET {path}"] = response.content
        for name in ("leaky-http", "leaky-classic"):
            response = http.post(f"/function/{name}", content=b"{}")
            outputs[f"POST /function/{name} ({response.status_code})"] = (
                json.dumps(dict(response.headers)).encode() + response.content
            )

    for n, (headers, body) in enumerate(sink.requests):
        error = base64.b64decode(headers.get("ce-knativeerrordata", ""))
        outputs[f"dead letter {n}"] = json.dumps(headers).encode() + body + error

    # The leaks did happen, each scrubbed where it shows.
    shown = json.loads(outputs[f"veba dlq show {letters[0]['id']}"])
    assert "[REDACTED]" in shown["last_error"] and "Traceback" in shown["last_error"]
    overview = json.loads(outputs["GET /api/v1/overview"])
    assert all("[REDACTED]" in f["last_error"]["error"] for f in overview["functions"])
    errors = [base64.b64decode(h["ce-knativeerrordata"]).decode() for h, _ in sink.requests]
    assert any("PermissionError: login refused for [REDACTED]" in e for e in errors), errors
    assert any("ValueError: bad login" in e for e in errors), errors
    assert "[REDACTED]" in str(outputs["veba invoke leaky-classic"])
    assert "PermissionError" in str(outputs["veba invoke leaky-http"])
    logs = str(outputs["veba logs leaky-http"])
    for line in ("connecting with [REDACTED]", "Authorization: Basic ", '"password": "[REDACTED]"'):
        assert line in logs, line
    assert "login failed: [REDACTED]" in logs  # plain logging

    # Every log file, and the log's database files, while the appliance runs.
    files = [p for p in (app.data_dir / "logs").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"leaky-http.log", "leaky-classic.log"}
    database = [app.data_dir / f"events.db{suffix}" for suffix in ("", "-wal", "-shm")]
    for path in [*files, *database]:
        outputs[str(path)] = path.read_bytes()

    # Killed, the appliance leaves no decrypted secret in memory-backed storage.
    app.kill()
    for path in database:
        if path.exists():
            outputs[f"{path} after SIGKILL"] = path.read_bytes()
    for root, _, names in os.walk("/dev/shm"):
        for name in names:
            path = Path(root, name)
            try:
                outputs[str(path)] = path.read_bytes()
            except OSError:  # another process's private file: not veba's
                continue

    for what, data in outputs.items():
        assert_clean(what, data)
