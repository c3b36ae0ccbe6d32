"""Shell completion of deployed function names (`veba invoke <TAB>`), asked of
the gateway the command would talk to, briefly: a TAB never waits long and
never breaks the shell."""

from __future__ import annotations

from typing import Any

import typer

__all__ = ["complete_function"]

_TIMEOUT = 1.5  # seconds a shell's TAB waits for the appliance


def complete_function(ctx: typer.Context, incomplete: str) -> list[tuple[str, str]]:
    """(name, what it is) of the deployed functions starting with `incomplete`."""
    from veba.cli.client import Client

    params: dict[str, Any] = ctx.params or {}
    try:
        client = Client(
            params.get("gateway"),
            params.get("data_dir"),
            token=params.get("token"),
            tls_no_verify=bool(params.get("tls_no_verify")),
        )
        response = client.http.get("/system/functions", timeout=_TIMEOUT)
        if response.status_code != 200:
            return []
        return [
            (str(f["name"]), f"{f.get('lang', '')} {f.get('topic') or ''}".strip())
            for f in response.json()
            if str(f.get("name", "")).startswith(incomplete)
        ]
    except BaseException:  # typer.Exit from a bad --gateway too: no completions, no noise
        return []
