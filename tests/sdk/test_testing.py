"""veba's pytest plugin: veba_event and veba_invoke, in-process and in a real worker."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from veba.testing import HandlerError, Response

HANDLER = """
import os
from veba.sdk import Event, get_logger, secret

log = get_logger()

def handle(event, context):
    ev = Event(event)
    if ev.subject == "VmRemovedEvent":
        return {{1, 2}}                                    # unsupported
    if ev.get("data.Vm.Name") == "explode":
        raise RuntimeError("exploded on " + ev.require("data.Vm.Vm.Value"))
    log.info("handling", vm=ev.get("data.Vm.Name"))
    return {{
        "statusCode": 200,
        "body": {{
            "vm": ev.require("data.Vm.Name"),
            "key": ev.key,
            "token": secret("token"),  # scrubbed from the answer, as in the appliance
            "token_length": len(secret("token")),
            "region": os.environ.get("REGION"),
            "extra": os.environ.get("EXTRA"),
            "name": os.environ["VEBA_FUNCTION_NAME"],
            "host": context.hostname,
            "cwd": os.getcwd(),
            "ce_id": event.headers.get("Ce-Id"),
            "pid": os.getpid(),
        }},
    }}
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A function author's folder: stack.yml and one python3-http function."""
    fn = tmp_path / "tagger"
    fn.mkdir()
    (fn / "handler.py").write_text(textwrap.dedent(HANDLER.format()))
    (fn / "requirements.txt").write_text("")
    stack = {
        "version": 1.0,
        "provider": {"name": "openfaas", "gateway": "http://127.0.0.1:8080"},
        "functions": {
            "tagger": {
                "lang": "python3-http",
                "handler": "./tagger",
                "environment": {"REGION": "emea"},
                "secrets": ["token"],
                "annotations": {"topic": "VmPoweredOnEvent"},
            }
        },
    }
    (tmp_path / "stack.yml").write_text(yaml.safe_dump(stack))
    return tmp_path


def test_veba_event_samples(veba_event: Callable[..., dict]) -> None:
    event = veba_event("VmPoweredOffEvent", {"data.Vm.Name": "web-01"})
    assert event["subject"] == "VmPoweredOffEvent" and event["data"]["Vm"]["Name"] == "web-01"
    assert event["specversion"] == "1.0" and event["type"] == "com.vmware.event.router/event"
    same = veba_event("VmPoweredOffEvent", Vm__Name="web-01")
    assert same == event  # deterministic, and kwargs spell paths with __
    assert veba_event("UserLoginSessionEvent")["data"]["Vm"] is None


@pytest.mark.parametrize("mode", ["inprocess", "worker"])
def test_invoke_as_the_runtime_does(
    veba_event: Callable[..., dict],
    veba_invoke: Callable[..., Response],
    project: Path,
    mode: str,
) -> None:
    event = veba_event("VmPoweredOnEvent", {"data.Vm.Name": "web-01"})
    response = veba_invoke(
        project / "tagger", event, secrets={"token": "t0k3n"}, environment={"EXTRA": "x"}, mode=mode
    )
    got = response.json()
    assert response.status == 200 and response.ok
    assert response.headers["Content-Type"] == "application/json"
    assert (got["vm"], got["key"]) == ("web-01", event["data"]["Key"])
    assert (got["token"], got["token_length"]) == ("[REDACTED]", len("t0k3n"))
    assert (got["region"], got["extra"], got["name"]) == ("emea", "x", "tagger")  # stack env
    assert got["host"] == "tagger-0" and got["ce_id"] == event["id"]
    assert Path(got["cwd"]) == (project / "tagger").resolve()
    assert (got["pid"] == os.getpid()) == (mode == "inprocess")
    assert "REGION" not in os.environ and "VEBA_SECRETS_DIR" not in os.environ  # restored

    # The same by function name, from the stack file.
    again = veba_invoke(
        "tagger", event, stack=project / "stack.yml", secrets={"token": "t"}, mode=mode
    )
    assert again.json()["vm"] == "web-01"


@pytest.mark.parametrize("mode", ["inprocess", "worker"])
def test_handler_failures_raise_with_the_handlers_traceback(
    veba_event: Callable[..., dict],
    veba_invoke: Callable[..., Response],
    project: Path,
    mode: str,
) -> None:
    fn = project / "tagger"
    secrets = {"token": "t"}
    boom = veba_event("VmPoweredOnEvent", {"data.Vm.Name": "explode"})
    with pytest.raises(HandlerError) as failed:
        veba_invoke(fn, boom, secrets=secrets, mode=mode)
    assert failed.value.error is not None and failed.value.error.startswith(
        "RuntimeError: exploded"
    )
    assert failed.value.traceback and 'handler.py", line' in failed.value.traceback
    assert "handler traceback" in str(failed.value)
    if mode == "inprocess":
        assert isinstance(failed.value.__cause__, RuntimeError)

    with pytest.raises(HandlerError, match="handler returned 'set'; expected a dict"):
        veba_invoke(fn, veba_event("VmRemovedEvent"), secrets=secrets, mode=mode)

    no_vm = veba_event("VmPoweredOnEvent")
    no_vm["data"]["Vm"] = None
    response = veba_invoke(fn, no_vm, secrets=secrets, mode=mode, raises=False)
    assert response.status == 422 and not response.ok
    assert response.error is not None and "data.Vm.Name: data.Vm is null" in response.error

    with (
        pytest.raises(HandlerError, match="SecretNotFound: secret 'token'"),
        pytest.warns(UserWarning, match="declares secret"),
    ):
        veba_invoke(fn, veba_event("VmPoweredOnEvent"), mode=mode)


def test_secrets_the_stack_does_not_declare_are_refused(
    veba_event: Callable[..., dict], veba_invoke: Callable[..., Response], project: Path
) -> None:
    with pytest.raises(ValueError, match="does not declare 'other'"):
        veba_invoke(
            project / "tagger", veba_event("VmPoweredOnEvent"), secrets={"token": "t", "other": "x"}
        )


def test_a_folder_no_stack_lists_needs_a_lang(
    veba_invoke: Callable[..., Response], tmp_path: Path
) -> None:
    fn = tmp_path / "loose"
    fn.mkdir()
    (fn / "handler.py").write_text("def handle(req):\n    return 'got ' + req\n")
    with pytest.raises(LookupError, match="pass lang="):
        veba_invoke(fn, "x")
    assert veba_invoke(fn, "hello", lang="python3").text == "got hello\n"  # print(...)
    with pytest.raises(ValueError, match="unknown lang"):
        veba_invoke(fn, "x", lang="go")


AUTHOR_TEST = """
from pathlib import Path

import pytest

from veba.testing import HandlerError

HERE = Path(__file__).parent


def test_tags_web_vms(veba_event, veba_invoke):
    event = veba_event("VmPoweredOnEvent", {"data.Vm.Name": "web-01"})
    response = veba_invoke(HERE, event, secrets={"token": "t0k3n"})
    assert response.json()["vm"] == "web-01"


def test_shows_the_handlers_traceback(veba_event, veba_invoke):
    event = veba_event("VmPoweredOnEvent", {"data.Vm.Name": "explode"})
    veba_invoke(HERE, event, secrets={"token": "t0k3n"})
"""


@pytest.mark.parametrize("option", [[], ["--veba-worker"]])
def test_a_function_authors_test_run(project: Path, option: list[str]) -> None:
    """What an author gets: `pytest` in the function's folder, the plugin loaded by
    its entry point, a failing test showing where in handler.py it failed."""
    (project / "tagger" / "test_handler.py").write_text(AUTHOR_TEST)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *option, "tagger"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    out = result.stdout + result.stderr
    assert "1 failed, 1 passed" in out, out
    assert "RuntimeError: exploded on vm-" in out
    assert 'tagger/handler.py", line' in out  # the handler's own frame
    assert "function 'tagger' failed with status 500" in out


def test_worker_mode_enforces_the_timeout(
    veba_invoke: Callable[..., Response], tmp_path: Path
) -> None:
    fn = tmp_path / "slow"
    fn.mkdir()
    (fn / "handler.py").write_text(
        "import time\nfrom veba.sdk import remaining\n\n"
        "def handle(req):\n    time.sleep(remaining() + 5)\n"
    )
    with pytest.raises(HandlerError, match=r"timed out after 0\.5s"):
        veba_invoke(fn, "x", lang="python3", mode="worker", timeout=0.5)
