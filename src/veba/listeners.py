"""Where `veba serve` listens: the API (`--listen`), a RouterConfig's webhook and
VEBA's `/stats`, each on the address its setting names, one listener per address.

`plan_listeners` decides, from the settings alone, which sockets there are and
refuses settings that cannot all hold (two of them on one port) with a line
that names both. `ListenerPlan.bind` then binds every socket before the
appliance starts, so a port already in use is refused, naming its setting,
before any event is accepted.

One case is shared rather than refused, because it is VEBA's default: the
webhook on `0.0.0.0:8080` with veba's API on `127.0.0.1:8080`. Two sockets
cannot hold one port when one of them is a wildcard, so one listener on the
wider address serves both, and on it the API answers only on connections to
the address `--listen` names (`api_hosts`): the webhook is reachable where its
bindAddress says, the API no further than `--listen` says. `veba serve` says
so in one line at start.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

__all__ = ["Address", "ListenError", "Listener", "ListenerPlan", "plain_ip", "plan_listeners"]

LISTEN = "--listen"
# How long every listener keeps an idle keep-alive connection (uvicorn's own
# default is 5 s). Longer than the senders keep theirs (Go's net/http, VEBA's
# router and Knative's, 90 s; httpx 5 s), so the sender closes an idle one
# first and never sends an event on a connection the server is closing, which
# it would hear of only as a reset.
KEEP_ALIVE_SECONDS = 120
WEBHOOK = "eventProvider.webhook.bindAddress"
METRICS = "metricsProvider.default.bindAddress"
_WILDCARDS = ("0.0.0.0", "::")


class ListenError(ValueError):
    """Settings that cannot all listen, or a socket that could not be bound."""


@dataclass(frozen=True)
class Address:
    """A HOST:PORT to listen on, with the setting that asked for it."""

    host: str
    port: int
    setting: str

    @classmethod
    def parse(cls, value: str, setting: str) -> Address:
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit():
            raise ListenError(f"{setting} {value!r}: expected HOST:PORT, like 0.0.0.0:8080")
        host = host.strip("[]") or "0.0.0.0"  # Go's ":8080" is every address
        return cls("127.0.0.1" if host == "localhost" else host, int(port), setting)

    @property
    def wildcard(self) -> bool:
        return self.host in _WILDCARDS

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def named(self) -> str:
        return f"{self.setting} {self}"


@dataclass(frozen=True)
class Listener:
    """One socket and what it serves: "api" (with the webhook on its path), "webhook"
    (the webhook alone) or "metrics" (`/stats`)."""

    purpose: str
    address: Address


@dataclass(frozen=True)
class ListenerPlan:
    listeners: tuple[Listener, ...]
    # The API's listener is wider than --listen (it also carries the webhook's
    # wildcard bindAddress): the local addresses on which the API answers.
    # Empty: everywhere its listener does.
    api_hosts: frozenset[str] = frozenset()
    notes: tuple[str, ...] = ()  # what a user should be told at start

    def address(self, purpose: str) -> Address | None:
        return next((x.address for x in self.listeners if x.purpose == purpose), None)

    def bind(self) -> dict[str, socket.socket]:
        """Bind every listener's socket, by purpose; all or none."""
        bound: dict[str, socket.socket] = {}
        try:
            for listener in self.listeners:
                bound[listener.purpose] = _bind(listener.address)
        except ListenError:
            for sock in bound.values():
                sock.close()
            raise
        return bound


def plan_listeners(listen: str, *, webhook: str | None, metrics: str | None) -> ListenerPlan:
    """The listeners for the API on `listen`, a RouterConfig's webhook and metrics."""
    api = Address.parse(listen, LISTEN)
    listeners = [Listener("api", api)]
    api_hosts: frozenset[str] = frozenset()
    notes: list[str] = []
    hook = Address.parse(webhook, WEBHOOK) if webhook else None
    if hook is not None and hook.port != api.port:
        listeners.append(Listener("webhook", hook))
    elif hook is not None and hook.host != api.host:
        if hook.wildcard and not api.wildcard:
            shared = Address(hook.host, api.port, f"{LISTEN} and {WEBHOOK}")
            listeners[0] = Listener("api", shared)
            api_hosts = _local_ips(api.host)
            notes.append(
                f"one listener on {shared} for the webhook ({hook.named()}) and the API"
                f" ({api.named()}): the webhook answers on every address, the API only"
                f" on {api.host}"
            )
        elif hook.wildcard:  # 0.0.0.0 and ::, which may or may not overlap
            raise ListenError(
                f"{hook.named()} and {api.named()} are different wildcards on one port:"
                f" give {LISTEN} {hook}"
            )
        elif api.wildcard:
            notes.append(
                f"the webhook ({hook.named()}) is served by the API's listener on {api}"
                f" ({LISTEN}), which covers its address"
            )
        else:  # two specific addresses on one port: two sockets hold that
            listeners.append(Listener("webhook", hook))
    if metrics:
        listeners.append(Listener("metrics", Address.parse(metrics, METRICS)))
    _refuse_overlaps(listeners)
    return ListenerPlan(tuple(listeners), api_hosts, tuple(notes))


def _refuse_overlaps(listeners: list[Listener]) -> None:
    for i, one in enumerate(listeners):
        for other in listeners[i + 1 :]:
            a, b = one.address, other.address
            if a.port == b.port and (a.host == b.host or a.wildcard or b.wildcard):
                raise ListenError(
                    f"{a.named()} and {b.named()} cannot both listen on port {a.port}:"
                    f" give one of them another port"
                )


def _local_ips(host: str) -> frozenset[str]:
    """The addresses a connection to `host` arrives on (what the socket's own end reads)."""
    try:
        return frozenset({plain_ip(host)})
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ListenError(f"{LISTEN}: cannot resolve {host!r}: {exc}") from None
    return frozenset(plain_ip(str(info[4][0])) for info in infos)


def plain_ip(host: str) -> str:
    """An IP address in one spelling: IPv4-mapped IPv6 (`::ffff:127.0.0.1`) as IPv4."""
    ip = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _bind(address: Address) -> socket.socket:
    try:
        infos = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ListenError(f"cannot listen on {address} ({address.setting}): {_why(exc)}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {address} ({address.setting}): {_why(exc)}") from None
    return sock


def _why(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()
