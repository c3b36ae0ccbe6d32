"""Schemathesis against a real `veba serve`, from the appliance's own OpenAPI
document, with a valid token: whatever it sends, veba answers no 5xx.

Every operation is fuzzed, the webhook included (with CloudEvents the schema
describes). A function, `echo`, is deployed so `/function/echo` and
`/async-function/echo` reach a real worker (which always answers 200, so a 5xx
there would be veba's own). The data directory is the test's own: schemathesis
may create secrets, store entries and events at will.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import ApplianceProcess, write_function, write_stack

SCHEMATHESIS = str(Path(sys.executable).with_name("st"))

ECHO = """
def handle(event, context):
    return {"statusCode": 200, "body": {"method": event.method, "bytes": len(event.body or b"")}}
"""

# Names that exist where a route takes one (the function, the simulator), so
# requests get past the 404; everything else is generated.
CONFIG = """\
[[operations]]
include-path-regex = "^/(async-)?function/"
parameters = {{ "path.name" = "echo" }}

[[operations]]
include-path-regex = "^/api/v1/providers/"
parameters = {{ "path.name" = "simulator" }}

# The live stream never ends by itself (its parameters are checked like any).
[[operations]]
include-path = "/api/v1/events/stream"
enabled = false

[generation]
max-examples = {examples}
"""


# 50 examples an operation, about 50 operations: ~80 s on a quiet machine, four
# times that on a busy one; the run's own limit stays under the test's.
@pytest.mark.timeout(540)
def test_no_input_makes_the_api_answer_5xx(appliance_factory: type, tmp_path: Path) -> None:
    app: ApplianceProcess = appliance_factory.start("--simulator-rate", "0")
    write_function(tmp_path / "fn" / "echo", ECHO)
    stack = write_stack(
        tmp_path / "fn" / "stack.yml",
        {"echo": {"lang": "python3-http", "handler": "./echo", "annotations": {"topic": "none"}}},
    )
    app.cli("up", "-f", str(stack))
    with app.client() as http:
        schema = http.get("/openapi.json")
    assert schema.status_code == 200
    (tmp_path / "openapi.json").write_bytes(schema.content)
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG.format(examples=50))

    run = subprocess.run(
        [SCHEMATHESIS, "--config-file", str(config), "--no-color", "run",
         str(tmp_path / "openapi.json"), "--url", app.url,
         "-H", f"Authorization: Bearer {app.token}",
         "--checks", "not_a_server_error",
         "--phases", "examples,coverage,fuzzing",
         "--workers", "1",  # hypothesis' lambda printing is not thread-safe
         "--request-timeout", "30", "--seed", "1",
         "--report", "junit", "--report-dir", str(tmp_path / "report")],
        cwd=tmp_path, capture_output=True, text=True, timeout=480,
    )  # fmt: skip
    said = run.stdout + run.stderr
    assert run.returncode == 0, said[-6000:]
    assert "Server error" not in said
    generated = re.search(r"(\d+) generated", said)
    assert generated is not None and int(generated.group(1)) > 1500, said[-3000:]

    # Nothing reached the last-resort handler, and the appliance still serves.
    log = app.log_path.read_text()
    assert "Traceback" not in log, log[-4000:]
    assert httpx.get(f"{app.url}/healthz").status_code == 200
