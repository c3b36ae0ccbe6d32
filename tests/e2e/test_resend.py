"""A sender that sends again what was logged already (its answer lost, a 503
taken for a failure) gets 200 with the events counted as duplicates, and the
function gets each event once."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.harness import deploy_recorders, read_jsonl
from tests.support import wait_for

SAMPLE = Path(__file__).parent.parent / "data" / "cloudevent-vm-powered-off.json"
STRUCTURED = {"Content-Type": "application/cloudevents+json"}
BATCH = {"Content-Type": "application/cloudevents-batch+json"}


def test_events_sent_again_are_answered_as_duplicates_while_their_function_has_room(
    appliance_factory: type, tmp_path: Path
) -> None:
    app = appliance_factory.start("--no-simulator")
    out = deploy_recorders(app, tmp_path, ["rec"])["rec"]
    sample = json.loads(SAMPLE.read_text())
    batch = [dict(sample, id=f"again-{n}") for n in range(3)]
    with app.client() as http:
        first = http.post("/webhook", content=json.dumps(batch), headers=BATCH)
        assert first.status_code == 200 and first.json() == {"accepted": 3, "duplicates": 0}
        wait_for(lambda: len(read_jsonl(out)) == 3, 60, "the three deliveries")
        # The function idles with room: the appliance offers it the new deliveries
        # at append. There are none: every event is a duplicate.
        for _ in range(3):
            again = http.post("/webhook", content=json.dumps(batch), headers=BATCH)
            assert again.status_code == 200, again.text
            assert again.json() == {"accepted": 0, "duplicates": 3}
            one = http.post("/webhook", json=batch[0], headers=STRUCTURED)
            assert one.status_code == 200 and one.json() == {"accepted": 0, "duplicates": 1}
        mixed = http.post(
            "/webhook", content=json.dumps([batch[1], dict(sample, id="new-1")]), headers=BATCH
        )
        assert mixed.json() == {"accepted": 1, "duplicates": 1}
    wait_for(lambda: len(read_jsonl(out)) == 4, 60, "the new event's delivery")
    assert sorted(e["id"] for e in read_jsonl(out)) == sorted([e["id"] for e in batch] + ["new-1"])
