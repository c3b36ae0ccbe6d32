"""`Scrubber`: a function's secret values out of its output, in every shape they take."""

from __future__ import annotations

import base64
import json
import urllib.parse
from typing import Any

import pytest

from veba.functions.supervisor import Outcome
from veba.scrub import MIN_LENGTH, REDACTED, Scrubber

PLAIN = "vc-Sup3r-s3cret"
QUOTED = "pa\\ss\"wo'rd-\u00e9"  # a backslash, both quotes, a character beyond ASCII

VCCONFIG = b"""[vcenter]
server = "vcsa.lab.local"
user = "administrator@vsphere.local"
password = "VMware1!-toml"
insecure = "true"

[tag]
urn = "urn:vmomi:InventoryServiceTag:6a76:GLOBAL"
action = "attach"
note = "internal-only-note"
"""


@pytest.fixture
def scrub() -> Scrubber:
    return Scrubber([PLAIN.encode() + b"\n", QUOTED.encode(), VCCONFIG])


def shapes(value: str) -> dict[str, str]:
    """How careless code shows ``value``."""
    return {
        "raw": f"login failed: {value}",
        "json": json.dumps({"password": value}),
        "json ascii": json.dumps({"password": value}, ensure_ascii=True),
        "json unicode": json.dumps({"password": value}, ensure_ascii=False),
        "dict repr": repr({"password": value}),
        "repr with both quotes": repr(f'it\'s "{value}"'),
        "list repr": str([value]),
        "bytes repr": repr(value.encode()),
        "json of a repr": json.dumps(repr({"password": value})),
        "json of json": json.dumps(json.dumps({"password": value})),
        "base64": base64.b64encode(value.encode()).decode(),
        "urlsafe base64": base64.urlsafe_b64encode(value.encode()).decode(),
        "basic auth": base64.b64encode(f"svc:{value}".encode()).decode(),
        "base64, offset 2": base64.b64encode(f"xy{value}\n".encode()).decode(),
        "url": "https://vc/?pw=" + urllib.parse.quote(value, safe=""),
        "form": "pw=" + urllib.parse.quote_plus(value),
    }


@pytest.mark.parametrize("value", [PLAIN, QUOTED, "VMware1!-toml"])
def test_every_shape_of_a_value_is_scrubbed(scrub: Scrubber, value: str) -> None:
    for shape, text in shapes(value).items():
        clean = scrub.text(text)
        assert REDACTED in clean, shape
        for form in shapes(value).values():
            assert form not in clean, (shape, clean)
        assert value not in clean and value.encode() not in scrub.data(text.encode()), shape


def test_the_rest_of_the_text_stays(scrub: Scrubber) -> None:
    assert scrub.text(f"user bob, password {PLAIN}, done") == f"user bob, password {REDACTED}, done"
    assert scrub.text(repr({"pw": QUOTED, "n": 1})) == f"{{'pw': '{REDACTED}', 'n': 1}}"
    line = json.dumps({"msg": "x", "pw": QUOTED})
    assert json.loads(scrub.text(line)) == {"msg": "x", "pw": REDACTED}
    ordinary = '{"ok": true, "vm": "web-01", "insecure": "true"} on off 42'
    assert scrub.text(ordinary) == ordinary


def test_public_strings_of_a_structured_secret_stay(scrub: Scrubber) -> None:
    # Servers, users, urns, actions show up in events and answers (an event's
    # source is the vCenter URL): scrubbing them would corrupt what functions say.
    for public in ("vcsa.lab.local", "administrator@vsphere.local", "attach", "urn:vmomi"):
        assert scrub.text(f"x {public} y") == f"x {public} y"
    # Any other string is secret, whatever its key; credential keys always are.
    assert scrub.text("internal-only-note") == REDACTED
    keyed = Scrubber(
        [json.dumps({"routingKey": "R0uting-key", "API_KEY_ID": "id-123456"}).encode()]
    )
    assert keyed.text("R0uting-key id-123456") == f"{REDACTED} {REDACTED}"
    # And the whole document too.
    assert scrub.text(VCCONFIG.decode()).strip() == REDACTED


def test_lines_of_a_multi_line_secret_and_the_whole_first() -> None:
    pem = b"-----BEGIN KEY-----\nAAAAline-one\nBBBBline-two\n-----END KEY-----\n"
    scrub = Scrubber([pem])
    assert scrub.text(pem.decode()) == REDACTED + "\n"
    assert scrub.text("got BBBBline-two") == f"got {REDACTED}"


def test_binary_values_are_scrubbed_byte_for_byte() -> None:
    key = bytes(range(200, 256)) + b"\x00\x01"
    scrub = Scrubber([key])
    assert scrub.data(b"<" + key + b">") == b"<" + REDACTED.encode() + b">"
    encoded = base64.b64encode(key)
    assert scrub.data(b"data_base64=" + encoded) == b"data_base64=" + REDACTED.encode()


def test_values_too_short_to_scrub_are_left_alone() -> None:
    short = "x" * (MIN_LENGTH - 1)
    scrub = Scrubber([short.encode(), b"  \n"])
    assert not scrub
    assert scrub.text(f"{short} and more") == f"{short} and more"
    assert Scrubber(["x" * MIN_LENGTH]).text("x" * MIN_LENGTH) == REDACTED


def test_an_empty_scrubber_returns_its_input() -> None:
    scrub = Scrubber()
    text, data = "anything", b"anything"
    assert not scrub and scrub.text(text) is text and scrub.data(data) is data


def test_an_outcome_is_scrubbed_in_everything_the_function_wrote(scrub: Scrubber) -> None:
    outcome = Outcome(
        status=500,
        body=json.dumps({"pw": QUOTED}).encode(),
        headers={"X-Token": PLAIN},
        error=f"PermissionError: {PLAIN}",
        traceback=f"Traceback ...\nPermissionError: {{'pw': {QUOTED!r}}}",
        kind="error",
        started=1.0,
        duration=0.5,
    )
    clean = outcome.scrubbed(scrub)
    assert json.loads(clean.body) == {"pw": REDACTED}
    assert clean.headers == {"X-Token": REDACTED}
    assert clean.error == f"PermissionError: {REDACTED}"
    assert clean.traceback == f"Traceback ...\nPermissionError: {{'pw': '{REDACTED}'}}"
    assert (clean.status, clean.kind, clean.started, clean.duration) == (500, "error", 1.0, 0.5)


@pytest.mark.parametrize("field", ["body", "headers", "error", "traceback", None])
def test_an_outcome_with_a_secret_in_one_place_is_scrubbed_there_and_one_without_is_kept(
    scrub: Scrubber, field: str | None
) -> None:
    fields: dict[str, Any] = {
        "body": b'{"ok": true}',
        "headers": {"X-A": "a", "X-B": "b"},
        "error": "ValueError: no",
        "traceback": "Traceback ...",
    }
    if field == "headers":
        fields["headers"] = {"X-A": "a", "X-B": f"b {PLAIN}"}
    elif field == "body":
        fields["body"] = f"x {PLAIN}".encode()
    elif field is not None:
        fields[field] = f"{fields[field]} {PLAIN}"
    outcome = Outcome(status=500, kind="error", started=1.0, duration=0.5, **fields)

    clean = outcome.scrubbed(scrub)

    if field is None:
        assert clean is outcome
    else:
        assert PLAIN not in repr(clean) and REDACTED in repr(clean)
        others = {k for k in fields if k != field}
        assert {k: getattr(clean, k) for k in others} == {k: fields[k] for k in others}
