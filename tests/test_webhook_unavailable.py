"""The webhook while the log is out of reach (a NATS cluster electing a leader):
503 with Retry-After, so senders try again; then 200 once it takes events."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import ServedAppliance

SAMPLE = json.loads((Path(__file__).parent / "data" / "cloudevent-vm-powered-off.json").read_text())


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServedAppliance]:
    served = ServedAppliance(tmp_path / "data").start()
    yield served
    served.stop()


def test_a_log_out_of_reach_is_a_503_to_try_again(
    served: ServedAppliance, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = served.appliance.log
    append = log.append

    async def refused(*_: Any, **__: Any) -> Any:
        raise OSError("publish: status 503 (no stream for the subject?)")

    headers = {
        "Authorization": f"Bearer {served.token}",
        "Content-Type": "application/cloudevents+json",
    }
    with httpx.Client(base_url=served.url, headers=headers) as http:
        monkeypatch.setattr(log, "append", refused)
        r = http.post("/webhook", content=json.dumps(SAMPLE))
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1"
        assert "try again" in r.json()["error"]
        monkeypatch.setattr(log, "append", append)
        r = http.post("/webhook", content=json.dumps(SAMPLE))
        assert r.status_code == 200, r.text
        assert r.json() == {"accepted": 1, "duplicates": 0}
