"""HTTP sinks as `Target`s: a Knative sink and an external OpenFaaS gateway.

They are VEBA's two processors, for a RouterConfig that points outside the
appliance. Each gets every event (a subscription to all subjects) with the
appliance's delivery machinery in front: retries with backoff, the
dead-letter queue, redrive. `Processors` is the set of them one appliance
runs, with the dispatchers that feed them.

* `KnativeTarget` posts each event to a URI, binary or structured, as VEBA's
  knative processor does (any broker, channel or CloudEvents receiver).
* `OpenFaaSTarget` invokes, for each event, the gateway's functions whose
  `topic` annotation names its subject (`/function/NAME`, or
  `/async-function/NAME` with `async`), reading the function list from
  `/system/functions` as VEBA's openfaas processor does. An event counts as
  delivered once every matching function took it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from veba.delivery import DeliveryPolicy
from veba.events import STRUCTURED_CONTENT_TYPE, Event
from veba.routing import Subscription, compile_subscription
from veba.targets.base import Result
from veba.tracing import trace_headers

__all__ = ["KnativeTarget", "OpenFaaSTarget", "Processor", "Processors"]

log = logging.getLogger("veba.targets.http")

_FUNCTIONS_TTL = 10.0  # seconds a gateway's function list is trusted


def _outcome(response: httpx.Response, started: float) -> Result:
    if response.status_code < 300:
        return Result("ok", response.status_code, None, started, response.content[:1024])
    return Result(
        "error",
        response.status_code,
        f"HTTP {response.status_code}: {response.text[:200]}",
        started,
        response.content[:1024],
    )


async def _post(
    client: httpx.AsyncClient,
    url: str,
    *,
    headers: Mapping[str, str],
    body: bytes,
    deadline: float,
    auth: tuple[str, str] | None,
) -> Result:
    started = time.time()
    timeout = max(deadline - started, 0.001)
    try:
        response = await client.post(
            url,
            headers=dict(headers),
            content=body,
            timeout=timeout,
            auth=httpx.BasicAuth(*auth) if auth else httpx.USE_CLIENT_DEFAULT,
        )
    except httpx.TimeoutException as exc:
        return Result("timeout", 0, f"{url}: timed out ({type(exc).__name__})", started)
    except httpx.HTTPError as exc:
        return Result("transport", 0, f"{url}: {type(exc).__name__}: {exc}", started)
    return _outcome(response, started)


class KnativeTarget:
    """Every event to one CloudEvents sink, in binary or structured mode."""

    def __init__(
        self,
        name: str,
        uri: str,
        *,
        encoding: str = "binary",
        auth: tuple[str, str] | None = None,
        client: httpx.AsyncClient,
    ) -> None:
        if encoding not in ("binary", "structured"):
            raise ValueError(f"encoding must be binary or structured, not {encoding!r}")
        self.name = name
        self.uri = uri
        self.encoding = encoding
        self._auth = auth
        self._client = client
        self.invocations: Counter[str] = Counter()

    async def deliver(self, event: Event, *, attempt: int, deadline: float) -> Result:
        if self.encoding == "binary":
            headers, body = event.to_binary()
        else:
            headers, body = {"Content-Type": STRUCTURED_CONTENT_TYPE}, event.to_json()
        headers.update(trace_headers(event))
        result = await _post(
            self._client, self.uri, headers=headers, body=body, deadline=deadline, auth=self._auth
        )
        if result.ok:
            self.invocations[event.subject] += 1
        return result


@dataclass(frozen=True)
class _Function:
    name: str
    subscription: Subscription


class OpenFaaSTarget:
    """Every event to the functions of an OpenFaaS gateway that subscribe to it."""

    def __init__(
        self,
        name: str,
        gateway: str,
        *,
        async_: bool = False,
        auth: tuple[str, str] | None = None,
        client: httpx.AsyncClient,
        functions_ttl: float = _FUNCTIONS_TTL,
    ) -> None:
        self.name = name
        self.gateway = gateway.rstrip("/")
        self.async_ = async_
        self._auth = auth
        self._client = client
        self._ttl = functions_ttl
        self._functions: list[_Function] = []
        self._fetched = 0.0
        self._lock = asyncio.Lock()
        self.invocations: Counter[str] = Counter()

    async def _subscribers(self, event: Event, deadline: float) -> list[_Function] | Result:
        async with self._lock:
            if time.monotonic() - self._fetched > self._ttl:
                url = f"{self.gateway}/system/functions"
                started = time.time()
                try:
                    response = await self._client.get(
                        url,
                        auth=httpx.BasicAuth(*self._auth)
                        if self._auth
                        else httpx.USE_CLIENT_DEFAULT,
                        timeout=max(deadline - started, 0.001),
                    )
                except httpx.HTTPError as exc:
                    return Result("transport", 0, f"{url}: {type(exc).__name__}: {exc}", started)
                if response.status_code >= 300:
                    return _outcome(response, started)
                self._functions = _parse_functions(response.json())
                self._fetched = time.monotonic()
        return [f for f in self._functions if f.subscription.matches(event)]

    async def deliver(self, event: Event, *, attempt: int, deadline: float) -> Result:
        found = await self._subscribers(event, deadline)
        if isinstance(found, Result):
            return found
        kind = "async-function" if self.async_ else "function"
        headers = {"Content-Type": "application/json", "Ce-Id": event.id, "Ce-Type": event.type}
        headers.update(trace_headers(event))
        results = await asyncio.gather(
            *(
                _post(
                    self._client,
                    f"{self.gateway}/{kind}/{fn.name}",
                    headers=headers,
                    body=event.to_json(),
                    deadline=deadline,
                    auth=self._auth,
                )
                for fn in found
            )
        )
        failed = next((r for r in results if not r.ok), None)
        if failed is not None:
            return failed
        if results:
            self.invocations[event.subject] += len(results)
        return Result("ok", 200, None, time.time())


def _parse_functions(body: Any) -> list[_Function]:
    out: list[_Function] = []
    for item in body if isinstance(body, list) else []:
        if not isinstance(item, Mapping) or not item.get("name"):
            continue
        topic = (item.get("annotations") or {}).get("topic")
        if not topic:
            continue
        try:
            out.append(_Function(str(item["name"]), compile_subscription(str(item["name"]), topic)))
        except ValueError as exc:
            log.warning("ignoring function %s: %s", item.get("name"), exc)
    return out


@dataclass
class Processor:
    """One sink with its subscription and delivery policy."""

    name: str  # the subscription name in the log: `knative:<name>` / `openfaas:<name>`
    type: str
    address: str
    target: KnativeTarget | OpenFaaSTarget
    subscription: Subscription
    policy: DeliveryPolicy
    started: float = 0.0
    dispatcher: Any = None


class Processors:
    """The external sinks of one appliance and the dispatchers that feed them."""

    def __init__(
        self, processors: Sequence[Processor] = (), *, clients: Sequence[httpx.AsyncClient] = ()
    ) -> None:
        self._all = list(processors)
        self._clients = list(clients)  # made for these sinks (insecureSSL), closed with them
        by_name = {p.name for p in self._all}
        if len(by_name) != len(self._all):
            raise ValueError("processor names must be unique")

    def __bool__(self) -> bool:
        return bool(self._all)

    def __iter__(self) -> Any:
        return iter(self._all)

    def route(self, event: Event) -> list[str]:
        return [p.name for p in self._all if p.subscription.matches(event)]

    def get(self, name: str) -> Processor | None:
        return next((p for p in self._all if p.name == name), None)

    def wake(self, deliveries: Mapping[str, int]) -> None:
        for p in self._all:
            if p.name in deliveries and p.dispatcher is not None:
                p.dispatcher.wake()

    def start(self, *, log: Any, dead_letter_sink: Any = None, observer: Any = None) -> None:
        from veba.dispatch import Dispatcher

        for p in self._all:
            p.dispatcher = Dispatcher(
                p.name,
                log=log,
                target=p.target,
                policy=p.policy,
                dead_letter_sink=dead_letter_sink,
                observer=observer,
            )
            p.dispatcher.start()
            p.started = time.time()

    async def stop(self) -> None:
        await asyncio.gather(
            *(p.dispatcher.stop() for p in self._all if p.dispatcher is not None),
            return_exceptions=True,
        )
        for client in self._clients:
            await client.aclose()

    def status(self) -> list[dict[str, Any]]:
        out = []
        for p in self._all:
            counts = p.dispatcher.counts if p.dispatcher is not None else None
            out.append(
                {
                    "name": p.name,
                    "type": p.type,
                    "address": p.address,
                    "delivered": counts.delivered if counts else 0,
                    "retried": counts.retried if counts else 0,
                    "dead": counts.dead if counts else 0,
                    "in_flight": counts.in_flight if counts else 0,
                    "last_error": p.dispatcher.last_error if p.dispatcher else None,
                    "invocations": dict(p.target.invocations),
                }
            )
        return out

    @classmethod
    def from_config(cls, configs: Sequence[Any], *, client: httpx.AsyncClient) -> Processors:
        """From `veba.config` KnativeConfig / OpenFaaSConfig entries (external ones only)."""
        from veba.config import KnativeConfig, OpenFaaSConfig

        out: list[Processor] = []
        clients: list[httpx.AsyncClient] = []
        everything = compile_subscription("*", "*")
        policy = DeliveryPolicy.parse({}, where="eventProcessor", default_timeout=30.0)
        for config in configs:
            auth = (
                (config.basic_auth.username, config.basic_auth.password)
                if config.basic_auth
                else None
            )
            target: KnativeTarget | OpenFaaSTarget
            if isinstance(config, KnativeConfig):
                sink = client
                if config.insecure_ssl and config.uri.startswith("https:"):
                    sink = httpx.AsyncClient(verify=False, timeout=client.timeout)
                    clients.append(sink)
                target = KnativeTarget(
                    config.name, config.uri, encoding=config.encoding, auth=auth, client=sink
                )
                kind, address = "knative", config.uri
            elif isinstance(config, OpenFaaSConfig) and config.address:
                target = OpenFaaSTarget(
                    config.name, config.address, async_=config.async_, auth=auth, client=client
                )
                kind, address = "openfaas", config.address
            else:
                continue
            name = f"{kind}:{config.name}"
            sub = Subscription(name, everything.subjects, everything.filters)
            out.append(Processor(name, kind, address, target, sub, policy))
        return cls(out, clients=clients)
