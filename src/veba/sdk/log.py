"""`get_logger`: structured log lines on stderr (the function's log), secrets redacted.

```python
log = get_logger()                         # at import: binds each line to the call's event
log.info("tagged", vm="web-01", tag="prod")
# {"time": "...", "level": "info", "msg": "tagged", "function": "tagger",
#  "event": "1f0c...", "subject": "VmPoweredOnEvent", "vm": "web-01", "tag": "prod"}
```

``VEBA_LOG_FORMAT=kv`` writes ``key=value`` lines instead; ``VEBA_LOG_LEVEL``
sets the level (``info``). The value of every secret in the function's secrets
folder (and, for TOML/JSON secrets, each string in it), also as ``repr`` and
JSON show it, base64- or URL-encoded, is replaced by ``[REDACTED]`` (values
under 4 bytes excepted: see `veba.scrub`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from veba.scrub import Scrubber
from veba.sdk._call import attempt as _attempt
from veba.sdk._call import call_event_ids, current_call
from veba.sdk.secrets import secrets_dir

__all__ = ["Logger", "get_logger", "redact"]


# --- redaction ---------------------------------------------------------------------

_cache: dict[str, tuple[tuple[Any, ...], Scrubber]] = {}


def _scrubber(directory: Path | None) -> Scrubber:
    """What to redact for the secrets in ``directory``; rebuilt when a file changes."""
    if directory is None:
        return _NOTHING
    try:
        entries = sorted(
            (e.name, e.stat().st_mtime_ns, e.stat().st_size)
            for e in os.scandir(directory)
            if e.is_file()
        )
    except OSError:
        return _NOTHING
    key = str(directory)
    signature = tuple(entries)
    hit = _cache.get(key)
    if hit is not None and hit[0] == signature:
        return hit[1]
    values: list[bytes] = []
    for name, _, _ in entries:
        try:
            values.append((directory / name).read_bytes())
        except OSError:
            continue
    scrubber = Scrubber(values)
    _cache[key] = (signature, scrubber)
    return scrubber


_NOTHING = Scrubber()


def redact(text: str, directory: Path | None = None) -> str:
    """``text`` with the function's secret values (and their escaped and encoded
    forms, see `veba.scrub`) replaced by ``[REDACTED]``."""
    return _scrubber(directory if directory is not None else secrets_dir()).text(text)


# --- the logger ----------------------------------------------------------------------


class _Stderr(logging.Handler):
    """Writes to whatever ``sys.stderr`` is now (pytest swaps it per test)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = dict(getattr(record, "veba", {}))
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line: dict[str, Any] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
        }
        line.update(fields)
        if record.exc_info:
            line["exc"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        scrubber = _scrubber(secrets_dir())
        clean = _redact_all(line, scrubber) if scrubber else line
        if os.environ.get("VEBA_LOG_FORMAT", "json").lower() in ("kv", "logfmt", "text"):
            return " ".join(f"{k}={_kv(v)}" for k, v in clean.items() if v is not None)
        return json.dumps(clean, default=str, ensure_ascii=False)


def _redact_all(value: Any, scrubber: Scrubber) -> Any:
    # Field by field, before the line is serialised: the line stays valid JSON
    # whatever a secret holds, and each string's repr/JSON forms are found too.
    if isinstance(value, str):
        return scrubber.text(value)
    if isinstance(value, dict):
        return {k: _redact_all(v, scrubber) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_all(v, scrubber) for v in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    return _redact_all(str(value), scrubber)


def _kv(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text and not any(c in text for c in ' "=\n\t'):
        return text
    return json.dumps(text, ensure_ascii=False)


def _stdlib_logger() -> logging.Logger:
    logger = logging.getLogger("veba.function")
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(_Formatter())
        logger.addHandler(handler)
        logger.propagate = False
    level = os.environ.get("VEBA_LOG_LEVEL", "INFO").upper()
    logger.setLevel(level if level in logging.getLevelNamesMapping() else "INFO")
    return logger


class Logger:
    """Structured lines: ``log.info("message %s", arg, field=value, ...)``.

    Bound to the function's name and to an event: the one given to `get_logger`,
    else the one being handled when each line is written.
    """

    __slots__ = ("_event", "_fields", "_logger")

    def __init__(self, fields: dict[str, Any], event: tuple[str | None, str | None] | None):
        self._fields = fields
        self._event = event
        self._logger = _stdlib_logger()

    def bind(self, **fields: Any) -> Logger:
        """A logger that adds ``fields`` to every line."""
        return Logger({**self._fields, **fields}, self._event)

    def _log(self, level: int, msg: Any, args: tuple[Any, ...], fields: dict[str, Any]) -> None:
        if not self._logger.isEnabledFor(level):
            return
        exc_info = fields.pop("exc_info", None)
        if self._event is not None:
            event_id, subject = self._event
        else:
            event_id, subject = call_event_ids()
        bound: dict[str, Any] = {"function": os.environ.get("VEBA_FUNCTION_NAME")}
        if event_id is not None:
            bound["event"] = event_id
        if subject is not None:
            bound["subject"] = subject
        if current_call() is not None and _attempt() > 1:
            bound["attempt"] = _attempt()
        for key, value in {**self._fields, **fields}.items():
            bound[f"{key}_" if key in ("time", "level", "msg") else key] = value
        self._logger.log(level, msg, *args, exc_info=exc_info, extra={"veba": bound}, stacklevel=3)

    def debug(self, msg: Any, *args: Any, **fields: Any) -> None:
        self._log(logging.DEBUG, msg, args, fields)

    def info(self, msg: Any, *args: Any, **fields: Any) -> None:
        self._log(logging.INFO, msg, args, fields)

    def warning(self, msg: Any, *args: Any, **fields: Any) -> None:
        self._log(logging.WARNING, msg, args, fields)

    def error(self, msg: Any, *args: Any, **fields: Any) -> None:
        self._log(logging.ERROR, msg, args, fields)

    def critical(self, msg: Any, *args: Any, **fields: Any) -> None:
        self._log(logging.CRITICAL, msg, args, fields)

    def exception(self, msg: Any, *args: Any, **fields: Any) -> None:
        """An error line with the exception being handled."""
        fields.setdefault("exc_info", True)
        self._log(logging.ERROR, msg, args, fields)


def get_logger(event: Any = None, **fields: Any) -> Logger:
    """A structured logger on stderr, bound to ``event`` (an `Event` or anything
    `Event` accepts) or, without one, to whichever event is being handled."""
    bound: tuple[str | None, str | None] | None = None
    if event is not None:
        from veba.sdk.event import Event

        ev = event if isinstance(event, Event) else Event(event)
        bound = (ev.id, ev.subject)
    return Logger(dict(fields), bound)
