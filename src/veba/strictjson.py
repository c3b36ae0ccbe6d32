"""JSON from clients, read so that what is accepted is kept exactly.

Python's `json` reads `NaN`, `Infinity`, integers of any size and lone UTF-16
surrogates (`"\\ud800"`); orjson, the fast reader, refuses `NaN`, `Infinity` and
surrogates but reads an integer beyond 64 bits as a float. Either way something
accepted would not be what was sent once stored: `NaN` written back as `null`,
a 30-digit id rounded to `1.2345678901234568e+29`, a surrogate that UTF-8 cannot
encode. So every body that comes from outside is read here, and refused with a
`JSONRefused` naming the value's path (`body.data.Vm.Key`) when it holds:

* `NaN`, `Infinity`, `-Infinity`, or a number too large for a double;
* an integer outside -2**63 .. 2**64-1 (what orjson, and the log, carry
  exactly): send larger numbers as strings;
* a lone surrogate, in a string or a key;
* more than 128 nested objects and arrays: far more than any vSphere event
  has (about 6), and few enough for everything that writes it back out
  (orjson stops at 254, pydantic near 250, Python's recursion sooner);
* bytes that are not UTF-8, or text that is not JSON.

orjson reads first; only a body it refuses, one with a run of 19 digits (where
an integer orjson would round may hide) or one nested too deep is read again by
`json` and walked to find what and where. The depth is measured only when the
body has more brackets than the limit (a batch, not one vSphere event), level by
level over the containers orjson made: about 5 µs an event of a batch.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

__all__ = ["MAX_DEPTH", "JSONRefused", "NotJSON", "check", "loads"]

MAX_DEPTH = 128  # nested objects and arrays
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
# An integer literal orjson might round has at least 19 digits (2**63 has 19).
# Found by mapping digits to 9 and the rest to a space, then a substring search:
# ten times faster than re's [0-9]{19} on an event batch.
_DIGITS_ONLY = bytes(57 if 48 <= b <= 57 else 32 for b in range(256))
_LONG_DIGITS = b"9" * 19


class JSONRefused(ValueError):
    """JSON that would not be kept exactly as sent; the message names where."""


class NotJSON(JSONRefused):
    """Not JSON at all: bad syntax, or bytes that are not UTF-8."""


def loads(body: bytes | str, where: str = "body") -> Any:
    """The JSON value of `body`, or `JSONRefused` saying what and where."""
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):
            raise JSONRefused(f"{where}: nested deeper than {MAX_DEPTH} levels") from None
        return _slow(raw, where, str(exc))
    if _LONG_DIGITS in raw.translate(_DIGITS_ONLY) or _too_deep(raw, value):
        return _slow(raw, where, None)
    return value


def _too_deep(raw: bytes, value: Any) -> bool:
    """Whether `value` (read from `raw`) nests more than MAX_DEPTH objects and arrays."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return False  # too few brackets to nest that deep
    level = [value] if type(value) is dict or type(value) is list else []
    for _ in range(MAX_DEPTH):
        inner = []
        for container in level:
            for item in container.values() if type(container) is dict else container:
                if type(item) is dict or type(item) is list:
                    inner.append(item)
        if not inner:
            return False
        level = inner
    return True


def _slow(raw: bytes, where: str, orjson_error: str | None) -> Any:
    """Read with `json` (which takes what orjson refuses) and find the problem."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotJSON(f"{where}: not valid JSON: not UTF-8 text (byte {exc.start})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise NotJSON(f"{where}: not valid JSON: {exc}") from None
    except RecursionError:
        raise JSONRefused(f"{where}: nested deeper than {MAX_DEPTH} levels") from None
    check(value, where)
    if orjson_error is not None:  # refused for a reason the walk does not know
        raise NotJSON(f"{where}: not valid JSON: {orjson_error}")
    return value


def check(value: Any, where: str = "body") -> None:
    """Refuse, naming the path, a parsed value that JSON would not carry exactly
    (for values parsed elsewhere, such as a CloudEvent's binary-mode data)."""
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]  # depth: containers around it
    while stack:
        item, path, depth = stack.pop()
        if depth >= MAX_DEPTH and isinstance(item, dict | list):
            raise JSONRefused(f"{_short(path)}: nested deeper than {MAX_DEPTH} levels")
        if isinstance(item, str):
            _text(item, path)
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not _INT_MIN <= item <= _INT_MAX:
                digits = str(item)
                shown = digits if len(digits) <= 40 else f"{digits[:20]}...({len(digits)} digits)"
                raise JSONRefused(
                    f"{_short(path)}: the integer {shown} is beyond 64 bits and would not be kept"
                    " exactly; send it as a string"
                )
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise JSONRefused(
                    f"{_short(path)}: {item} is not a JSON number (NaN and Infinity are refused,"
                    " not stored as null)"
                )
        elif isinstance(item, dict):
            for key, child in item.items():
                _text(key, f"{path} (a key)")
                stack.append((child, f"{path}.{key}", depth + 1))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))


def _text(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        raise JSONRefused(
            f"{_short(path)}: a lone surrogate (\\u{ord(bad):04x}) is not Unicode text"
        ) from None


def _short(path: str) -> str:
    """A path fit for a message: its start and its end when it is very long."""
    return path if len(path) <= 160 else f"{path[:100]}...{path[-50:]}"
