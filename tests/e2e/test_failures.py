"""What happens when a function fails: retries with backoff, the DLQ, redrive."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from tests.e2e.harness import RECORDER, read_jsonl, wait_for, write_function, write_stack

SAMPLE = Path(__file__).parent.parent / "data" / "cloudevent-vm-powered-off.json"

BROKEN = """
def handle(event, context):
    raise RuntimeError("vCenter tag service said no")
"""


def test_failing_handler_retries_dead_letters_and_redrives(
    appliance_factory: type, tmp_path: Path
) -> None:
    app = appliance_factory.start("--no-simulator")
    out = tmp_path / "received.jsonl"
    fn = write_function(tmp_path / "fn" / "tagger", BROKEN)
    stack = write_stack(
        tmp_path / "fn" / "stack.yml",
        {
            "tagger": {
                "lang": "python3-http",
                "handler": "./tagger",
                "annotations": {"topic": "vm.powered.off"},  # VEBA's legacy dotted topic
                "environment": {"OUT": str(out)},
                "delivery": {
                    "retry": 3,
                    "backoffPolicy": "exponential",
                    "backoffDelay": "PT0.2S",
                    "jitter": 0,
                },
            }
        },
    )
    app.cli("up", "-f", str(stack))
    event = json.loads(SAMPLE.read_text())
    with app.client() as http:
        r = http.post(
            "/webhook", json=event, headers={"Content-Type": "application/cloudevents+json"}
        )
        assert r.status_code == 200

    def dead() -> list[dict]:
        return json.loads(app.cli("dlq", "list", "-o", "json").stdout)

    (letter,) = wait_for(dead, 60, "the event to reach the dead-letter queue")
    assert letter["attempts"] == 4 and letter["subscription"] == "tagger"
    shown = json.loads(app.cli("dlq", "show", str(letter["id"])).stdout)
    assert "RuntimeError: vCenter tag service said no" in shown["last_error"]
    assert "Traceback" in shown["last_error"] and "handler.py" in shown["last_error"]
    assert shown["event"]["id"] == event["id"]
    starts = [a["started"] for a in shown["history"]]
    assert len(starts) == 4
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # backoffDelay 0.2 s doubling: about 0.2, 0.4, 0.8 s between attempts.
    assert gaps[0] >= 0.19 and gaps[1] >= 0.38 and gaps[2] >= 0.76, gaps
    assert gaps[0] < gaps[1] < gaps[2], gaps

    # Fix the handler, deploy it again, and redrive: the event is delivered.
    write_function(fn, RECORDER)
    app.cli("up", "-f", str(stack))
    assert "redriven: 1" in app.cli("dlq", "redrive", "--all").stdout
    wait_for(lambda: read_jsonl(out), 60, "the redriven event to be delivered")
    assert [e["id"] for e in read_jsonl(out)] == [event["id"]]
    assert dead() == []
