"""A function's delivery policy, named as Knative names it.

`retry`, `backoffPolicy` (exponential | linear), `backoffDelay` (ISO-8601),
`timeout`, `deadLetterSink` come from Knative's DeliverySpec; `backoffCap`,
`jitter`, `maxInflight`, `queueTimeout` and `orderingKey` are veba's own.
`maxInflight` bounds a function's calls in flight on every path (events, async
and sync calls); a sync call over it waits up to `queueTimeout` (default 0:
refused at once with 429, as OpenFaaS's watchdog does over its `max_inflight`).
"""

from __future__ import annotations

import difflib
import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["DeliveryPolicy", "PolicyError", "is_retryable", "parse_duration"]

_ISO = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)
_GO = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|h|m|s)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_RETRYABLE_STATUS = frozenset({404, 408, 409, 429})


class PolicyError(ValueError):
    """A delivery setting that cannot be used; the message names the field."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        # What is wrong, without the field path in front (for callers that add their own).
        self.reason = message.split(": ", 1)[-1]


def parse_duration(value: Any, where: str) -> float:
    """Seconds from an ISO-8601 duration (PT1.5S), a Go duration (1m30s) or a number."""
    if isinstance(value, bool):
        raise PolicyError(f"{where}: expected a duration, got {value!r}")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an integer beyond any float
            seconds = math.inf
    else:
        text = str(value).strip()
        iso = _ISO.match(text.upper())
        if iso and text.upper() not in ("P", "PT") and not text.upper().endswith("T"):
            parts = {k: float(v) for k, v in iso.groupdict(default="0").items()}
            seconds = parts["d"] * 86400 + parts["h"] * 3600 + parts["m"] * 60 + parts["s"]
        elif text and _GO.sub("", text) == "":
            seconds = sum(float(n) * _GO_UNITS[u] for n, u in _GO.findall(text))
        else:
            try:
                seconds = float(text)
            except ValueError:
                raise PolicyError(
                    f"{where}: {value!r} is not a duration (use ISO-8601 like PT10S, or 10s)"
                ) from None
    if seconds < 0:
        raise PolicyError(f"{where}: duration must not be negative")
    if not math.isfinite(seconds):  # nan, inf, 1e400: no wait can be that long
        raise PolicyError(f"{where}: {value!r} is not a finite duration")
    return seconds


def is_retryable(kind: str, status: int) -> bool:
    """Knative's rule: retry on transport trouble, 5xx, 404, 408, 409, 429."""
    if kind in ("timeout", "crash", "transport"):
        return True
    return status >= 500 or status in _RETRYABLE_STATUS or status == 0


_KNOWN = {
    "retry",
    "backoffPolicy",
    "backoffDelay",
    "backoffCap",
    "jitter",
    "timeout",
    "deadLetterSink",
    "maxInflight",
    "queueTimeout",
    "orderingKey",
}


@dataclass(frozen=True)
class DeliveryPolicy:
    retry: int = 5
    backoff_policy: Literal["exponential", "linear"] = "exponential"
    backoff_delay: float = 1.0
    backoff_cap: float = 300.0
    jitter: float = 0.2
    timeout: float = 30.0
    dead_letter_sink: str | None = None
    max_inflight: int = 16
    queue_timeout: float = 0.0  # how long a sync call over max_inflight waits; 0: 429 at once
    ordering_key: str | None = None

    @property
    def max_attempts(self) -> int:
        return self.retry + 1

    def backoff(self, failed_attempt: int, rng: random.Random | None = None) -> float:
        """Delay before the attempt after `failed_attempt` (1-based): `backoffDelay`
        doubled (or added) per failure, varied by ±`jitter`, never over `backoffCap`."""
        if self.backoff_policy == "exponential":
            # 2.0**1024 overflows; the cap is reached long before (retry may be huge).
            delay = self.backoff_delay * 2.0 ** min(failed_attempt - 1, 1000)
        else:
            delay = self.backoff_delay * failed_attempt
        delay = min(delay, self.backoff_cap)
        if self.jitter:
            delay *= 1 + (rng or random).uniform(-self.jitter, self.jitter)
        # The cap holds after jitter too: it is "the longest wait".
        return min(max(delay, 0.0), self.backoff_cap)

    def gives_up(self, attempt: int, kind: str, status: int) -> bool:
        """Whether a failed `attempt` (1-based) is the last: the failure is not one
        to retry (Knative's rule), or all `retry` + 1 attempts are spent."""
        return not is_retryable(kind, status) or attempt >= self.max_attempts

    @classmethod
    def parse(
        cls, raw: Mapping[str, Any] | None, *, where: str, default_timeout: float = 30.0
    ) -> DeliveryPolicy:
        raw = raw or {}
        if not isinstance(raw, Mapping):
            raise PolicyError(f"{where}: expected a mapping")
        unknown = sorted(set(raw) - _KNOWN)
        if unknown:
            close = difflib.get_close_matches(str(unknown[0]), sorted(_KNOWN), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise PolicyError(
                f"{where}.{unknown[0]}: unknown delivery setting{hint} (expected one of"
                f" {', '.join(sorted(_KNOWN))})"
            )
        kwargs: dict[str, Any] = {"timeout": default_timeout}
        if "retry" in raw:
            kwargs["retry"] = _int(raw["retry"], f"{where}.retry", minimum=0)
        if "backoffPolicy" in raw:
            policy = str(raw["backoffPolicy"]).lower()
            if policy not in ("exponential", "linear"):
                raise PolicyError(
                    f"{where}.backoffPolicy: {raw['backoffPolicy']!r} is not exponential or linear"
                )
            kwargs["backoff_policy"] = policy
        for key, attr in (
            ("backoffDelay", "backoff_delay"),
            ("backoffCap", "backoff_cap"),
            ("queueTimeout", "queue_timeout"),
        ):
            if key in raw:
                kwargs[attr] = parse_duration(raw[key], f"{where}.{key}")
        if "timeout" in raw:
            timeout = parse_duration(raw["timeout"], f"{where}.timeout")
            if timeout <= 0:
                raise PolicyError(f"{where}.timeout: must be greater than zero")
            kwargs["timeout"] = timeout
        if "jitter" in raw:
            jitter = raw["jitter"]
            if not isinstance(jitter, int | float) or not 0 <= jitter < 1:
                raise PolicyError(f"{where}.jitter: expected a fraction from 0 to below 1")
            kwargs["jitter"] = float(jitter)
        if "deadLetterSink" in raw:
            kwargs["dead_letter_sink"] = _sink(raw["deadLetterSink"], f"{where}.deadLetterSink")
        if "maxInflight" in raw:
            kwargs["max_inflight"] = _int(raw["maxInflight"], f"{where}.maxInflight", minimum=1)
        if "orderingKey" in raw:
            key = raw["orderingKey"]
            if not isinstance(key, str) or not key.strip():
                raise PolicyError(f"{where}.orderingKey: expected a path like data.Vm.Vm.Value")
            kwargs["ordering_key"] = key.strip()
        return cls(**kwargs)


def _int(value: Any, where: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PolicyError(f"{where}: expected a whole number >= {minimum}, got {value!r}")
    return value


def _sink(value: Any, where: str) -> str:
    # Knative writes `deadLetterSink: {uri: ...}`; a bare URL is accepted too.
    if isinstance(value, Mapping):
        value = value.get("uri")
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise PolicyError(f"{where}: expected an http(s) URL or {{uri: URL}}")
    return value
