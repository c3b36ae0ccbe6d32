"""`veba new`: a new function folder and its stack.yml entry, as faas-cli writes them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["TEMPLATES", "ScaffoldError", "new_function"]


class ScaffoldError(ValueError):
    """Refused: the name is taken or the template unknown."""


@dataclass(frozen=True)
class Template:
    lang: str
    description: str
    handler: str


_PYTHON3 = '''import json


def handle(req):
    """req is the CloudEvent as JSON text, exactly as VEBA's OpenFaaS processor posts it."""
    event = json.loads(req)
    data = event.get("data") or {}
    vm = (data.get("Vm") or {}).get("Name")
    print(f"{event.get('subject')} for {vm}")
    return "ok"
'''

_PYTHON3_HTTP = '''import json


def handle(event, context):
    """event.body is the CloudEvent as JSON bytes; return statusCode, body, headers."""
    ce = json.loads(event.body)
    data = ce.get("data") or {}
    vm = (data.get("Vm") or {}).get("Name")
    print(f"{ce.get('subject')} for {vm}")
    return {"statusCode": 200, "body": "ok"}
'''

_NATIVE = '''def handle(event, ctx):
    """event is the CloudEvent (event.subject, event.data, ...); ctx.attempt, ctx.deadline."""
    vm = ((event.data or {}).get("Vm") or {}).get("Name")
    ctx.logger.info("%s for %s", event.subject, vm)
'''

TEMPLATES = {
    t.lang: t
    for t in (
        Template(
            "python3", "OpenFaaS python3: handle(req) gets the CloudEvent JSON text", _PYTHON3
        ),
        Template(
            "python3-flask",
            "OpenFaaS python3-flask: handle(req), may return (body, status)",
            _PYTHON3,
        ),
        Template(
            "python3-http",
            "OpenFaaS python3-http: handle(event, context) returns statusCode/body/headers",
            _PYTHON3_HTTP,
        ),
        Template(
            "veba-cloudevent", "veba native: handle(event, ctx) gets a CloudEvent object", _NATIVE
        ),
    )
}


def new_function(
    name: str, lang: str, *, directory: Path, stack: Path, topic: str = "VmPoweredOnEvent"
) -> Path:
    """Write `<directory>/<name>/` and add the function to `stack` (created if absent)."""
    template = TEMPLATES.get(lang)
    if template is None:
        raise ScaffoldError(f"unknown lang {lang!r}; expected one of {', '.join(TEMPLATES)}")
    folder = directory / name
    if folder.exists():
        raise ScaffoldError(f"{folder} already exists; refusing to overwrite it")
    document: dict[str, Any] = {
        "version": 1.0,
        "provider": {"name": "openfaas", "gateway": "http://127.0.0.1:8080"},
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
    (folder / "handler.py").write_text(template.handler)
    (folder / "requirements.txt").write_text("")
    handler = "./" + os.path.relpath(folder, stack.parent)
    functions[name] = {"lang": lang, "handler": handler, "annotations": {"topic": topic}}
    stack.write_text(yaml.safe_dump(document, sort_keys=False))
    return folder
