"""`veba migrate`, then a node on NATS takes over: a real appliance (SQLite)
with a function that needs a secret, paused with events waiting; stopped,
migrated, and a `veba serve --event-log nats://...` node with the copied
`secret.key` delivers exactly what waited, once each."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import uuid
from pathlib import Path

import httpx

from tests.e2e.harness import ApplianceProcess, read_jsonl, wait_for, write_function, write_stack
from tests.jetstream_buckets import NATS_URL, delete_everything_named

SAMPLE = Path(__file__).parent.parent / "data" / "cloudevent-vm-powered-off.json"
SECRET = "s3cr3t-for-the-cluster"

# Records each event's id and a digest of its secret, which it can read only
# if the node decrypted it (with the key the operator copied).
RECORDER = """
import hashlib, json, os

def handle(event, context):
    ce = json.loads(event.body)
    secret = open(os.path.join(os.environ["VEBA_SECRETS_DIR"], "token"), "rb").read()
    line = json.dumps({"id": ce["id"], "secret": hashlib.sha256(secret).hexdigest()}) + "\\n"
    fd = os.open(os.environ["OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return {"statusCode": 200, "body": "ok"}
"""


def _post(app: ApplianceProcess, event_id: str) -> None:
    event = dict(json.loads(SAMPLE.read_text()), id=event_id)
    response = httpx.post(
        f"{app.url}/webhook",
        content=json.dumps(event),
        headers={
            "Content-Type": "application/cloudevents+json",
            "Authorization": f"Bearer {app.token}",
        },
        timeout=30,
    )
    assert response.status_code in (200, 202, 204), response.text


def test_a_node_on_nats_takes_over_a_migrated_appliance(
    appliance_factory: type, tmp_path: Path
) -> None:
    name = f"t{uuid.uuid4().hex[:12]}"
    out = tmp_path / "rec.jsonl"
    node: ApplianceProcess | None = None
    try:
        app = appliance_factory.start("--no-simulator")
        app.cli("secret", "create", "token", input=SECRET + "\n")
        write_function(tmp_path / "fn" / "rec", RECORDER)
        function = {
            "lang": "python3-http",
            "handler": "./rec",
            "annotations": {"topic": "VmPoweredOffEvent"},
            "environment": {"OUT": str(out)},
            "secrets": ["token"],
        }
        app.cli("up", "-f", str(write_stack(tmp_path / "fn" / "stack.yml", {"rec": function})))
        _post(app, "delivered-before")
        wait_for(lambda: len(read_jsonl(out)) == 1, 60, "the first event delivered")
        app.cli("pause", "rec")
        waiting = [f"waiting-{n}" for n in range(3)]
        for event_id in waiting:
            _post(app, event_id)
        app.stop()

        node_dir = tmp_path / "node"
        node_dir.mkdir(mode=0o700)
        shutil.copy(app.data_dir / "secret.key", node_dir / "secret.key")
        (node_dir / "secret.key").chmod(0o600)
        migrated = app.cli("migrate", "--to", f"{NATS_URL}/{name}")
        assert "functions: copied 1 (1 paused)" in migrated.stdout
        assert "secrets: copied 1" in migrated.stdout
        assert "events: copied 3 with open deliveries" in migrated.stdout

        node = ApplianceProcess(
            node_dir, "--no-simulator", "--event-log", f"{NATS_URL}/{name}"
        ).start()
        node.cli("resume", "rec")
        wait_for(lambda: len(read_jsonl(out)) >= 4, 120, "the waiting events delivered")
        records = read_jsonl(out)
        assert sorted(r["id"] for r in records) == sorted(["delivered-before", *waiting])
        digest = hashlib.sha256(SECRET.encode()).hexdigest()
        assert {r["secret"] for r in records} == {digest}
    finally:
        if node is not None:
            node.stop()
        asyncio.run(delete_everything_named(name))
