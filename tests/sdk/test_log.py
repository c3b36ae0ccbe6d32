"""`get_logger`: structured lines on stderr, bound to the event, secrets redacted."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from veba.functions import worker
from veba.sdk import Event, get_logger, redact

VCCONFIG = """[vcenter]
server = "vcsa.lab.local"
user = "administrator@vsphere.local"
password = "VMware1!-s3cret"
"""


def lines(captured: str) -> list[dict]:
    return [json.loads(line) for line in captured.splitlines() if line.strip()]


def test_json_lines_bound_to_an_event(
    sample: dict, secrets_dir: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    secrets_dir()
    log = get_logger(sample, component="tagging")
    log.info("tagged %s", "test-01", vm="test-01", tags=["prod"])
    log.bind(step=2).warning("slow")
    log.debug("not shown at the default level")
    first, second = lines(capsys.readouterr().err)
    assert first["msg"] == "tagged test-01" and first["level"] == "info"
    assert first["function"] == "tagger"
    assert first["event"] == sample["id"] and first["subject"] == "VmPoweredOffEvent"
    assert (first["component"], first["vm"], first["tags"]) == ("tagging", "test-01", ["prod"])
    assert first["time"].endswith("Z")
    assert (second["level"], second["step"], second["component"]) == ("warning", 2, "tagging")
    assert get_logger(Event(sample))._event == (sample["id"], "VmPoweredOffEvent")


def test_a_module_level_logger_follows_the_call_being_handled(
    sample: dict, secrets_dir: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    secrets_dir()
    log = get_logger()  # as a handler module does at import
    log.info("outside a call")

    def handle(req: str) -> str:
        log.info("inside")
        return "ok"

    call = worker._make_call(handle, "python3")
    body = json.dumps(sample).encode()
    worker.dispatch(call, {"headers": {"X-Veba-Attempt": "3"}}, body)  # id from the body
    worker.dispatch(call, {"headers": {"Ce-Id": "h-1", "Ce-Subject": "VmCreatedEvent"}}, b"{}")
    outside, first, second = lines(capsys.readouterr().err)
    assert "event" not in outside and "attempt" not in outside
    assert (first["event"], first["subject"], first["attempt"]) == (
        sample["id"],
        "VmPoweredOffEvent",
        3,
    )
    assert (second["event"], second["subject"]) == ("h-1", "VmCreatedEvent")
    assert "attempt" not in second  # only shown for retries


def test_secret_values_are_redacted(
    secrets_dir: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    secrets_dir(
        token="tok-abcdef\n", vcconfig=VCCONFIG, pem="-----BEGIN-----\nAAAAline1\nBBBBline2\n"
    )
    log = get_logger()
    log.info("using tok-abcdef", header="Bearer tok-abcdef", nested={"pw": ["VMware1!-s3cret"]})
    log.error("login VMware1!-s3cret failed for administrator@vsphere.local")
    log.info("key part BBBBline2")
    try:
        raise RuntimeError("boom with tok-abcdef")
    except RuntimeError:
        log.exception("failed")
    out = capsys.readouterr().err
    for value in ("tok-abcdef", "VMware1!-s3cret", "BBBBline2"):
        assert value not in out
    first, second, third, fourth = lines(out)
    assert first["msg"] == "using [REDACTED]" and first["header"] == "Bearer [REDACTED]"
    assert first["nested"] == {"pw": ["[REDACTED]"]}
    # A secret's user and server are public (veba.scrub): only the password goes.
    assert second["msg"] == "login [REDACTED] failed for administrator@vsphere.local"
    assert third["msg"] == "key part [REDACTED]"
    assert "RuntimeError: boom with [REDACTED]" in fourth["exc"]
    assert redact("x tok-abcdef y") == "x [REDACTED] y"


def test_key_value_format_and_level(
    secrets_dir: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secrets_dir()
    monkeypatch.setenv("VEBA_LOG_FORMAT", "kv")
    monkeypatch.setenv("VEBA_LOG_LEVEL", "debug")
    get_logger().debug("two words", vm="web-01", n=3, quoted='say "hi"')
    line = capsys.readouterr().err.strip()
    assert 'level=debug msg="two words" function=tagger vm=web-01 n=3' in line
    assert 'quoted="say \\"hi\\""' in line
