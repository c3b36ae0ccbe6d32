"""Keeping a function's secret values out of everything it outputs.

```python
scrub = Scrubber([b"s3cr3t-pa\\ss\n", vcconfig_toml])
scrub.text('login failed: {"password": "s3cr3t-pa\\\\ss"}')   # '... {"password": "[REDACTED]"}'
scrub.data(b"Authorization: Basic dXNlcjpzM2NyM3QtcGFcc3M=")   # b'...Basic [REDACTED]'
```

A value leaks in more shapes than its own: ``print(dict)`` and ``%r`` show its
``repr`` (a ``\\`` doubled, quotes escaped), ``json.dumps`` its JSON escape, an
``Authorization: Basic`` header or a ``data_base64`` its base64 (at any offset
inside a longer base64 text), a URL its percent-encoding. `Scrubber` replaces
every one of those, and ``repr``/JSON escapes of escapes (JSON of a log line
that holds a dict's repr), by ``[REDACTED]``, longest match first.

What counts as a value: each secret whole (surrounding whitespace stripped),
each line of a multi-line one (a PEM key), and each string inside a TOML or JSON
one (``vcconfig.toml``'s password), except where its key names something public:
a server, host, port, user name, e-mail address, subject, name, urn, action,
type, id (``server``, ``SMTP_USERNAME``, ``eventAction``), unless the key also
says credential (``pass``, ``secret``, ``token``, ``key``, ``auth``, ``webhook``...).
Those strings are addresses and accounts that show up in ordinary output (an
event's ``source`` is the vCenter's URL, its ``UserName`` may be the service
account), and scrubbing them would corrupt what functions answer; any other
string of a structured secret is scrubbed, whatever its key. Values shorter
than `MIN_LENGTH` bytes are left alone: replacing every ``on`` or ``42`` would
wreck the output and hide nothing, since so short a value cannot be kept secret
anyway.

Standard library only: it travels with ``veba.sdk`` into function venvs.
"""

from __future__ import annotations

import base64
import json
import re
import tomllib
import urllib.parse
from collections.abc import Iterable
from typing import Any

__all__ = ["MIN_LENGTH", "REDACTED", "Scrubber"]

REDACTED = "[REDACTED]"
MIN_LENGTH = 4
# A base64 fragment shorter than this could turn up anywhere by chance.
_MIN_BASE64 = 8
# Strings of a TOML/JSON secret that are configuration words, not secrets.
_WORDS = frozenset({"true", "false", "null", "none", "yes", "no", "on", "off"})
# The last word of a key whose string is public (see the module's docstring)...
_PUBLIC = frozenset(
    {
        *("server", "host", "hostname", "fqdn", "address", "endpoint", "domain", "port"),
        *("user", "username", "email", "to", "from", "cc", "subject", "name", "names"),
        *("urn", "action", "type", "region", "id", "insecure", "sslverify"),
    }
)
# ... unless the key holds one of these anywhere.
_CREDENTIAL = ("pass", "pwd", "secret", "token", "key", "auth", "cred", "private", "webhook")
_KEY_WORDS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")


class Scrubber:
    """Replaces the given secret values, in every shape listed above, by ``[REDACTED]``.

    Built once per function (per pool); `text` and `data` are safe to call from
    any thread. An empty scrubber (``not scrubber``) returns its input as is.
    """

    __slots__ = ("_data", "_text")

    def __init__(self, secrets: Iterable[bytes | str] = ()) -> None:
        texts: set[str] = set()
        datas: set[bytes] = set()
        for secret in secrets:
            raw = secret.encode() if isinstance(secret, str) else bytes(secret)
            for value, encodings in _values(raw):
                forms = _forms(value, encodings=encodings)
                texts.update(f for f in forms if "\ufffd" not in f)
                datas.update(f.encode() for f in forms)
            stripped = raw.strip()
            if len(stripped) >= MIN_LENGTH:  # binary values too, byte for byte
                datas.add(stripped)
                datas.update(_base64_forms(stripped))
        self._text = _pattern(texts)
        self._data = _pattern(datas)

    def __bool__(self) -> bool:
        return self._text is not None or self._data is not None

    def text(self, text: str) -> str:
        """``text`` with every secret value replaced."""
        if self._text is None or not text:
            return text
        return self._text.sub(REDACTED, text)

    def data(self, data: bytes) -> bytes:
        """``data`` (a response body, say) with every secret value replaced, byte-wise."""
        if self._data is None or not data:
            return data
        return self._data.sub(REDACTED.encode(), data)


# --- which values one secret holds ---------------------------------------------------


def _values(raw: bytes) -> set[tuple[str, bool]]:
    """(value, encodings) pairs: the secret itself and the strings in it, whose
    base64 and URL encodings are looked for too, and the lines of a multi-line
    one (a PEM key's lines are base64 already)."""
    text = raw.decode("utf-8", "replace").strip()
    found = {(text, True)}
    structured = _structured(raw)
    found.update((s, True) for s in structured)
    if not structured and "\n" in text:
        found.update((line.strip(), False) for line in text.splitlines())
    return {(v, w) for v, w in found if len(v.encode()) >= MIN_LENGTH}


def _structured(raw: bytes) -> set[str]:
    """Every string in a TOML or JSON secret (none for other secrets)."""
    text = raw.decode("utf-8", "replace").strip()
    for parse in (tomllib.loads, json.loads):
        try:
            document: Any = parse(text)
        except ValueError:  # TOMLDecodeError and JSONDecodeError are ValueErrors
            continue
        if not isinstance(document, dict | list):
            return set()
        found: set[str] = set()
        stack: list[tuple[Any, str]] = [(document, "")]
        while stack:
            node, key = stack.pop()
            if isinstance(node, str):
                if node.strip().lower() not in _WORDS and not _public(key):
                    found.add(node.strip())
            elif isinstance(node, dict):
                stack.extend((value, f"{key} {name}") for name, value in node.items())
            elif isinstance(node, list):
                stack.extend((item, key) for item in node)
        return found
    return set()


def _public(key: str) -> bool:
    """Whether a string under ``key`` (its path, keys joined by spaces) is public."""
    words = [word.lower() for word in _KEY_WORDS.findall(key)]
    lowered = key.lower()
    return bool(words) and words[-1] in _PUBLIC and not any(c in lowered for c in _CREDENTIAL)


# --- the shapes one value takes in output ------------------------------------------


def _forms(value: str, *, encodings: bool) -> set[str]:
    """``value``, its escapes and escapes of those, and (for whole values and the
    strings of structured ones) its base64 and URL encodings."""
    forms = {value}
    for _ in range(2):  # JSON of a repr, repr of a JSON text...
        forms |= {escaped for form in forms for escaped in _escapes(form)}
    if encodings:
        forms |= _base64_text(value.encode())
        forms |= {
            urllib.parse.quote(value, safe=""),
            urllib.parse.quote(value),
            urllib.parse.quote_plus(value, safe=""),
        }
    return {f for f in forms if len(f) >= MIN_LENGTH}


def _escapes(value: str) -> set[str]:
    """How ``value`` reads inside a JSON string and inside a Python repr."""
    out = {json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
    # repr escapes a quote only when the whole string holds both kinds: so both
    # spellings of ``'`` can occur, and ``"`` never is escaped.
    out.add(repr(value + "'\"")[1:-4])  # ' escaped as \'
    if '"' not in value:
        out.add(repr(value + "'")[1:-2])  # ' as it is
    raw = value.encode()
    out.add(repr(raw + b"'\"")[2:-4])  # b'...' shows bytes beyond ASCII as \xNN
    if b'"' not in raw:
        out.add(repr(raw + b"'")[2:-2])
    return out


def _base64_text(raw: bytes) -> set[str]:
    return {form.decode("ascii") for form in _base64_forms(raw)}


def _base64_forms(raw: bytes) -> set[bytes]:
    """The base64 of ``raw`` (both alphabets) whole, and the part that is the same
    wherever ``raw`` sits inside a longer base64 text (``user:password``)."""
    out: set[bytes] = set()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        out.add(encode(raw))
        for shift in range(3):
            encoded = encode(b"\0" * shift + raw)
            # Only the characters made of ``raw``'s bits alone, whatever comes
            # before and after it.
            core = encoded[-(-8 * shift // 6) : 8 * (shift + len(raw)) // 6]
            if len(core) >= _MIN_BASE64:
                out.add(core)
    return out


def _pattern(forms: set[Any]) -> re.Pattern[Any] | None:
    """One regex of every form (all str or all bytes), longest first, so a whole
    value wins over its lines."""
    if not forms:
        return None
    ordered = sorted(forms, key=lambda f: (-len(f), f))
    bar = "|" if isinstance(ordered[0], str) else b"|"
    return re.compile(bar.join(re.escape(form) for form in ordered))
