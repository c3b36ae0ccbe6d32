"""A Knative function's `Procfile`: the `web` command, kept on the loopback interface.

VEBA's Knative functions were built with Cloud Native Buildpacks, which run the
Procfile's `web` process with `$PORT` set, as in::

    web: FLASK_ENV=development FLASK_APP=handler.py python3 -m flask run --host=0.0.0.0 --port=$PORT

In a container `0.0.0.0` is the pod's own network; here it would be every
interface of the machine, so a wildcard host is rewritten to 127.0.0.1
(`loopback_only`); the process supervisor also checks the port after start.
"""

from __future__ import annotations

import re
from pathlib import Path

from veba.functions.stack import StackError

__all__ = ["PROCFILE", "loopback_only", "web_command"]

PROCFILE = "Procfile"
_LINE = re.compile(r"^(?P<name>[A-Za-z0-9_-]+)\s*:\s*(?P<command>.*)$")
_WILDCARD_V4 = re.compile(r"(?<![\w.])0\.0\.0\.0(?![\w.])")
# `[::]` or `::` as the value of a host/bind option (gunicorn `-b [::]:8000`, flask `--host=::`).
_WILDCARD_V6 = re.compile(
    r"(?P<flag>(?<![\w-])(?:--host|--bind|-h|-b)(?:=|\s+))(?:\[::\]|::)(?=[\s:'\"]|$)"
)


def loopback_only(command: str) -> str:
    """The command with any wildcard listen address replaced by 127.0.0.1."""
    command = _WILDCARD_V6.sub(lambda m: m.group("flag") + "127.0.0.1", command)
    return _WILDCARD_V4.sub("127.0.0.1", command)


def web_command(folder: Path) -> str:
    """The `web` command of ``folder/Procfile``, loopback only; StackError naming the file."""
    path = folder / PROCFILE
    file = str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise StackError(
            file,
            "(file)",
            f"missing; a Knative function's folder needs a {PROCFILE} with a line like"
            " 'web: python3 -m flask run --port=$PORT'",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StackError(file, "(file)", f"cannot read: {exc}") from None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise StackError(file, f"line {number}", f"expected 'NAME: COMMAND', got {line!r}")
        if match.group("name") == "web":
            command = match.group("command").strip()
            if not command:
                raise StackError(file, "web", "the web line has no command")
            return loopback_only(command)
    raise StackError(
        file,
        "web",
        "missing; veba runs the Procfile's web process, e.g."
        " 'web: FLASK_APP=handler.py python3 -m flask run --port=$PORT'",
    )
