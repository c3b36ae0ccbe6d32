"""Where `veba serve` listens: every address as written, one listener per address;
a webhook sharing --listen's port; clashes refused naming both settings."""

from __future__ import annotations

import socket

import pytest

from tests.support import free_port
from veba.listeners import ListenerPlan, ListenError, plan_listeners


def bound(plan: ListenerPlan) -> dict[str, str]:
    return {x.purpose: str(x.address) for x in plan.listeners}


def test_a_webhook_on_its_own_port_gets_its_own_listener_as_written() -> None:
    plan = plan_listeners("127.0.0.1:8080", webhook="0.0.0.0:9000", metrics="0.0.0.0:8082")
    assert bound(plan) == {
        "api": "127.0.0.1:8080",
        "webhook": "0.0.0.0:9000",
        "metrics": "0.0.0.0:8082",
    }
    assert plan.api_hosts == frozenset() and plan.notes == ()


def test_vebas_default_webhook_shares_the_port_with_the_api_on_the_wider_address() -> None:
    plan = plan_listeners("127.0.0.1:8080", webhook="0.0.0.0:8080", metrics=None)
    assert bound(plan) == {"api": "0.0.0.0:8080"}
    assert plan.api_hosts == frozenset({"127.0.0.1"})  # the API no further than --listen
    (note,) = plan.notes
    assert "one listener on 0.0.0.0:8080" in note
    assert "eventProvider.webhook.bindAddress 0.0.0.0:8080" in note
    assert "--listen 127.0.0.1:8080" in note
    assert "the API only on 127.0.0.1" in note


def test_localhost_is_its_loopback_address() -> None:
    plan = plan_listeners("localhost:8080", webhook="0.0.0.0:8080", metrics=None)
    assert plan.api_hosts == frozenset({"127.0.0.1"})


def test_a_webhook_at_the_apis_address_is_served_by_the_api() -> None:
    plan = plan_listeners("0.0.0.0:8080", webhook="0.0.0.0:8080", metrics=None)
    assert bound(plan) == {"api": "0.0.0.0:8080"} and plan.notes == ()
    wider = plan_listeners("0.0.0.0:8080", webhook="127.0.0.1:8080", metrics=None)
    assert bound(wider) == {"api": "0.0.0.0:8080"} and wider.api_hosts == frozenset()
    assert "served by the API's listener on 0.0.0.0:8080" in wider.notes[0]


def test_two_specific_addresses_on_one_port_are_two_listeners() -> None:
    plan = plan_listeners("127.0.0.1:8080", webhook="127.0.0.2:8080", metrics=None)
    assert bound(plan) == {"api": "127.0.0.1:8080", "webhook": "127.0.0.2:8080"}


@pytest.mark.parametrize(
    ("listen", "webhook", "metrics", "words"),
    [
        ("127.0.0.1:8080", None, "0.0.0.0:8080",
         ["metricsProvider.default.bindAddress 0.0.0.0:8080", "--listen 127.0.0.1:8080",
          "port 8080"]),
        ("127.0.0.1:8080", "0.0.0.0:8082", "0.0.0.0:8082",
         ["eventProvider.webhook.bindAddress 0.0.0.0:8082",
          "metricsProvider.default.bindAddress 0.0.0.0:8082"]),
        ("127.0.0.1:8080", "0.0.0.0:8080", "127.0.0.1:8080",
         ["metricsProvider.default.bindAddress", "--listen and eventProvider.webhook"]),
        ("[::]:8080", "0.0.0.0:8080", None, ["different wildcards", "give --listen 0.0.0.0:8080"]),
    ],
)  # fmt: skip
def test_settings_that_cannot_all_listen_are_refused_naming_both(
    listen: str, webhook: str | None, metrics: str | None, words: list[str]
) -> None:
    with pytest.raises(ListenError) as caught:
        plan_listeners(listen, webhook=webhook, metrics=metrics)
    for word in words:
        assert word in str(caught.value)


def test_bind_holds_every_address_as_written_or_none() -> None:
    api, hook, metrics = free_port(), free_port(), free_port()
    plan = plan_listeners(f"127.0.0.1:{api}", webhook=f"0.0.0.0:{hook}", metrics=None)
    sockets = plan.bind()
    try:
        assert {k: s.getsockname() for k, s in sockets.items()} == {
            "api": ("127.0.0.1", api),
            "webhook": ("0.0.0.0", hook),
        }
    finally:
        for sock in sockets.values():
            sock.close()

    # A port someone else holds: refused with the setting, and nothing left bound.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", metrics))
        taken.listen()
        plan = plan_listeners(f"127.0.0.1:{api}", webhook=None, metrics=f"0.0.0.0:{metrics}")
        with pytest.raises(ListenError) as caught:
            plan.bind()
        assert str(caught.value) == (
            f"cannot listen on 0.0.0.0:{metrics} (metricsProvider.default.bindAddress):"
            " address already in use"
        )
    with socket.socket() as again:  # the API's socket was closed with the refusal
        again.bind(("127.0.0.1", api))
