"""`veba serve` as an operator sees it: refusals before anything is written, a
prompt and quiet stop with `veba logs --follow` attached, and a line per
meaningful happening while it runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from tests.e2e.harness import VEBA, ApplianceProcess, write_function, write_stack
from tests.support import free_port, wait_for

SAMPLE = Path(__file__).parent.parent / "data" / "cloudevent-vm-powered-off.json"
STRUCTURED = {"Content-Type": "application/cloudevents+json"}

TALKER = """
def handle(event, context):
    print("hello from talker", flush=True)
    return {"statusCode": 200, "body": "ok"}
"""

BROKEN = """
def handle(event, context):
    raise RuntimeError("the tag service said no")
"""


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A `veba serve` expected to refuse at once (the timeout stops one that does not)."""
    return subprocess.run(
        [VEBA, "serve", "--no-simulator", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def _one_line_refusal(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ")
    return line


def test_a_second_serve_is_refused_before_it_writes_anything(
    appliance_factory: type, tmp_path: Path
) -> None:
    app = appliance_factory.start("--no-simulator")
    written = {name: (app.data_dir / name).read_bytes() for name in ("url", "token")}

    # The same data directory, another port: refused, naming who holds it.
    line = _one_line_refusal(
        _serve("--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(app.data_dir))
    )
    assert "is in use by another veba appliance" in line
    assert f"pid {app.proc.pid}" in line and app.url in line and "--data-dir" in line
    # Nothing of the running appliance's was rewritten: the CLI still reaches it.
    assert {name: (app.data_dir / name).read_bytes() for name in written} == written
    assert app.cli("list", env={"VEBA_URL": None}).returncode == 0

    # Its port, another data directory: refused, and that directory never made.
    fresh = tmp_path / "fresh"
    line = _one_line_refusal(_serve("--listen", f"127.0.0.1:{app.port}", "--data-dir", str(fresh)))
    assert f"cannot listen on 127.0.0.1:{app.port} (--listen): address already in use" in line
    assert not fresh.exists()


def test_a_vcenter_password_that_cannot_be_read_is_refused_at_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    vcenter = "https://administrator@vsphere.local@127.0.0.1:9/sdk"
    env = {k: v for k, v in os.environ.items() if k != "VEBA_TEST_VC_PASSWORD"}
    common = ["--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(data), "--vcenter", vcenter]

    line = _one_line_refusal(
        _serve(*common, "--vcenter-password-env", "VEBA_TEST_VC_PASSWORD", env=env)
    )
    assert "$VEBA_TEST_VC_PASSWORD is not set (--vcenter-password-env)" in line
    assert "vCenter https://127.0.0.1:9/sdk" in line

    line = _one_line_refusal(_serve(*common, "--vcenter-password-secret", "vc-password"))
    assert "--vcenter-password-secret vc-password: no such secret" in line
    assert "veba secret create vc-password" in line

    line = _one_line_refusal(
        _serve(*common, "--vcenter-password-env", "HOME", "--vcenter-ca", str(tmp_path / "no.pem"))
    )
    assert f"root CA {tmp_path / 'no.pem'}: no such file" in line
    assert not data.exists()  # refused before anything was written


def test_stopping_serve_ends_a_following_logs_at_once_and_quietly(
    appliance_factory: type, tmp_path: Path
) -> None:
    app: ApplianceProcess = appliance_factory.start("--no-simulator")
    write_function(tmp_path / "fn" / "talker", TALKER)
    stack = write_stack(
        tmp_path / "fn" / "stack.yml", {"talker": {"lang": "python3-http", "handler": "./talker"}}
    )
    app.cli("up", "-f", str(stack))
    follower = subprocess.Popen(
        [VEBA, "logs", "talker", "--follow"],
        env=app.cli_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(follower.stdout or ()), daemon=True)
    reader.start()
    try:
        # Attached: a call's output reaches the follower.
        app.cli("invoke", "talker", "--data", "")
        wait_for(lambda: any("hello from talker" in s for s in seen), 60, "the followed line")

        assert app.proc is not None
        asked = time.monotonic()
        app.proc.send_signal(signal.SIGTERM)
        app.proc.wait(timeout=60)
        stopped = time.monotonic() - asked
        follower.wait(timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    # uvicorn would wait out its 10 s graceful timeout for the stream, then cancel it.
    assert stopped < 5, f"veba serve took {stopped:.1f} s to stop"
    served = app.log_path.read_text()
    assert "Traceback" not in served and "timeout graceful shutdown" not in served
    assert served.rstrip().endswith("stopped")
    said = (follower.stderr.read() if follower.stderr else "").strip()
    assert follower.returncode == 0, said
    assert said == f"the appliance at {app.url} closed the connection"


def test_serve_tells_deploys_dead_letters_and_the_dlq_as_they_happen(
    appliance_factory: type, tmp_path: Path
) -> None:
    app: ApplianceProcess = appliance_factory.start("--no-simulator")
    write_function(tmp_path / "fn" / "broken", BROKEN)
    write_function(tmp_path / "fn" / "talker", TALKER)
    retry_once = {"retry": 1, "backoffDelay": "PT0.1S", "jitter": 0}
    stack = write_stack(
        tmp_path / "fn" / "stack.yml",
        {
            "broken": {"lang": "python3-http", "handler": "./broken", "delivery": retry_once,
                       "annotations": {"topic": "VmPoweredOffEvent"}},
            "talker": {"lang": "python3-http", "handler": "./talker",
                       "annotations": {"topic": "VmPoweredOffEvent"}},
        },
    )  # fmt: skip
    app.cli("up", "-f", str(stack))

    def served() -> str:
        return app.log_path.read_text()

    wait_for(
        lambda: "deployed broken (python3-http, VmPoweredOffEvent, 1 worker(s))" in served(),
        30,
        "the deploy line",
    )
    event = json.loads(SAMPLE.read_text())
    with app.client() as http:
        assert http.post("/webhook", json=event, headers=STRUCTURED).status_code == 200
    dead = wait_for(
        lambda: [line for line in served().splitlines() if "veba dlq show" in line], 60, "its line"
    )
    (line,) = dead
    assert f"broken: VmPoweredOffEvent {event['id']} failed after 2 attempt(s)" in line
    assert "RuntimeError: the tag service said no" in line  # the traceback's last line
    (letter,) = json.loads(app.cli("dlq", "list", "-o", "json").stdout)
    assert line.endswith(f"dead letter {letter['id']}: veba dlq show {letter['id']}")
    wait_for(lambda: "dead-letter queue: 1 (broken 1)" in served(), 30, "the DLQ's size")
    # Quiet on the happy path: talker's delivery of the same event says nothing.
    assert sum(event["id"] in s for s in served().splitlines()) == 1

    app.cli("remove", "talker")
    wait_for(lambda: "removed talker; 0 undelivered event(s) dropped" in served(), 30, "removal")


def test_serve_verbose_tells_every_event(appliance_factory: type, tmp_path: Path) -> None:
    app: ApplianceProcess = appliance_factory.start("--no-simulator", "--verbose")
    write_function(tmp_path / "fn" / "talker", TALKER)
    stack = write_stack(
        tmp_path / "fn" / "stack.yml",
        {"talker": {"lang": "python3-http", "handler": "./talker",
                    "annotations": {"topic": "VmPoweredOffEvent"}}},
    )  # fmt: skip
    app.cli("up", "-f", str(stack))
    event = json.loads(SAMPLE.read_text())
    with app.client() as http:
        http.post("/webhook", json=event, headers=STRUCTURED)
        http.post("/webhook", json=dict(event, id="on-1", subject="VmPoweredOnEvent"),
                  headers=STRUCTURED)  # fmt: skip
    wait_for(
        lambda: (
            f"webhook: VmPoweredOffEvent {event['id']} from {event['source']} -> talker"
            in app.log_path.read_text()
        ),
        30,
        "the event's line",
    )
    wait_for(
        lambda: (
            "webhook: VmPoweredOnEvent on-1" in app.log_path.read_text()
            and "no function subscribes" in app.log_path.read_text()
        ),
        30,
        "the unrouted event's line",
    )
