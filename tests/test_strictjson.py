"""JSON from clients is kept exactly as sent, or refused naming where."""

from __future__ import annotations

import pytest

from veba.strictjson import MAX_DEPTH, JSONRefused, check, loads


@pytest.mark.parametrize(
    ("body", "where", "why"),
    [
        (b'{"a": [1, {"b": NaN}]}', "body.a[1].b", "NaN and Infinity are refused"),
        (b'{"a": Infinity}', "body.a", "not a JSON number"),
        (b'{"a": -Infinity}', "body.a", "not a JSON number"),
        (b'{"a": 1e400}', "body.a", "not a JSON number"),  # a double's overflow
        (b'{"id": 123456789012345678901234567890}', "body.id", "beyond 64 bits"),
        (b'{"id": -9223372036854775809}', "body.id", "beyond 64 bits"),
        (b'{"id": 18446744073709551616}', "body.id", "beyond 64 bits"),
        (b'{"subject": "\\ud800"}', "body.subject", "lone surrogate (\\ud800)"),
        (b'{"\\udc00": 1}', "body (a key)", "lone surrogate"),
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "body[0][0]", "nested deeper than 128"),
        (b"[" * 2000 + b"]" * 2000, "body: ", "nested deeper than 128"),  # past orjson's 1024
        (b"\xff\xfe{}", "body", "not UTF-8"),
        (b"{not json", "body", "not valid JSON"),
        (b"", "body", "not valid JSON"),
    ],
)
def test_refused_naming_the_value(body: bytes, where: str, why: str) -> None:
    with pytest.raises(JSONRefused) as refused:
        loads(body)
    assert str(refused.value).startswith(where)
    assert why in str(refused.value)


@pytest.mark.parametrize(
    ("body", "value"),
    [
        (b'{"n": 9223372036854775807}', {"n": 2**63 - 1}),
        (b'{"n": 18446744073709551615}', {"n": 2**64 - 1}),  # what orjson carries
        (b'{"n": -9223372036854775808}', {"n": -(2**63)}),
        (
            b'{"n": 1.5e300, "s": "12345678901234567890123"}',
            {"n": 1.5e300, "s": "12345678901234567890123"},
        ),
        (b'{"t": "caf\\u00e9 \\ud83d\\ude00"}', {"t": "café 😀"}),  # a surrogate *pair* is text
    ],
)
def test_kept_exactly(body: bytes, value: object) -> None:
    got = loads(body)
    assert got == value
    if isinstance(value, dict) and isinstance(value.get("n"), int):
        assert type(got["n"]) is int  # never rounded to a float


def test_nesting_up_to_the_limit_is_kept() -> None:
    value = loads(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH)
    depth = 1
    while value:
        value, depth = value[0], depth + 1
    assert value == [] and depth == MAX_DEPTH


def test_check_walks_values_parsed_elsewhere() -> None:
    check({"a": [1, "x", None, True, 2.5]})
    with pytest.raises(JSONRefused, match=r"^data\.a\[0\]: nan"):
        check({"a": [float("nan")]}, "data")
    with pytest.raises(JSONRefused, match=r"^data\.big: the integer"):
        check({"big": 10**30}, "data")
