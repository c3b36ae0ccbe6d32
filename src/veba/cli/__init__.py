"""The `veba` command line."""

from __future__ import annotations

import typer

from veba.cli import catalog, events, functions, login, secrets, serve, templates

__all__ = ["app", "main"]

app = typer.Typer(
    help="veba: vCenter events to Python functions, at least once.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command()(serve.serve)
functions.register(app)
login.register(app)
app.add_typer(secrets.secret_app, name="secret")
app.add_typer(templates.template_app, name="template")
app.add_typer(events.events_app, name="events")
app.add_typer(events.dlq_app, name="dlq")
app.command()(events.replay)
app.command()(events.status)
app.command()(catalog.catalog)


def main() -> None:
    app()
