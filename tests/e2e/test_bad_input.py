"""Bad input gets one clear message naming the file and field; nothing accepted
is lost and the appliance keeps serving."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.harness import RECORDER, read_jsonl, wait_for, write_function, write_stack

SAMPLE = Path(__file__).parent.parent / "data" / "cloudevent-vm-powered-off.json"
STRUCTURED = {"Content-Type": "application/cloudevents+json"}


def _error_lines(stderr: str) -> list[str]:
    # The CLI's own error lines (pip's output shown as build progress is not one).
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_bad_input_is_refused_clearly_and_loses_nothing(
    appliance_factory: type, tmp_path: Path
) -> None:
    app = appliance_factory.start("--no-simulator")
    out = tmp_path / "good.jsonl"
    fn = tmp_path / "fn"
    write_function(fn / "good", RECORDER)
    good = {
        "lang": "python3-http",
        "handler": "./good",
        "annotations": {"topic": "VmPoweredOffEvent"},
        "environment": {"OUT": str(out)},
    }
    app.cli("up", "-f", str(write_stack(fn / "stack.yml", {"good": good})))
    sample = json.loads(SAMPLE.read_text())
    with app.client() as http:
        assert (
            http.post("/webhook", json=dict(sample, id="before"), headers=STRUCTURED).status_code
            == 200
        )

        # Malformed CloudEvents: 400 with what is wrong, and where in a batch.
        r = http.post("/webhook", content=b"{not json", headers=STRUCTURED)
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
        r = http.post(
            "/webhook", json={k: v for k, v in sample.items() if k != "id"}, headers=STRUCTURED
        )
        assert r.status_code == 400 and "missing required attribute(s) id" in r.json()["error"]
        batch = [dict(sample, id="in-bad-batch"), {"specversion": "1.0", "id": "x", "source": "s"}]
        r = http.post(
            "/webhook",
            content=json.dumps(batch),
            headers={"Content-Type": "application/cloudevents-batch+json"},
        )
        assert (
            r.status_code == 400
            and "event [1]" in r.json()["error"]
            and "type" in r.json()["error"]
        )
        r = http.post("/webhook", content=b"hello", headers={"Content-Type": "text/plain"})
        assert r.status_code == 400 and "not a CloudEvent" in r.json()["error"]

    # Broken stacks: one message naming the file and the field; nothing deployed.
    write_function(fn / "broken", "def handle(req):\n    return (\n")
    write_function(
        fn / "needs", "def handle(req):\n    return req\n", "no-such-package-veba-xyz==1.0\n"
    )
    cases = {
        "lang": ({"x": {**good, "lang": "go"}}, "functions.x.lang", "unknown lang 'go'"),
        "name": ({"Bad_Name": good}, "functions.Bad_Name", "DNS-1123"),
        "folder": ({"x": {**good, "handler": "./missing"}}, "functions.x.handler", "missing"),
        "syntax": ({"x": {**good, "handler": "./broken"}}, "functions.x.handler", "SyntaxError"),
        "requirement": (
            {"x": {**good, "handler": "./needs"}},
            "functions.x.handler",
            "no-such-package-veba-xyz",
        ),
    }
    for case, (functions, field, words) in cases.items():
        stack = write_stack(fn / f"{case}.yml", functions)
        result = app.cli("up", "-f", str(stack), check=False)
        assert result.returncode != 0, case
        errors = _error_lines(result.stderr)
        assert len(errors) == 1, (case, result.stderr)
        assert f"{case}.yml" in errors[0] and field in errors[0], (case, errors[0])
        assert words in result.stderr, (case, result.stderr)

    listed = json.loads(app.cli("list", "-o", "json").stdout)
    assert [f["name"] for f in listed] == ["good"]

    # Still serving, and everything accepted before and after arrives.
    with app.client() as http:
        assert (
            http.post("/webhook", json=dict(sample, id="after"), headers=STRUCTURED).status_code
            == 200
        )
    got = wait_for(
        lambda: {e["id"] for e in read_jsonl(out)} >= {"before", "after"} and read_jsonl(out),
        60,
        "events sent before and after the bad input",
    )
    assert "in-bad-batch" not in {e["id"] for e in got}
