"""What `veba serve` says about providers: a line per connect, drop and new
error, none while nothing changes; per-event lines only for verbose listeners."""

from __future__ import annotations

from typing import Any

from veba.activity import Activity, Happening, provider_changes


def status(**fields: Any) -> dict[str, Any]:
    return {"name": "vcenter:vc01.lab:443", "type": "vcenter", "connected": False,
            "last_error": None, **fields}  # fmt: skip


def test_a_provider_connecting_dropping_and_retrying_is_told_once_each() -> None:
    starting = status(state="connecting")
    assert provider_changes(None, starting) == []
    refused = status(last_error="vCenter: ConnectionRefusedError: [Errno 111]")
    assert provider_changes(starting, refused) == [
        ("warning", "vcenter:vc01.lab:443: cannot connect: vCenter: ConnectionRefusedError:"
                    " [Errno 111]; retrying with backoff"),
    ]  # fmt: skip
    assert provider_changes(refused, refused) == []  # the same failure again: quiet
    up = status(connected=True, api_version="8.0.2.0", last_key=1234)
    assert provider_changes(refused, up) == [
        ("info", "vcenter:vc01.lab:443: connected (API 8.0.2.0, from key 1234)")
    ]
    assert provider_changes(up, up) == []
    down = status(last_error="vCenter: NotAuthenticated")
    assert provider_changes(up, down) == [
        ("warning", "vcenter:vc01.lab:443: disconnected: vCenter: NotAuthenticated;"
                    " retrying with backoff"),
    ]  # fmt: skip


def test_the_simulator_says_its_rate() -> None:
    running = {"name": "simulator", "type": "simulator", "connected": True, "rate": 2.0}
    assert provider_changes(None, running) == [
        ("info", "simulator: connected (simulating 2 event(s)/s)")
    ]


def test_per_event_lines_reach_verbose_listeners_only() -> None:
    activity = Activity()
    quiet: list[Happening] = []
    verbose: list[Happening] = []
    activity.subscribe(quiet.append)
    assert not activity.verbose
    activity.subscribe(verbose.append, verbose=True)
    assert activity.verbose
    activity.report("event", "webhook: VmPoweredOnEvent 1 -> echo")
    activity.report("info", "deployed echo")
    assert [h.text for h in quiet] == ["deployed echo"]
    assert [h.text for h in verbose] == ["webhook: VmPoweredOnEvent 1 -> echo", "deployed echo"]


def test_a_failing_listener_stops_nothing() -> None:
    activity = Activity()
    heard: list[str] = []

    def broken(_: Happening) -> None:
        raise OSError("stderr is gone")

    activity.subscribe(broken)
    activity.subscribe(lambda h: heard.append(h.text))
    activity.report("error", "echo: dead letter 1")
    assert heard == ["echo: dead letter 1"]
