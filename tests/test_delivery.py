"""A function's delivery settings, as written in its stack file (Knative names)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from veba.delivery import DeliveryPolicy, PolicyError, is_retryable, parse_duration

WHERE = "functions.vm-tagger.delivery"


def parse(raw: dict[str, Any] | None, **kwargs: Any) -> DeliveryPolicy:
    return DeliveryPolicy.parse(raw, where=WHERE, **kwargs)


# -- durations --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("PT10S", 10.0),
        ("PT0.5S", 0.5),
        ("PT1M", 60.0),
        ("PT1H30M", 5400.0),
        ("P1D", 86400.0),
        ("P1DT2H", 93600.0),
        ("pt2s", 2.0),
        ("10s", 10.0),
        ("1m30s", 90.0),
        ("250ms", 0.25),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        (" 2s ", 2.0),
        (10, 10.0),
        (2.5, 2.5),
        (0, 0.0),
        ("7", 7.0),
        ("0.25", 0.25),
    ],
)
def test_durations(text: Any, seconds: float) -> None:
    assert parse_duration(text, "x") == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "P", "PT", "10 seconds", "10x", "P1W", "1M", "soon", True, None]
)
def test_bad_durations_name_the_field(text: Any) -> None:
    with pytest.raises(PolicyError, match=r"^functions\.f\.delivery\.timeout: "):
        parse_duration(text, "functions.f.delivery.timeout")


@pytest.mark.parametrize("value", [-1, -0.5, "-5"])
def test_negative_durations_are_rejected(value: Any) -> None:
    with pytest.raises(PolicyError, match=r"^d\.backoffDelay: duration must not be negative"):
        parse_duration(value, "d.backoffDelay")


# -- the policy -------------------------------------------------------------------


def test_defaults() -> None:
    policy = parse(None)
    assert policy == DeliveryPolicy()
    assert policy.retry == 5
    assert policy.max_attempts == 6
    assert policy.backoff_policy == "exponential"
    assert policy.backoff_delay == 1.0
    assert policy.backoff_cap == 300.0
    assert policy.jitter == 0.2
    assert policy.timeout == 30.0
    assert policy.dead_letter_sink is None
    assert policy.max_inflight == 16
    assert policy.ordering_key is None
    assert parse({}) == policy


def test_default_timeout_comes_from_the_caller_unless_set() -> None:
    assert parse(None, default_timeout=120.0).timeout == 120.0
    assert parse({"timeout": "PT5S"}, default_timeout=120.0).timeout == 5.0


def test_every_setting() -> None:
    policy = parse(
        {
            "retry": 3,
            "backoffPolicy": "linear",
            "backoffDelay": "PT0.5S",
            "backoffCap": "1m",
            "jitter": 0,
            "timeout": "PT10S",
            "deadLetterSink": {"uri": "http://dlq.example:8080/dead"},
            "maxInflight": 4,
            "orderingKey": " data.Vm.Vm.Value ",
        }
    )
    assert policy == DeliveryPolicy(
        retry=3,
        backoff_policy="linear",
        backoff_delay=0.5,
        backoff_cap=60.0,
        jitter=0.0,
        timeout=10.0,
        dead_letter_sink="http://dlq.example:8080/dead",
        max_inflight=4,
        ordering_key="data.Vm.Vm.Value",
    )
    assert policy.max_attempts == 4


def test_dead_letter_sink_may_be_a_bare_url() -> None:
    assert (
        parse({"deadLetterSink": "https://dlq.example/x"}).dead_letter_sink
        == "https://dlq.example/x"
    )


def test_backoff_policy_is_case_insensitive() -> None:
    assert parse({"backoffPolicy": "Exponential"}).backoff_policy == "exponential"


@pytest.mark.parametrize(
    ("raw", "field", "message"),
    [
        ({"retry": -1}, "retry", "expected a whole number >= 0, got -1"),
        ({"retry": "3"}, "retry", "expected a whole number"),
        ({"retry": True}, "retry", "expected a whole number"),
        ({"retry": 2.5}, "retry", "expected a whole number"),
        ({"maxInflight": 0}, "maxInflight", "expected a whole number >= 1"),
        (
            {"backoffPolicy": "fibonacci"},
            "backoffPolicy",
            "'fibonacci' is not exponential or linear",
        ),
        ({"backoffDelay": "soon"}, "backoffDelay", "'soon' is not a duration"),
        ({"backoffCap": "-1s"}, "backoffCap", "is not a duration"),
        ({"timeout": "PT0S"}, "timeout", "must be greater than zero"),
        ({"timeout": "forever"}, "timeout", "is not a duration"),
        ({"jitter": 1}, "jitter", "expected a fraction"),
        ({"jitter": -0.1}, "jitter", "expected a fraction"),
        ({"jitter": "0.2"}, "jitter", "expected a fraction"),
        ({"deadLetterSink": "dlq.example"}, "deadLetterSink", "expected an http(s) URL"),
        ({"deadLetterSink": {"ref": {"name": "dlq"}}}, "deadLetterSink", "expected an http(s) URL"),
        ({"orderingKey": ""}, "orderingKey", "expected a path"),
        ({"orderingKey": 3}, "orderingKey", "expected a path"),
    ],
)
def test_bad_settings_name_the_field(raw: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse(raw)
    assert str(caught.value).startswith(f"{WHERE}.{field}: ")
    assert message in str(caught.value)


def test_unknown_settings_are_rejected_naming_the_key() -> None:
    with pytest.raises(PolicyError) as caught:
        parse({"retry": 2, "retries": 3})
    text = str(caught.value)
    assert text.startswith(f"{WHERE}.retries: unknown delivery setting")
    assert "backoffDelay" in text and "maxInflight" in text  # lists what is allowed


def test_delivery_must_be_a_mapping() -> None:
    with pytest.raises(PolicyError, match=rf"^{WHERE}: expected a mapping"):
        parse(["retry", 3])  # type: ignore[arg-type]


# -- backoff and retryability -----------------------------------------------------


def test_exponential_backoff_doubles_up_to_the_cap() -> None:
    policy = parse({"backoffDelay": "PT1S", "backoffCap": "PT10S", "jitter": 0})
    assert [policy.backoff(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_linear_backoff_grows_by_the_delay_up_to_the_cap() -> None:
    policy = parse(
        {"backoffPolicy": "linear", "backoffDelay": "PT2S", "backoffCap": "7s", "jitter": 0}
    )
    assert [policy.backoff(n) for n in range(1, 6)] == [2, 4, 6, 7, 7]


def test_jitter_stays_within_its_fraction() -> None:
    policy = parse({"backoffDelay": "PT1S", "jitter": 0.2})
    rng = random.Random(3)
    delays = [policy.backoff(3, rng) for _ in range(500)]
    assert all(3.2 <= d <= 4.8 for d in delays)
    assert max(delays) - min(delays) > 1.0  # it does spread retries out


@pytest.mark.parametrize(
    ("kind", "status", "retry"),
    [
        ("error", 400, False),
        ("error", 401, False),
        ("error", 403, False),
        ("error", 413, False),
        ("error", 422, False),
        ("error", 404, True),
        ("error", 408, True),
        ("error", 409, True),
        ("error", 429, True),
        ("error", 500, True),
        ("error", 503, True),
        ("error", 0, True),
        ("timeout", 0, True),
        ("crash", 0, True),
        ("transport", 0, True),
    ],
)
def test_knative_retry_rules(kind: str, status: int, retry: bool) -> None:
    assert is_retryable(kind, status) is retry
