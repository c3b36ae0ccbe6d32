"""A newcomer's first hour with the CLI, against a real `veba serve`: each test is a
surprise found by trying veba as a new user (issue 9), and failed before its fix."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import yaml

from tests.e2e.harness import ApplianceProcess, write_function

HANDLER = "def handle(req):\n    return req\n"


def _stack(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def _deployed(app: ApplianceProcess) -> list[str]:
    return sorted(f["name"] for f in json.loads(app.cli("list", "-o", "json").stdout))


def test_misspelt_stack_fields_fail_and_unknown_topics_warn(
    appliance_factory: type, tmp_path: Path
) -> None:
    """Problem 3: `anotations:` deployed a function without a topic, silently."""
    app = appliance_factory.start("--no-simulator")
    write_function(tmp_path / "fn" / "echo", HANDLER)
    stack = _stack(
        tmp_path / "fn" / "stack.yml",
        """
        version: 1.0
        provider: {name: openfaas, gateway: http://127.0.0.1:8080}
        functions:
          echo:
            lang: python3
            handler: ./echo
            anotations:
              topic: VmPoweredOnEvent
        """,
    )
    refused = app.cli("up", "-f", str(stack), check=False)
    assert refused.returncode == 1
    assert refused.stderr.startswith(
        f"error: {stack}: functions.echo.anotations: unknown field 'anotations';"
        " did you mean 'annotations'?"
    )
    assert "Traceback" not in refused.stderr and _deployed(app) == []

    # A topic no event type has is a warning with the likely one, and deploys:
    # an EventEx id may exist only on the user's own vCenter.
    stack.write_text(
        stack.read_text()
        .replace("anotations:", "annotations:")
        .replace("VmPoweredOnEvent", "VmPowerdOnEvent, com.vmware.cis.tagging.attach")
    )
    warned = app.cli("up", "-f", str(stack))
    assert (
        f"warning: {stack}: functions.echo.annotations.topic: 'VmPowerdOnEvent' is not a"
        " known event type; did you mean 'VmPoweredOnEvent'?" in warned.stderr
    )
    assert "tagging.attach" not in warned.stderr  # a known EventEx id: no warning
    assert "echo: deployed" in warned.stderr and _deployed(app) == ["echo"]


def test_remove_a_stack_whose_code_is_gone_or_broken(
    appliance_factory: type, tmp_path: Path
) -> None:
    """Problem 9: `veba remove -f` needed every handler to exist and compile."""
    app = appliance_factory.start("--no-simulator")
    for name in ("one", "two"):
        write_function(tmp_path / "fn" / name, HANDLER)
    stack = _stack(
        tmp_path / "fn" / "stack.yml",
        """
        functions:
          one: {lang: python3, handler: ./one}
          two: {lang: python3, handler: ./two}
        """,
    )
    app.cli("up", "-f", str(stack))
    assert _deployed(app) == ["one", "two"]

    shutil.rmtree(tmp_path / "fn" / "one")
    (tmp_path / "fn" / "two" / "handler.py").write_text("def handle(req)\n    return req\n")
    with stack.open("a") as more:  # and one that was never deployed
        more.write("  three: {lang: python3, handler: ./three}\n")
    removed = app.cli("remove", "-f", str(stack))
    assert removed.stderr.splitlines() == [
        f"removing from {app.url} (from $VEBA_URL)",  # the one gateway rule, said
        "removed one",
        "removed two",
        "three: not deployed",
    ]
    assert _deployed(app) == []


def test_a_function_that_is_not_deployed_is_an_error_naming_the_deployed_ones(
    appliance_factory: type, tmp_path: Path
) -> None:
    """Problem 11: `veba logs nosuch` printed nothing and exited 0."""
    app = appliance_factory.start("--no-simulator")
    write_function(tmp_path / "fn" / "echo", HANDLER)
    stack = _stack(
        tmp_path / "fn" / "stack.yml", "functions:\n  echo: {lang: python3, handler: ./echo}\n"
    )
    app.cli("up", "-f", str(stack))
    for command in (["logs", "nosuch"], ["logs", "nosuch", "--follow"], ["remove", "nosuch"]):
        result = app.cli(*command, check=False)
        assert result.returncode == 1, command
        assert result.stderr == (
            f"error: function 'nosuch' is not deployed at {app.url} (deployed: echo)\n"
        )
    assert app.cli("logs", "echo").returncode == 0


def test_output_formats_and_versions(appliance_factory: type, tmp_path: Path) -> None:
    """Problem 11: `-o yaml` and `-o JSON` printed a table; there was no `--version`."""
    app = appliance_factory.start("--no-simulator")
    write_function(tmp_path / "fn" / "echo", HANDLER)
    stack = _stack(
        tmp_path / "fn" / "stack.yml", "functions:\n  echo: {lang: python3, handler: ./echo}\n"
    )
    app.cli("up", "-f", str(stack))
    as_json = json.loads(app.cli("list", "-o", "json").stdout)
    assert as_json[0]["name"] == "echo"
    assert yaml.safe_load(app.cli("list", "-o", "yaml").stdout) == as_json
    assert json.loads(app.cli("list", "-o", "JSON").stdout) == as_json
    secrets = app.cli("secret", "list", "--output", "yaml").stdout
    assert yaml.safe_load(secrets) == []

    from veba import __version__

    assert app.cli("--version").stdout == f"veba {__version__}\n"
    assert app.cli("version").stdout == (
        f"veba {__version__}\nappliance at {app.url}: veba {__version__}\n"
    )
