"""`veba new` and `veba template list`: each template writes a handler and a test that
passes as written, in-process and in a real worker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from veba.cli import app
from veba.functions.scaffold import TEMPLATES, ScaffoldError, new_function
from veba.functions.stack import LANGS, check_handler_syntax, load_stack

runner = CliRunner()


def test_every_lang_has_a_template_with_a_description() -> None:
    assert set(TEMPLATES) == set(LANGS)
    result = runner.invoke(app, ["template", "list"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == list(TEMPLATES)
    assert all(len(line.split(None, 1)[1]) > 20 for line in lines)
    assert runner.invoke(app, ["new", "--list"]).stdout == result.stdout  # still there


def test_new_writes_handler_test_and_stack_entry(tmp_path: Path) -> None:
    stack = tmp_path / "stack.yml"
    result = runner.invoke(
        app, ["new", "tagger", "--lang", "veba-cloudevent", "--append", str(stack)]
    )
    assert result.exit_code == 0, result.output
    folder = tmp_path / "tagger"
    assert sorted(p.name for p in folder.iterdir()) == [
        "handler.py",
        "requirements.txt",
        "test_handler.py",
    ]
    assert "from veba.sdk import Event, get_logger" in (folder / "handler.py").read_text()
    assert "veba_invoke(HERE, event)" in (folder / "test_handler.py").read_text()
    assert "--import-mode=importlib" in (tmp_path / "pytest.ini").read_text()
    spec = load_stack(stack).functions["tagger"]
    assert (spec.lang, spec.handler, spec.topic) == ("veba-cloudevent", folder, "VmPoweredOnEvent")
    check_handler_syntax(spec)

    # A second function joins the stack; the pytest.ini is not written again.
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    new_function(
        "logins", "python3", directory=tmp_path, stack=stack, topic="UserLoginSessionEvent"
    )
    assert set(yaml.safe_load(stack.read_text())["functions"]) == {"tagger", "logins"}
    assert (tmp_path / "pytest.ini").read_text() == "[pytest]\n"
    assert (
        'veba_event("UserLoginSessionEvent")' in (tmp_path / "logins/test_handler.py").read_text()
    )

    bare = runner.invoke(app, ["new", "bare", "--no-test", "--append", str(stack)])
    assert bare.exit_code == 0 and not (tmp_path / "bare" / "test_handler.py").exists()


def test_refusals(tmp_path: Path) -> None:
    stack = tmp_path / "stack.yml"
    new_function("one", "python3", directory=tmp_path, stack=stack)
    with pytest.raises(ScaffoldError, match="refusing to overwrite"):
        new_function("one", "python3", directory=tmp_path, stack=stack)
    with pytest.raises(ScaffoldError, match="unknown lang 'go'"):
        new_function("two", "go", directory=tmp_path, stack=stack)
    missing = runner.invoke(app, ["new"])
    assert missing.exit_code != 0 and "NAME" in missing.output


def test_a_name_that_is_a_path_writes_nothing_outside(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    stack = project / "stack.yml"
    for name in ("../evil", "/tmp/evil", "a/b", "Evil", "..", "x" * 64):
        with pytest.raises(ScaffoldError, match=r"is a path|DNS-1123"):
            new_function(name, "python3", directory=project, stack=stack)
    refused = runner.invoke(app, ["new", "../evil", "--append", str(stack)])
    assert refused.exit_code != 0 and "is a path" in refused.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]
    assert list(project.iterdir()) == []


@pytest.mark.parametrize("option", [[], ["--veba-worker"]])
def test_the_generated_tests_pass(tmp_path: Path, option: list[str]) -> None:
    stack = tmp_path / "stack.yml"
    for lang in TEMPLATES:
        new_function(f"fn-{lang}", lang, directory=tmp_path, stack=stack)
    new_function(
        "logouts", "python3-http", directory=tmp_path, stack=stack, topic="UserLogoutSessionEvent"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *option],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**env, "VEBA_DATA_DIR": str(tmp_path / "data")},
    )
    assert f"{2 * (len(TEMPLATES) + 1)} passed" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("Bad_Name", "DNS-1123 label"),
        ("edge-", "DNS-1123 label"),
        ("a" * 64, "at most 63 characters"),
        ("../evil", "is a path"),
        ("a/b", "is a path"),
        ("..", "is a path"),
    ],
)
def test_new_refuses_what_up_would_refuse_before_writing_anything(
    tmp_path: Path, name: str, says: str
) -> None:
    """Problem 4: `veba new Bad_Name` wrote a function `veba up` then refused, and
    `veba new ../evil` wrote outside the project."""
    project = tmp_path / "project"
    project.mkdir()
    stack = project / "stack.yml"
    stack.write_text("# my functions\nfunctions:\n  echo: {lang: python3, handler: ./echo}\n")
    before = sorted(tmp_path.rglob("*"))
    result = runner.invoke(app, ["new", name, "--append", str(stack)])
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and says in result.output
    assert "Traceback" not in result.output
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, here or beside
    assert stack.read_text().startswith("# my functions\n")


def test_new_keeps_the_stack_file_as_written(tmp_path: Path) -> None:
    """Problem 4: `veba new` rewrote stack.yml, dropping its comments."""
    stack = tmp_path / "stack.yml"
    written = (
        "# Functions of the lab vCenter.\n"
        "version: 1.0\n"
        "provider:\n"
        "  name: openfaas\n"
        "  gateway: ${OPENFAAS_URL:-http://127.0.0.1:8080}  # VEBA's guides export it\n"
        "functions:\n"
        "    # tags new VMs\n"
        "    tagger:\n"
        "        lang: python3\n"
        "        handler: ./tagger\n"
        "        annotations:\n"
        '            topic: "VmCreatedEvent"   # and only those\n'
        "\n"
        "# faas-cli's, unused by veba\n"
        "configuration:\n"
        "  templates:\n"
        "    - name: python3-http\n"
    )
    stack.write_text(written)
    (tmp_path / "tagger").mkdir()
    (tmp_path / "tagger" / "handler.py").write_text("def handle(req):\n    return req\n")
    result = runner.invoke(
        app, ["new", "notify", "--lang", "python3-http", "--append", str(stack),
              "--topic", "VmPoweredOffEvent"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    head, tail = written.split("\n\n# faas-cli's")
    assert stack.read_text() == (
        head + "\n"
        "    notify:\n"
        "        lang: python3-http\n"
        "        handler: ./notify\n"
        "        annotations:\n"
        "            topic: VmPoweredOffEvent\n"
        "\n# faas-cli's" + tail
    )
    functions = load_stack(stack, env={}).functions
    assert list(functions) == ["tagger", "notify"]
    assert functions["notify"].topic == "VmPoweredOffEvent"


def test_new_warns_of_a_topic_that_is_no_event_type(tmp_path: Path) -> None:
    stack = tmp_path / "stack.yml"
    result = runner.invoke(
        app,
        ["new", "echo", "--append", str(stack), "--topic", "VmPowerdOnEvent",
         "--gateway", "http://127.0.0.1:9"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (
        f"warning: {stack}: functions.echo.annotations.topic: 'VmPowerdOnEvent' is not a"
        " known event type; did you mean 'VmPoweredOnEvent'?"
    ) in " ".join(result.output.split())
