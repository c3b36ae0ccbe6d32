"""The CLI as a whole: every command and option explains itself, and every `-o`
takes the same formats. (What each command does is tested with a real appliance
in tests/e2e.)"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from veba import __version__
from veba.cli import app

runner = CliRunner()


def _commands(
    command: Any = None, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, command) for the app and every command and subcommand under it."""
    command = command or typer.main.get_command(app)
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _commands(sub, (*path, name))


COMMANDS = list(_commands())
WITH_OUTPUT = [
    path for path, command in COMMANDS if any(p.name == "output" for p in command.params)
]


def test_every_command_and_option_has_help_text() -> None:
    missing = [
        f"veba {' '.join(path)}: {'argument' if p.param_type_name == 'argument' else 'option'}"
        f" {p.human_readable_name}"
        for path, command in COMMANDS
        for p in command.params
        if not (getattr(p, "help", None) or "").strip()
    ]
    missing += [f"veba {' '.join(path)}" for path, c in COMMANDS if not (c.help or "").strip()]
    assert missing == [], "without help text"
    assert len(COMMANDS) >= 30  # the walk saw the subcommands too


@pytest.mark.parametrize("path", [path for path, _ in COMMANDS], ids=" ".join)
def test_help_of_every_command_renders(path: tuple[str, ...]) -> None:
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output


@pytest.mark.parametrize("path", WITH_OUTPUT, ids=" ".join)
def test_every_output_option_refuses_an_unknown_format(path: tuple[str, ...]) -> None:
    # Refused before anything else is looked at (no appliance runs here).
    result = runner.invoke(app, [*path, "-o", "xml"])
    assert result.exit_code == 2
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())  # rich's box, away
    assert "Invalid value for '--output' / '-o'" in text
    assert "'xml' is not one of 'table', 'json', 'yaml'" in text


def test_output_is_on_every_listing_command() -> None:
    assert {" ".join(p) for p in WITH_OUTPUT} >= {
        "list", "logs", "catalog", "secret list", "events list", "events tail", "dlq list",
    }  # fmt: skip


def test_version() -> None:
    assert runner.invoke(app, ["--version"]).stdout == f"veba {__version__}\n"
