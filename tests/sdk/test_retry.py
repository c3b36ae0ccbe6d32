"""`retry`: backoff with jitter, bounded by attempts and by the delivery's deadline."""

from __future__ import annotations

import json
import time

import pytest

from veba.functions import worker
from veba.sdk import attempt, deadline, remaining, retry


class Flaky:
    def __init__(self, failures: int, exc: type[Exception] = ConnectionError) -> None:
        self.failures = failures
        self.exc = exc
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc(f"failure {self.calls}")
        return "done"


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the waits instead of sleeping (time moves on by the same amount)."""
    slept: list[float] = []
    now = [time.time()]
    monkeypatch.setattr(
        "veba.sdk.backoff.time.sleep", lambda s: (slept.append(s), now.__setitem__(0, now[0] + s))
    )
    monkeypatch.setattr("veba.sdk.backoff.time.time", lambda: now[0])
    return slept


def test_retries_until_it_works_with_exponential_jittered_waits(sleeps: list[float]) -> None:
    flaky = Flaky(3)
    assert retry(flaky, attempts=5, base=1.0, cap=3.0) == "done"
    assert flaky.calls == 4
    assert len(sleeps) == 3
    for wait, full in zip(sleeps, (1.0, 2.0, 3.0), strict=True):  # capped at 3
        assert full / 2 <= wait <= full
    assert retry(Flaky(1), base=1.0, jitter=False) == "done" and sleeps[-1] == 1.0


def test_gives_up_after_attempts_and_on_other_errors(sleeps: list[float]) -> None:
    flaky = Flaky(10)
    with pytest.raises(ConnectionError, match="failure 3") as failed:
        retry(flaky, attempts=3)
    assert flaky.calls == 3
    assert "gave up after 3 attempt(s)" in "".join(failed.value.__notes__)
    other = Flaky(1, KeyError)
    with pytest.raises(KeyError):
        retry(other, on=ConnectionError)
    assert other.calls == 1  # not retried
    with pytest.raises(ValueError):
        retry(flaky, attempts=0)


def test_never_waits_past_the_deadline(sleeps: list[float]) -> None:
    flaky = Flaky(10)
    end = time.time() + 2.5
    with pytest.raises(ConnectionError) as failed:
        retry(flaky, attempts=10, base=1.0, jitter=False, deadline=end)
    # Waits of 1 then 2 would end at 3 s, past 2.5: it stops after the second try.
    assert flaky.calls == 2 and sleeps == [1.0]
    assert "before the delivery's deadline" in "".join(failed.value.__notes__)


def test_as_a_decorator(sleeps: list[float]) -> None:
    calls = []

    @retry(attempts=3, on=(ConnectionError, TimeoutError), base=0.1)
    def post(url: str, *, body: str) -> str:
        """Docs stay."""
        calls.append(url)
        if len(calls) < 3:
            raise TimeoutError
        return f"{url} {body}"

    assert post("http://x", body="b") == "http://x b"
    assert len(calls) == 3 and len(sleeps) == 2
    assert post.__doc__ == "Docs stay."


def test_the_workers_deadline_bounds_retry_inside_a_call() -> None:
    seen: dict = {}

    def handle(req: str) -> str:
        seen["deadline"], seen["remaining"], seen["attempt"] = deadline(), remaining(), attempt()
        flaky = Flaky(100)
        started = time.time()
        try:
            retry(flaky, attempts=100, base=0.05, cap=0.2)
        except ConnectionError:
            seen["ran"], seen["calls"] = time.time() - started, flaky.calls
        return "ok"

    assert (deadline(), remaining(), attempt()) == (None, None, 1)  # outside a call
    call = worker._make_call(handle, "python3")
    before = time.time()
    head, _, failure = worker.dispatch(
        call, {"headers": {"X-Veba-Attempt": "2"}, "timeout": 1.0}, json.dumps({}).encode()
    )
    assert failure is None and head["status"] == 200
    assert before + 0.9 < seen["deadline"] < time.time() + 1.0
    assert 0.5 < seen["remaining"] <= 1.0 and seen["attempt"] == 2
    assert 0.5 < seen["ran"] < 1.0 and 3 < seen["calls"] < 100  # stopped in time
    assert deadline() is None  # cleared after the call

    # An X-Veba-Deadline earlier than the timeout wins.
    soon = time.time() + 0.3
    worker.dispatch(call, {"headers": {"X-Veba-Deadline": str(soon)}, "timeout": 30}, b"")
    assert seen["deadline"] == pytest.approx(soon)
