"""Where a veba cluster keeps its state in NATS, and a connection to it.

`veba serve --event-log nats://HOST:4222[,HOST:PORT...][/NAME]` names the
servers of one NATS cluster (any of them will do; the client learns the rest)
and NAME, the prefix of every stream and key-value bucket this veba cluster
owns, so several veba clusters can share one NATS account. `parse_nats_url`
reads that string (it imports nothing from nats-py, so the CLI can check the
flag before anything starts); `connect` opens the client.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import unquote

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

__all__ = [
    "DEFAULT_NAME",
    "NatsConnectError",
    "NatsLocation",
    "NatsURLError",
    "connect",
    "parse_nats_url",
]

DEFAULT_NAME = "veba"
DEFAULT_PORT = 4222
# NAME prefixes stream names and KV buckets; buckets allow the fewest characters
# (nats-py's VALID_BUCKET_RE), and the server keeps a stream as a folder named
# after it. 32 at most, as the JetStream event log's `Names` takes.
_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
_SUFFIX = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SCHEMES = ("nats", "tls")
# host:port, [v6]:port, or a host alone (port 4222).
_SERVER = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s\[\]/:@,]+)(?::(?P<port>[^:]*))?")

_EXAMPLE = "nats://HOST:4222[,HOST:PORT...][/NAME]"
_CREDENTIALS = re.compile(r"://[^/]*@")


class NatsURLError(ValueError):
    """A `--event-log` value that is not a NATS location; the message says why."""


class NatsConnectError(ConnectionError):
    """No server of the location answered within the first connect's deadline."""


@dataclass(frozen=True)
class NatsLocation:
    """The servers of one NATS cluster and the NAME this veba cluster's
    streams and buckets start with."""

    servers: tuple[str, ...]  # nats://host:port each (tls:// for TLS)
    name: str = DEFAULT_NAME
    # From `user:password@` in the URL; a user alone is a token, as in NATS URLs.
    user: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        """As a person would write it, without credentials (fit for a log line)."""
        hosts = ",".join(server.partition("://")[2] for server in self.servers)
        return f"{self.scheme}://{hosts}/{self.name}"

    @property
    def scheme(self) -> str:
        return self.servers[0].partition("://")[0]

    def prefixed(self, what: str) -> str:
        """A stream or bucket name of this veba cluster: `NAME_what`."""
        name = f"{self.name}_{what}"
        if not _SUFFIX.fullmatch(what):
            raise ValueError(f"{name!r} is not a valid JetStream stream or bucket name")
        return name


def parse_nats_url(value: str) -> NatsLocation:
    """`nats://h1:4222,h2:4223/NAME` → its servers and NAME (default "veba").

    A host without a port gets 4222; `user:password@` before the first host is
    used for every server (percent-encoded if need be; a user alone is a token);
    `tls://` asks for TLS. Raises `NatsURLError`.
    """
    text = value.strip()
    value = _CREDENTIALS.sub("://***@", text)  # what messages show of it
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise NatsURLError(f"{value!r}: expected {_EXAMPLE}")
    scheme = scheme.lower()
    if "?" in rest or "#" in rest:
        raise NatsURLError(f"{value!r}: a NATS location takes no query or fragment")
    hosts, slash, name = rest.partition("/")
    if slash:
        name = unquote(name)
        if not name:
            raise NatsURLError(f"{value!r}: nothing after '/': give a NAME or drop the '/'")
        if not _NAME.fullmatch(name):
            raise NatsURLError(
                f"{value!r}: NAME {name!r} may only have letters, digits, '-' and '_'"
                " (at most 32), as NATS allows in stream and bucket names"
            )
    else:
        name = DEFAULT_NAME
    userinfo, at, hosts = hosts.rpartition("@")
    if at and not userinfo:
        raise NatsURLError(f"{value!r}: empty credentials before '@'")
    user = password = None
    if at:
        user, colon, password = (unquote(part) for part in userinfo.partition(":"))
        if not user:
            raise NatsURLError(f"{value!r}: a user is needed before ':' in the credentials")
        password = password if colon else None
    if not hosts:
        raise NatsURLError(f"{value!r}: no server: expected {_EXAMPLE}")
    servers = tuple(f"{scheme}://{_server(part, value)}" for part in hosts.split(","))
    if len(set(servers)) != len(servers):
        raise NatsURLError(f"{value!r}: a server is named twice")
    return NatsLocation(servers=servers, name=name, user=user, password=password)


def _server(part: str, value: str) -> str:
    """One `host[:port]` of the list, checked, as `host:port`."""
    if not part:
        raise NatsURLError(
            f"{value!r}: an empty server in the list (two commas, or a trailing one)"
        )
    match = _SERVER.fullmatch(part)
    if match is None:
        raise NatsURLError(f"{value!r}: {part!r} is not HOST:PORT")
    host, port = match["host"], match["port"]
    if port is None:
        return f"{host}:{DEFAULT_PORT}"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise NatsURLError(f"{value!r}: {part!r}: the port must be a number from 1 to 65535")
    return f"{host}:{int(port)}"


# -- the connection ----------------------------------------------------------

log = logging.getLogger("veba.nats")

# Once connected, the client reconnects for ever (a cluster that is down for an
# hour comes back to a working veba), trying each server at most every 2 s; its
# buffer keeps what is published meanwhile (up to nats-py's 2 MiB). A server that
# stopped answering without closing the socket is noticed after 3 missed pings.
RECONNECT_WAIT = 2
PING_INTERVAL = 10
MAX_OUTSTANDING_PINGS = 3


async def connect(
    location: NatsLocation,
    *,
    client_name: str = "veba",
    first_connect_timeout: float = 30.0,
    client: Client | None = None,
) -> tuple[Client, JetStreamContext]:
    """A connected nats-py client and its JetStream context.

    Reconnects for ever once connected; the first connect, though, gives up
    after `first_connect_timeout` seconds with `NatsConnectError`, so a wrong
    address is an error at start rather than a silent hang. The caller closes
    the client (`await client.close()`, or `drain()` to finish what is pending).
    """
    import nats.errors
    from nats.aio.client import Client as NatsClient

    if client is None:  # else one made before, handed to backends already
        client = NatsClient()
    # Credentials as options, not in the URLs: nats-py would send a
    # percent-encoded password as it is written.
    token = location.user if location.password is None else None

    errors: list[str] = []  # before the first connect: said in NatsConnectError

    async def report_error(exc: Exception) -> None:
        # nats-py reports every failed (re)connect attempt here: a warning each,
        # not a traceback, since retrying is the plan.
        errors.append(str(exc) or type(exc).__name__)
        log.warning("nats: %s", errors[-1])

    async def report_disconnect() -> None:
        if not client.is_closed:  # nats-py calls this on close() too
            log.warning("nats: disconnected from %s; reconnecting", location)

    async def report_reconnect() -> None:
        server = client.connected_url
        log.info("nats: reconnected to %s", server.netloc if server else location)

    try:
        async with asyncio.timeout(first_connect_timeout):
            await client.connect(
                servers=list(location.servers),
                name=client_name,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=RECONNECT_WAIT,
                connect_timeout=min(5, max(1, int(first_connect_timeout))),
                ping_interval=PING_INTERVAL,
                max_outstanding_pings=MAX_OUTSTANDING_PINGS,
                error_cb=report_error,
                disconnected_cb=report_disconnect,
                reconnected_cb=report_reconnect,
                user=location.user if token is None else None,
                password=location.password,
                token=token,
            )
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        await client.close()
        # The telling error, not the last: a refused login is followed by resets.
        refused = [e for e in errors if "authorization" in e.lower()]
        why = refused[-1] if refused else errors[-1] if errors else str(exc)
        raise NatsConnectError(
            f"NATS at {location}: could not connect within {first_connect_timeout:g} s"
            + (f" (last: {why})" if why else "")
        ) from exc
    return client, client.jetstream()
