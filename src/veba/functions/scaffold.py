"""`veba new`: a new function folder and its stack.yml entry, as faas-cli writes them.

Each template writes ``handler.py`` (using ``veba.sdk``), an empty
``requirements.txt`` and ``test_handler.py``, a pytest test using veba's plugin
(``veba_event``, ``veba_invoke``). Beside the stack a ``pytest.ini`` (if there is
none) selects pytest's importlib mode, so every function's ``test_handler.py``
can share that name.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["TEMPLATES", "ScaffoldError", "Template", "new_function"]


class ScaffoldError(ValueError):
    """Refused: the name is taken or not a function's name, or the template unknown."""


# A function's name, as stack.yml wants it; so it is also one folder, never a path.
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


@dataclass(frozen=True)
class Template:
    lang: str
    description: str
    handler: str  # handler.py, with {name} for the function's name


_HEADER = '''"""{name}: {summary}"""

from veba.sdk import Event, get_logger

log = get_logger()  # JSON lines on stderr, bound to the event being handled
'''

_BODY = """    vm = event.vm  # a MoRef (.name, .value, .moref) or None when the event has no VM
    key = event.require("data.Key")  # MissingField, a 422 that is not retried, if absent
    log.info("handling %s", event.subject, key=key, vm=vm.name if vm else None)
    result = {{"subject": event.subject, "key": key, "vm": vm.name if vm else None}}
{respond}
"""

_HANDLERS = {
    "python3": (
        "req is the CloudEvent as JSON text, as VEBA's OpenFaaS processor posts it.",
        "\n\ndef handle(req):\n    event = Event(req)\n",
        "    return result",
    ),
    "python3-flask": (
        "req is the CloudEvent JSON text; answer body or (body, status).",
        "\n\ndef handle(req):\n    event = Event(req)\n",
        "    return result, 200",
    ),
    "python3-http": (
        "event.body is the CloudEvent (structured or binary mode).",
        "\n\ndef handle(event, context):\n    event = Event(event)\n",
        '    return {"statusCode": 200, "body": result}',
    ),
    "veba-cloudevent": (
        "event is the parsed CloudEvent; ctx has attempt, deadline, secret().",
        "\n\ndef handle(event, ctx):\n    event = Event(event)\n",
        "    return result",
    ),
}

_TEST = '''"""Tests of {name}: run `pytest` (veba's pytest plugin provides veba_event and veba_invoke).

veba_invoke calls the handler as a delivery does, with the lang, environment and
secrets declared in stack.yml; `pytest --veba-worker` runs it in a real worker, in
the function's own venv.
"""

from pathlib import Path

import pytest

from veba.testing import HandlerError

HERE = Path(__file__).parent


def test_handles_{snake}(veba_event, veba_invoke):
    event = veba_event("{event}"{overrides})
    response = veba_invoke(HERE, event)
    assert response.status == 200
    assert response.json()["subject"] == "{event}"
    assert response.json()["vm"] {vm}


def test_an_event_without_a_key_is_refused(veba_event, veba_invoke):
    event = veba_event("{event}")
    del event["data"]["Key"]
    with pytest.raises(HandlerError) as failed:
        veba_invoke(HERE, event)
    assert failed.value.response.status == 422  # MissingField: to the DLQ, not retried
    assert "data.Key" in str(failed.value)
'''

_PYTEST_INI = """# Written by `veba new`: importlib mode lets each function folder's
# test_handler.py share that name. Run `pytest` here to test every function.
[pytest]
addopts = --import-mode=importlib
"""

_DESCRIPTIONS = {
    "python3": "OpenFaaS python3: handle(req) gets the CloudEvent JSON text (VEBA's examples)",
    "python3-flask": "OpenFaaS python3-flask: handle(req), may return (body, status[, headers])",
    "python3-http": "OpenFaaS python3-http: handle(event, context), returns statusCode/body/headers",
    "veba-cloudevent": "veba native: handle(event, ctx) gets a parsed CloudEvent, ctx.attempt/deadline",
}


def _handler_source(lang: str) -> str:
    summary, signature, respond = _HANDLERS[lang]
    return (
        _HEADER.format(name="{name}", summary=summary) + signature + _BODY.format(respond=respond)
    )


TEMPLATES = {
    lang: Template(lang, _DESCRIPTIONS[lang], _handler_source(lang))
    for lang in ("python3", "python3-flask", "python3-http", "veba-cloudevent")
}


def _test_source(name: str, topic: str) -> str:
    """A test for the template's handler, with an event the function subscribes to."""
    from veba.providers.simulator import SimulationError, VCenterSimulator

    known = set(VCenterSimulator.event_classes())
    subjects = [s.strip() for s in topic.split(",") if s.strip() in known]
    event = subjects[0] if subjects else "VmPoweredOnEvent"
    try:
        has_vm = VCenterSimulator().sample(event).data.get("Vm") is not None
    except SimulationError:
        has_vm = False
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in event).lstrip("_")
    return _TEST.format(
        name=name,
        event=event,
        snake=f"a_{snake}",
        overrides=', {"data.Vm.Name": "web-01"}' if has_vm else "",
        vm='== "web-01"' if has_vm else "is None",
    )


def new_function(
    name: str,
    lang: str,
    *,
    directory: Path,
    stack: Path,
    topic: str = "VmPoweredOnEvent",
    with_test: bool = True,
    gateway: str = "http://127.0.0.1:8080",
) -> Path:
    """Write `<directory>/<name>/` and add the function to `stack` (created if absent)."""
    if len(name) > 63 or not _DNS_LABEL.fullmatch(name):
        raise ScaffoldError(
            f"function name {name!r} must be a DNS-1123 label: lower case letters, digits"
            " and '-', starting and ending with a letter or digit, at most 63 characters"
        )
    template = TEMPLATES.get(lang)
    if template is None:
        raise ScaffoldError(f"unknown lang {lang!r}; expected one of {', '.join(TEMPLATES)}")
    folder = directory / name
    if folder.exists():
        raise ScaffoldError(f"{folder} already exists; refusing to overwrite it")
    document: dict[str, Any] = {
        "version": 1.0,
        "provider": {"name": "openfaas", "gateway": gateway},
    }
    if stack.exists():
        loaded = yaml.safe_load(stack.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ScaffoldError(f"{stack}: not a stack file")
        document = loaded
    functions: dict[str, Any] = document.get("functions") or {}
    document["functions"] = functions
    if name in functions:
        raise ScaffoldError(f"{stack}: functions.{name} already exists")
    folder.mkdir(parents=True)
    (folder / "handler.py").write_text(template.handler.replace("{name}", name))
    (folder / "requirements.txt").write_text("")
    if with_test:
        (folder / "test_handler.py").write_text(_test_source(name, topic))
        ini = stack.parent / "pytest.ini"
        configured = any(
            (stack.parent / f).exists() for f in ("pytest.ini", "pyproject.toml", "tox.ini")
        )
        if not configured:
            ini.write_text(_PYTEST_INI)
    handler = "./" + os.path.relpath(folder, stack.parent)
    functions[name] = {"lang": lang, "handler": handler, "annotations": {"topic": topic}}
    stack.write_text(yaml.safe_dump(document, sort_keys=False))
    return folder
