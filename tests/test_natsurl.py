"""`--event-log nats://...`: servers and NAME out of one string; the connect helper."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.support import free_port
from veba.natsurl import (
    NatsConnectError,
    NatsLocation,
    NatsURLError,
    connect,
    parse_nats_url,
)


def test_one_server_and_the_default_name() -> None:
    assert parse_nats_url("nats://127.0.0.1:4222") == NatsLocation(
        servers=("nats://127.0.0.1:4222",), name="veba"
    )


def test_several_servers_and_a_name() -> None:
    location = parse_nats_url("nats://n1:4222,n2:4223,10.0.0.3:4224/prod-1")
    assert location.servers == ("nats://n1:4222", "nats://n2:4223", "nats://10.0.0.3:4224")
    assert location.name == "prod-1"


def test_a_host_without_a_port_gets_4222() -> None:
    assert parse_nats_url("nats://n1,n2:5000").servers == ("nats://n1:4222", "nats://n2:5000")


def test_ipv6_hosts_in_brackets() -> None:
    assert parse_nats_url("nats://[::1]:4300/x").servers == ("nats://[::1]:4300",)


def test_credentials_go_to_every_server_and_stay_out_of_its_text() -> None:
    location = parse_nats_url("nats://veba:s%2Fcret@n1:4222,n2:4222/v")
    assert location.servers == ("nats://veba:s%2Fcret@n1:4222", "nats://veba:s%2Fcret@n2:4222")
    assert str(location) == "nats://n1:4222,n2:4222/v"


def test_tls_scheme_and_case_are_kept_for_the_client() -> None:
    location = parse_nats_url("  TLS://n1:4443  ")
    assert location.servers == ("tls://n1:4443",)
    assert location.scheme == "tls"


def test_prefixed_names_a_bucket_of_this_cluster() -> None:
    assert parse_nats_url("nats://n1/blue").prefixed("leases") == "blue_leases"
    with pytest.raises(ValueError):
        parse_nats_url("nats://n1/blue").prefixed("a.b")


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("sqlite", "expected nats://HOST:4222"),
        ("http://n1:4222", "expected nats://HOST:4222"),
        ("nats:/n1:4222", "expected nats://HOST:4222"),
        ("nats://", "no server"),
        ("nats:///veba", "no server"),
        ("nats://n1:4222/", "nothing after '/'"),
        ("nats://n1:4222/a.b", "NAME 'a.b' may only have letters"),
        ("nats://n1:4222/a b", "NAME 'a b' may only have letters"),
        ("nats://n1:4222/a/b", "NAME 'a/b' may only have letters"),
        ("nats://n1:4222/" + "x" * 65, "at most 64"),
        ("nats://n1:4222/KV>", "may only have letters"),
        ("nats://n1:4222,,n2:4222", "empty server"),
        ("nats://n1:4222,", "empty server"),
        ("nats://n1:http", "the port must be a number"),
        ("nats://n1:0", "the port must be a number"),
        ("nats://n1:65536", "the port must be a number"),
        ("nats://n1:", "the port must be a number"),
        ("nats://n1:4222:5", "is not HOST:PORT"),
        ("nats://[::1:4222", "is not HOST:PORT"),
        ("nats://n1:4222?x=1", "no query"),
        ("nats://@n1:4222", "empty credentials"),
        ("nats://:pw@n1:4222", "a user is needed"),
        ("nats://n1:4222,n1:4222", "named twice"),
    ],
)
def test_bad_values_are_refused_saying_why(value: str, says: str) -> None:
    with pytest.raises(NatsURLError) as caught:
        parse_nats_url(value)
    assert says in str(caught.value)
    assert repr(value.strip()) in str(caught.value) or repr(value) in str(caught.value)


async def test_connect_gives_a_client_and_jetstream_on_the_running_server() -> None:
    client, js = await connect(parse_nats_url("nats://127.0.0.1:4222"))
    try:
        assert client.is_connected
        bucket = f"t{uuid.uuid4().hex[:12]}"
        kv = await js.create_key_value(bucket=bucket)
        try:
            await kv.put("k", b"v")
            assert (await kv.get("k")).value == b"v"
        finally:
            await js.delete_key_value(bucket)
        assert client.options["max_reconnect_attempts"] == -1  # for ever
        assert client.options["reconnect_time_wait"] <= 5  # bounded
    finally:
        await client.close()


async def test_connect_gives_up_on_the_first_connect_with_a_clear_error() -> None:
    port = free_port()  # nothing listens there
    started = time.monotonic()
    with pytest.raises(NatsConnectError, match=f"127.0.0.1:{port}/veba: no server answered"):
        await connect(parse_nats_url(f"nats://127.0.0.1:{port}"), first_connect_timeout=1.5)
    assert time.monotonic() - started < 10
