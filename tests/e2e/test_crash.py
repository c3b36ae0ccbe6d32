"""SIGKILL the appliance with 2,000 events in flight: nothing acknowledged is lost."""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from pathlib import Path

import httpx

from tests.e2e.harness import deploy_recorders, read_jsonl, wait_for

SAMPLE = Path(__file__).parent.parent / "data" / "cloudevent-vm-powered-off.json"
TOTAL = 2000
BATCH = 50


def test_sigkill_loses_no_acknowledged_event(appliance_factory: type, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    app = appliance_factory.start("--no-simulator", data_dir=data_dir)
    outs = deploy_recorders(app, tmp_path, ("alpha", "beta"))

    sample = json.loads(SAMPLE.read_text())
    batches = [
        [dict(sample, id=str(uuid.uuid4())) for _ in range(BATCH)] for _ in range(TOTAL // BATCH)
    ]
    acked: list[str] = []
    lock = threading.Lock()
    token = {"Authorization": f"Bearer {app.token}"}  # the webhook's credential
    # Each sender holds back its last quarter until just before the kill, so some
    # are still to send then however fast the rest went (on a loaded CI machine
    # all 2,000 were once acknowledged before the first deliveries had been made).
    go_on = threading.Event()

    def send(my_batches: list[list[dict]]) -> None:
        with httpx.Client(base_url=app.url, timeout=30, headers=token) as http:
            for index, batch in enumerate(my_batches):
                if index == len(my_batches) * 3 // 4:
                    go_on.wait(120)
                try:
                    r = http.post(
                        "/webhook",
                        content=json.dumps(batch),
                        headers={"Content-Type": "application/cloudevents-batch+json"},
                    )
                except httpx.HTTPError:
                    return  # the appliance is gone: this batch was never acknowledged
                if r.status_code == 200:
                    with lock:
                        acked.extend(e["id"] for e in batch)

    senders = [threading.Thread(target=send, args=(batches[i::4],)) for i in range(4)]
    for t in senders:
        t.start()
    # Kill once some events are acknowledged and some delivered, with more on the way.
    wait_for(lambda: len(acked) >= TOTAL // 3, 120, "a third of the events acknowledged")
    wait_for(lambda: len(read_jsonl(outs["alpha"])) >= 50, 120, "deliveries under way")
    go_on.set()
    app.kill()
    for t in senders:
        t.join(timeout=60)
    acked_at_kill = set(acked)
    assert 0 < len(acked_at_kill) < TOTAL

    # What the log held as in flight (leased) at the kill bounds the duplicates.
    with sqlite3.connect(data_dir / "events.db") as db:
        in_flight = dict(
            db.execute(
                "SELECT subscription, count(*) FROM deliveries WHERE status='leased' GROUP BY 1"
            ).fetchall()
        )

    appliance_factory.start("--no-simulator", data_dir=data_dir)

    for name, out in outs.items():

        def complete(out: Path = out) -> bool:
            return acked_at_kill <= {e["id"] for e in read_jsonl(out)}

        wait_for(complete, 180, f"{name} to receive every acknowledged event")
        ids = [e["id"] for e in read_jsonl(out)]
        duplicates = len(ids) - len(set(ids))
        assert duplicates <= in_flight.get(name, 0), (name, duplicates, in_flight)
