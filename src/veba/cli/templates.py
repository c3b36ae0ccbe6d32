"""`veba template list`: the function templates `veba new --lang` writes."""

from __future__ import annotations

import sys

import typer

__all__ = ["print_templates", "template_app"]

template_app = typer.Typer(help="Function templates for `veba new`.", no_args_is_help=True)


def print_templates() -> None:
    from veba.functions.scaffold import TEMPLATES

    width = max(len(lang) for lang in TEMPLATES) + 2
    for template in TEMPLATES.values():
        sys.stdout.write(f"{template.lang:{width}}{template.description}\n")


@template_app.command("list")
def template_list() -> None:
    """Each template, with what its handler receives and returns."""
    print_templates()
