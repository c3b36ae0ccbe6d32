"""The catalogue's shape: every example has its stack.yml (loadable, as `veba up`
reads it), README.md, handler folder and test; examples/README.md lists them; and
each handler imports only what its venv will have (the standard library, veba.sdk
and its requirements.txt), since a worker sees nothing of the appliance."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from tests.examples.support import EXAMPLES
from veba.functions.stack import check_handler_syntax, load_stack

NAMES = sorted(p.name for p in EXAMPLES.iterdir() if (p / "stack.yml").is_file())
# What a requirement installs, as imported.
MODULES = {"pyvmomi": {"pyVmomi", "pyVim", "vmware"}}


def test_the_catalogue_lists_every_example() -> None:
    assert NAMES == ["echo", "notify", "prefilter", "tag-vm", "vm-attributes", "vro-workflow"]
    index = (EXAMPLES / "README.md").read_text()
    for name in NAMES:
        assert f"[{name}]({name}/)" in index, f"examples/README.md does not list {name}"


@pytest.mark.parametrize("name", NAMES)
def test_an_example_is_complete(name: str) -> None:
    folder = EXAMPLES / name
    assert (folder / "README.md").is_file()
    assert (Path(__file__).parent / f"test_{name.replace('-', '_')}.py").is_file()
    stack = load_stack(folder / "stack.yml")
    assert list(stack.functions) == [name]
    spec = stack.functions[name]
    assert spec.handler == folder / name
    check_handler_syntax(spec)
    assert spec.topic, "a function without a topic gets no events"

    requirements = (spec.handler / "requirements.txt").read_text()
    installed: set[str] = set()
    for line in requirements.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            project = re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower()
            installed |= MODULES.get(project, {project})
    tree = ast.parse((spec.handler / "handler.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for module in names:
            top = module.split(".")[0]
            ok = (
                top in sys.stdlib_module_names
                or module == "veba.sdk"
                or module.startswith("veba.sdk.")
                or top in installed
            )
            assert ok, f"{name}/handler.py imports {module}, which its venv will not have"
