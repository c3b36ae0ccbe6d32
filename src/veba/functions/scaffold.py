"""`veba new`: a new function folder and its stack.yml entry, as faas-cli writes them.

Each template writes ``handler.py`` (using ``veba.sdk``), an empty
``requirements.txt`` and ``test_handler.py``, a pytest test using veba's plugin
(``veba_event``, ``veba_invoke``). Beside the stack a ``pytest.ini`` (if there is
none) selects pytest's importlib mode, so every function's ``test_handler.py``
can share that name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from veba.functions.stack import StackError, function_name_problem, load_yaml

__all__ = [
    "TEMPLATES",
    "ScaffoldError",
    "Template",
    "append_function",
    "name_problem",
    "new_function",
]


class ScaffoldError(ValueError):
    """Refused, before anything is written: a bad or taken name, an unknown
    template, a stack file that cannot take the function."""


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
    """Write `<directory>/<name>/` and add the function to `stack` (created if absent).

    Everything is checked before anything is written: the name (as `veba up` will
    check it), the template, the folder, and that the stack can take the entry.
    """
    problem = name_problem(name)
    if problem:
        raise ScaffoldError(problem)
    template = TEMPLATES.get(lang)
    if template is None:
        raise ScaffoldError(f"unknown lang {lang!r}; expected one of {', '.join(TEMPLATES)}")
    folder = directory / name
    if folder.exists():
        raise ScaffoldError(f"{folder} already exists; refusing to overwrite it")
    handler = "./" + os.path.relpath(folder, stack.parent)
    entry = {"lang": lang, "handler": handler, "annotations": {"topic": topic}}
    if stack.exists():
        text = append_function(stack, stack.read_text(), name, entry)
    else:
        text = _NEW_STACK.format(gateway=_scalar(gateway)) + _entry_text(name, entry, "  ")
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
    stack.write_text(text)
    return folder


def name_problem(name: str) -> str | None:
    """Why `veba new` cannot make a function of this name (None if it can)."""
    if "/" in name or "\\" in name or name in (".", ".."):
        return (
            f"{name!r} is a path; NAME is the function's name, and its folder is made"
            " beside the stack file (choose that with --append DIR/stack.yml)"
        )
    problem = function_name_problem(name)
    return f"{name!r}: {problem}" if problem else None


# -- stack.yml, edited as text: its comments, order and quoting stay as they were ------

_NEW_STACK = """version: 1.0
provider:
  name: openfaas
  gateway: {gateway}
functions:
"""


def _scalar(value: str) -> str:
    """`value` as a YAML scalar: plain when YAML reads it back as that string."""
    dumped = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return dumped.removesuffix("\n...").removesuffix("...").strip()


def _entry_text(name: str, entry: dict[str, Any], indent: str, step: str = "  ") -> str:
    """`name: entry` as block YAML, every line indented by `indent`."""
    body = yaml.safe_dump(
        {name: entry}, sort_keys=False, default_flow_style=False, indent=len(step)
    )
    return "".join(f"{indent}{line}\n" for line in body.splitlines())


def append_function(stack: Path, text: str, name: str, entry: dict[str, Any]) -> str:
    """`text` (a stack.yml) with `name: entry` added at the end of its `functions`.

    The entry is inserted as text after the last function, indented as the others,
    so everything else in the file (comments, ${VAR}s, blank lines, key order) is
    kept byte for byte. The result is parsed again and must hold the old functions
    unchanged plus the new one, else nothing is written.
    """
    try:
        before = load_yaml(text, str(stack))
    except StackError as exc:
        raise ScaffoldError(f"{exc}; fix it first") from None
    root = yaml.compose(text)
    if before is None:
        before, root = {}, None
    if not isinstance(before, dict) or not isinstance(root, yaml.MappingNode | None):
        raise ScaffoldError(f"{stack}: not a stack file (expected a mapping at the top)")
    functions = before.get("functions")
    if functions is not None and not isinstance(functions, dict):
        raise ScaffoldError(f"{stack}: functions: expected a mapping of function names")
    if name in (functions or {}):
        raise ScaffoldError(f"{stack}: functions.{name} already exists")
    after = _insert(text, root, name, entry)
    check = yaml.safe_load(after)
    expected = {**(functions or {}), name: entry}
    if not isinstance(check, dict) or check.get("functions") != expected:
        raise ScaffoldError(
            f"{stack}: cannot add {name} to it as text (an unusual layout); add it by hand:\n"
            + _entry_text(name, entry, "  ")
        )
    return after


def _insert(text: str, root: yaml.MappingNode | None, name: str, entry: dict[str, Any]) -> str:
    if not text.endswith("\n") and text:
        text += "\n"
    pairs = root.value if root is not None else []
    found = [(k, v) for k, v in pairs if isinstance(k, yaml.ScalarNode) and k.value == "functions"]
    if not found:
        return text + "functions:\n" + _entry_text(name, entry, "  ")
    key, value = found[0]
    if isinstance(value, yaml.MappingNode) and value.value and not value.flow_style:
        first_key, first_value = value.value[0]
        indent = " " * first_key.start_mark.column
        step = "  "
        if isinstance(first_value, yaml.MappingNode) and first_value.value:
            nested = first_value.value[0][0].start_mark.column - first_key.start_mark.column
            step = " " * max(nested, 1)
        at = _line_end(text, _last_leaf(value).end_mark.index)
        return text[:at] + _entry_text(name, entry, indent, step) + text[at:]
    # `functions:` with nothing, or `functions: {}`: the entry goes on the lines after.
    empty = (isinstance(value, yaml.ScalarNode) and value.value in ("", "~", "null")) or (
        isinstance(value, yaml.MappingNode) and not value.value
    )
    if not empty:
        return text  # a layout not handled: the caller's check refuses it
    start, end = value.start_mark.index, value.end_mark.index
    if start == end:  # nothing written after `functions:`
        start = end = key.end_mark.index + 1  # after the colon
    at = _line_end(text, end)
    head = text[:start].rstrip(" ")
    return head + text[end:at] + _entry_text(name, entry, "  ") + text[at:]


def _last_leaf(node: yaml.Node) -> yaml.Node:
    """The node written last inside `node` (a block collection ends where it does)."""
    while isinstance(node, yaml.MappingNode | yaml.SequenceNode) and not node.flow_style:
        if not node.value:
            break
        last = node.value[-1]
        node = last[1] if isinstance(node, yaml.MappingNode) else last
    return node


def _line_end(text: str, index: int) -> int:
    """The index just after the newline that ends the line holding `index`."""
    # A scalar's end mark may already sit at the start of the next line.
    if index > 0 and text[index - 1] == "\n":
        return index
    newline = text.find("\n", index)
    return len(text) if newline < 0 else newline + 1
