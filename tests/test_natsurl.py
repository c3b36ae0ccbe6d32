"""`--event-log nats://...`: servers and NAME out of one string; the connect helper."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.natscluster import NATS_SERVER
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


def test_credentials_are_kept_apart_decoded_and_out_of_its_text() -> None:
    location = parse_nats_url("nats://veba:s%2Fc:ret@n1:4222,n2:4222/v")
    assert location.servers == ("nats://n1:4222", "nats://n2:4222")
    assert (location.user, location.password) == ("veba", "s/c:ret")
    assert str(location) == "nats://n1:4222,n2:4222/v"
    assert "ret" not in repr(location)


def test_a_user_alone_is_a_token() -> None:
    location = parse_nats_url("nats://s3cret@n1")
    assert (location.user, location.password) == ("s3cret", None)


def test_errors_never_show_the_password() -> None:
    with pytest.raises(NatsURLError) as caught:
        parse_nats_url("nats://veba:hunter2@n1:http")
    assert "hunter2" not in str(caught.value)
    assert "nats://***@n1:http" in str(caught.value)


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
        ("nats://n1:4222/" + "x" * 33, "at most 32"),
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
    shown = value.strip().replace("nats://:pw@", "nats://***@").replace("nats://@", "nats://***@")
    assert repr(shown) in str(caught.value)


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
    with pytest.raises(
        NatsConnectError, match=f"127.0.0.1:{port}/veba: could not connect within 1.5 s"
    ):
        await connect(parse_nats_url(f"nats://127.0.0.1:{port}"), first_connect_timeout=1.5)
    assert time.monotonic() - started < 10


async def test_connect_passes_credentials_to_a_server_that_wants_them(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "auth.conf").write_text(
        f'listen: 127.0.0.1:{port}\nauthorization {{ user: veba, password: "s/c:ret" }}\n'
    )
    server = subprocess.Popen(
        [NATS_SERVER, "-c", str(tmp_path / "auth.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        location = parse_nats_url(f"nats://veba:s%2Fc:ret@127.0.0.1:{port}")
        client, _ = await connect(location, first_connect_timeout=20)
        assert client.is_connected
        await client.close()
        wrong = parse_nats_url(f"nats://veba:nope@127.0.0.1:{port}")
        with pytest.raises(NatsConnectError, match="Authorization Violation"):
            await connect(wrong, first_connect_timeout=3)
    finally:
        server.terminate()
        server.wait(30)
