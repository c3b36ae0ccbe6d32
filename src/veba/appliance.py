"""The appliance: one event log, the deployed functions, and the providers.

Flow is one way: providers and the webhook `publish` into the log (which
routes each new event to its deliveries in the same transaction), then wake
the dispatchers of the functions that got new deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from veba import telemetry
from veba.activity import Activity, provider_changes
from veba.backends import backends_for
from veba.deployments import Functions
from veba.dispatch import DeadLetterSink, Dispatcher
from veba.eventlog import AppendResult, Delivery, LogFull
from veba.eventlog.ownerlock import OwnerLock
from veba.events import INVOCATION_TYPE, Event, InvalidEvent
from veba.feed import Feed
from veba.functionlogs import LogHub
from veba.functions._workerproc import sweep_secrets
from veba.leadership import lead
from veba.observability import Metrics
from veba.private import make_private
from veba.providers.base import Provider
from veba.routing import Subscription
from veba.secrets import SecretStore
from veba.settings import ApplianceSettings, ensure_token, record_url
from veba.store import Store, StoreTokens, local_api_url
from veba.targets.base import Result
from veba.targets.http import Processors
from veba.tracing import EventScope, current_scope, event_scope

if TYPE_CHECKING:
    from veba.api.gateway import WorkerGateway
    from veba.otlp import SpanExport

__all__ = ["Appliance"]

log = logging.getLogger("veba.appliance")

RETENTION_LEASE = "log:retention"  # the lease whose holder prunes a shared log


class Appliance:
    retention_every = 60.0  # seconds between two retention passes

    def __init__(
        self,
        settings: ApplianceSettings,
        *,
        providers: Sequence[Provider] | None = None,
        sockets: Mapping[str, socket.socket] | None = None,
        lock: OwnerLock | None = None,
        activity: Activity | None = None,
    ) -> None:
        self.settings = settings
        # What an operator is told as it happens (`veba serve` prints it).
        self.activity = activity or Activity()
        # Where it listens (veba.listeners); `sockets` are those `veba serve` bound
        # before start, by purpose; a listener without one binds its own address.
        self.listeners = settings.listeners()
        self.sockets = dict(sockets or {})
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Private whatever was there before (an older veba, a copy, a restore).
        make_private(settings.data_dir)
        # Decrypted secrets that a killed appliance left in /dev/shm.
        for folder in sweep_secrets():
            log.info("removed %s, left by a process that is gone", folder)
        self.token = ensure_token(settings.data_dir)
        # Beside the token, the one address a CLI may send it to.
        tls = settings.tls_cert is not None
        self.url = local_api_url(settings.listen, tls=tls)
        record_url(settings.data_dir, self.url)
        # The log, the functions' store, secrets, deployed functions, provider
        # leases: on this node, or in a NATS JetStream shared with other nodes.
        # `lock`: the SQLite log's, if the caller took it before writing anything.
        self.backends = backends_for(settings, lock)
        self.log = self.backends.log
        # Functions reach the store over this appliance's API with a token per pool.
        self.store: Store = self.backends.store
        self.store_tokens = StoreTokens()
        self.secrets = SecretStore(settings.data_dir, self.backends.secret_blobs)
        self.logs = LogHub(
            settings.logs_dir,
            max_bytes=settings.function_log_size,
            keep=settings.function_log_files,
        )
        self.telemetry = telemetry.Telemetry()  # what the dashboard shows (/api/v1/overview)
        self.started = time.time()
        self.metrics = Metrics()
        # Events as they are logged, to the dashboard's live streams.
        self.feed = Feed()
        self.http = httpx.AsyncClient(timeout=10.0)
        self.dead_letters = DeadLetterSink(self.http)
        self.functions = Functions(
            functions_dir=settings.functions_dir,
            venv_cache=settings.venv_cache,
            log=self.log,
            secrets=self.secrets,
            logs=self.logs,
            dead_letter_sink=self.dead_letters,
            observer=self._observe,
            store=self.store,
            store_tokens=self.store_tokens,
            api_url=self.url,
            api_certificate=_leaf_certificate(settings.tls_cert) if settings.tls_cert else None,
            callbacks=self.http,
            private_dir=settings.data_dir,
            activity=self.activity,
            max_workers=settings.max_workers,
            records=self.backends.function_records,
        )
        self.providers: list[Provider] = list(
            providers if providers is not None else _default_providers(settings, self.secrets)
        )
        self._tasks: list[asyncio.Task[None]] = []
        # RouterConfig processors that point outside (Knative sinks, OpenFaaS gateways).
        self.processors = Processors.from_config(settings.processors, client=self.http)
        self._side_servers: list[Any] = []  # /stats, a webhook on its own bindAddress
        self._dlq_report: asyncio.Task[None] | None = None
        self.gateway: WorkerGateway | None = None
        # A span per attempt to an OTLP collector; OpenTelemetry is imported only then.
        self.spans: SpanExport | None = None
        if settings.otlp_endpoint:
            from veba.otlp import SpanExport

            self.spans = SpanExport(settings.otlp_endpoint)

    async def start(self) -> None:
        await self.backends.open()
        # gateway.openfaas:8080 for functions that call functions, before any starts.
        from veba.api.gateway import WorkerGateway

        self.gateway = await WorkerGateway.start(self)
        self.functions.hosts = self.gateway.hosts_entries()
        if self.backends.shared:
            self.functions.leadership = self.backends.leadership
        await self.functions.load()
        self.processors.start(
            log=self.log,
            dead_letter_sink=self.dead_letters,
            observer=self._observe,
        )
        from veba.api.stats import side_servers

        for server in side_servers(self, started=self.started):
            await server.start()
            self._side_servers.append(server)
        if self.settings.retention > 0:
            self._tasks.append(asyncio.create_task(self._prune(), name="retention"))
        for provider in self.providers:
            task = asyncio.create_task(
                self._run_provider(provider), name=f"provider:{provider.name}"
            )
            self._tasks.append(task)
        if self.providers:
            self._tasks.append(asyncio.create_task(self._watch_providers(), name="providers"))

    async def _prune(self) -> None:
        """Retention: drop old events that need nothing more, once a minute. The
        log prunes in short steps that give way to appends, so this may run long
        without holding anything up. With other nodes on the log (JetStream) one
        prunes at a time, the holder of the retention lease: each pass walks the
        whole shared log, and N nodes walking it at once would do it N times."""
        while True:
            try:
                await lead(self.backends.leadership, RETENTION_LEASE, self._prune_passes)
            except Exception as exc:  # the lease's store away, say: contend again
                log.warning("retention: cannot take the retention lease (%s); again in 5 s", exc)
                await asyncio.sleep(5)

    async def _prune_passes(self) -> None:
        while True:
            try:
                started = time.monotonic()
                pruned = await self.log.prune(time.time() - self.settings.retention)
                if pruned:
                    log.info(
                        "retention: pruned %d events in %.1f s",
                        pruned,
                        time.monotonic() - started,
                    )
            except (LogFull, OSError) as exc:
                log.warning("retention: could not prune the log: %s", exc)
            except Exception:  # a bug in one pass must not end retention for good
                log.exception("retention: a pass failed; the next comes as usual")
            await asyncio.sleep(self.retention_every)

    async def _run_provider(self, provider: Provider) -> None:
        # A provider handles its own transient trouble; this only keeps a bug
        # in one from taking the appliance down silently.
        while True:
            try:
                # With other nodes (JetStream), only the one that holds the
                # provider's lease reads its source; another takes over if it dies.
                await lead(self.backends.leadership, provider.name, lambda: provider.run(self))
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("provider %s failed; restarting in 5 s", provider.name)
                await asyncio.sleep(5)

    async def _watch_providers(self, every: float = 1.0) -> None:
        """Tell each provider's connects, drops and new errors (from its status)."""
        seen: dict[str, dict[str, Any]] = {}
        while True:
            for provider in self.providers:
                try:
                    current = provider.status()
                except Exception:  # a status is for telling; never fatal
                    continue
                for level, text in provider_changes(seen.get(provider.name), current):
                    self.activity.report(level, text)
                seen[provider.name] = current
            await asyncio.sleep(every)

    def _observe(self, function: str, outcome: str, result: Result, delivery: Delivery) -> None:
        """Every settled attempt: counted (and exported as a span, in the attempt's
        scope); a dead letter told, with the DLQ's size."""
        self.metrics.observe_delivery(function, outcome, result, delivery)
        if self.spans is not None and (scope := current_scope()) is not None:
            self.spans.attempt(function, outcome, result, delivery, scope)
        if outcome == "dead":
            error = (result.error or "").strip().splitlines()
            why = f"{result.kind} {result.status or ''}".strip()
            if error:
                why += f": {error[-1][:200]}"  # a traceback's last line says what
            self.activity.report(
                "error",
                f"{function}: {_event_name(delivery.event)} failed after {delivery.attempt}"
                f" attempt(s) ({why}); dead letter {delivery.id}: veba dlq show {delivery.id}",
            )
            if self._dlq_report is None or self._dlq_report.done():
                self._dlq_report = asyncio.create_task(self._report_dlq())
        elif outcome == "retried" and self.activity.verbose:
            self.activity.report(
                "event",
                f"{function}: attempt {delivery.attempt} of {_event_name(delivery.event)}"
                f" failed ({result.kind} {result.status or ''}), will retry",
            )
        self.telemetry.attempt(function, outcome, result, delivery)

    async def _report_dlq(self) -> None:
        await asyncio.sleep(0.2)  # one line for a burst of dead letters
        try:
            counts = await self.log.counts()
        except (LogFull, OSError, RuntimeError):
            return
        dead = {name: c["dead"] for name, c in counts.items() if c.get("dead")}
        if dead:
            each = ", ".join(f"{name} {n}" for name, n in sorted(dead.items()))
            self.activity.report("warning", f"dead-letter queue: {sum(dead.values())} ({each})")

    def begin_shutdown(self) -> None:
        """The server stops taking requests: end what streams forever (`logs
        --follow`, the dashboard's live streams), so its shutdown waits for nobody."""
        self.logs.end_follows()
        self.feed.close()

    async def stop(self) -> None:
        self.feed.close()
        if self._dlq_report is not None:
            self._dlq_report.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self._side_servers:
            await server.stop()
        await self.processors.stop()
        await self.functions.stop()
        if self.gateway is not None:
            await self.gateway.stop()
        await self.backends.close()
        self.logs.close()
        if self.spans is not None:
            await asyncio.to_thread(self.spans.close)
        with contextlib.suppress(Exception):
            await self.http.aclose()

    # -- the EventSink that providers and the webhook publish into -----------

    async def publish(
        self,
        events: Sequence[Event],
        *,
        checkpoint: tuple[str, str] | None = None,
        via: str = "provider",
    ) -> AppendResult:
        """Log events from outside (providers, the webhook). Async calls come in by
        `enqueue` only, so the type they use is refused here, whoever sends it."""
        for event in events:
            if event.type == INVOCATION_TYPE:
                raise InvalidEvent(
                    f"event {event.id}: type {INVOCATION_TYPE!r} is reserved for veba's"
                    " async function calls; use /async-function/NAME"
                )
        route = self._route if self.processors else self.functions.router.route
        routes = [route(event) for event in events]
        reserved = self._reserve(routes)
        lease = {name: (n, d.lease_ttl) for name, (d, n) in reserved.items()}
        by_event = {id(event): names for event, names in zip(events, routes, strict=True)}
        # Lines said meanwhile (the log full, a bad route) name the events.
        with event_scope(EventScope.of([e.id for e in events])):
            try:
                result = await self.log.append(
                    events,
                    route=lambda event: by_event[id(event)],  # routed once, above
                    checkpoint=checkpoint,
                    lease=lease or None,
                )
            except BaseException:
                for dispatcher, granted in reserved.values():
                    dispatcher.hand_over((), granted)
                raise
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "%s: %d event(s) logged, %d already; deliveries %s",
                    via, result.accepted, result.duplicates, result.deliveries or "none",
                )  # fmt: skip
        self._hand_over(reserved, result)
        self.feed.publish(events, result)
        if self.activity.verbose:
            self._tell_events(events, result, via)
        self._count(events, result, via)
        return result

    def _count(self, events: Sequence[Event], result: AppendResult, via: str) -> None:
        self.metrics.ingested(via, result.accepted, result.duplicates)
        if result.accepted:
            for _, index in result.logged:
                self.metrics.event_accepted(events[index].source, events[index].type)
            self.telemetry.logged(result.accepted)

    def _tell_events(self, events: Sequence[Event], result: AppendResult, via: str) -> None:
        """--verbose: a line per event logged, with the functions it goes to."""
        if result.accepted == len(events):
            for event in events:
                targets = ", ".join(self._route(event)) or "no function subscribes"
                self.activity.report(
                    "event", f"{via}: {_event_name(event)} from {event.source} -> {targets}"
                )
        else:
            self.activity.report(
                "event",
                f"{via}: {len(events)} event(s), {result.accepted} new,"
                f" {result.duplicates} already logged",
            )

    def _route(self, event: Event) -> list[str]:
        return [*self.functions.router.route(event), *self.processors.route(event)]

    async def enqueue(self, event: Event, function: str) -> AppendResult:
        """Log `event` with a delivery to `function` only (an async call)."""
        result = await self.log.append([event], route=lambda _: (function,))
        self._count([event], result, "async")
        self.wake(result.deliveries)
        self.feed.publish([event], result)
        return result

    def wake(self, deliveries: Mapping[str, int]) -> None:
        """Tell the dispatchers of these subscribers (functions and RouterConfig
        processors alike) that they have deliveries: the one way anything that
        writes deliveries (publish, enqueue, redrive, replay) gets them going."""
        self.functions.wake(deliveries)
        self.processors.wake(deliveries)

    def _reserve(self, routes: Sequence[Sequence[str]]) -> dict[str, tuple[Dispatcher, int]]:
        """Room each subscriber's dispatcher has for its new deliveries, to be
        leased in the append's own transaction (`Dispatcher.reserve`)."""
        reserved: dict[str, tuple[Dispatcher, int]] = {}
        for name, count in Counter(name for names in routes for name in names).items():
            dispatcher = self._dispatcher(name)
            if dispatcher is not None and (granted := dispatcher.reserve(count)) > 0:
                reserved[name] = (dispatcher, granted)
        return reserved

    def _hand_over(self, reserved: dict[str, tuple[Dispatcher, int]], result: AppendResult) -> None:
        """The deliveries leased at append to their dispatchers; the rest wait
        in the log, and their dispatchers are woken to lease them."""
        waiting = dict(result.deliveries)
        handed: dict[str, list[Delivery]] = {}
        for delivery in result.leased:
            handed.setdefault(delivery.subscription, []).append(delivery)
        for name, (dispatcher, granted) in reserved.items():
            taken = handed.get(name, [])
            dispatcher.hand_over(taken, granted)
            # Not in `deliveries` at all when every event was a duplicate.
            waiting[name] = waiting.get(name, 0) - len(taken)
        self.wake({name: n for name, n in waiting.items() if n > 0})

    def _dispatcher(self, name: str) -> Dispatcher | None:
        """The dispatcher of subscriber `name` (a function or a processor)."""
        deployment = self.functions.get(name)
        if deployment is not None:
            return deployment.dispatcher
        processor = self.processors.get(name)
        return processor.dispatcher if processor is not None else None

    def subscription(self, name: str) -> Subscription | None:
        """What the subscriber `name` (a function or a RouterConfig processor) takes."""
        deployment = self.functions.get(name)
        if deployment is not None:
            return deployment.subscription
        processor = self.processors.get(name)
        return processor.subscription if processor is not None else None

    async def checkpoint(self, provider_name: str) -> str | None:
        return await self.log.get_checkpoint(provider_name)

    def provider(self, name: str) -> Provider | None:
        return next((p for p in self.providers if p.name == name), None)

    def status(self) -> dict[str, Any]:
        return {
            "providers": [p.status() for p in self.providers],
            "functions": {d.definition.name: d.status for d in self.functions.all()},
            "workers": {d.definition.name: d.scaling() for d in self.functions.all()},
            "paused": [d.definition.name for d in self.functions.all() if d.paused],
            "processors": self.processors.status(),
        }


def _event_name(event: Event) -> str:
    """An event as a line names it: its subject (or type) and id."""
    return f"{event.attributes.get('subject') or event.type} {event.id}"


def _default_providers(settings: ApplianceSettings, secrets: SecretStore) -> list[Provider]:
    providers: list[Provider] = []
    if settings.simulator:
        from veba.providers.simulator import SimulatorProvider

        providers.append(
            SimulatorProvider(rate=settings.simulator_rate, seed=settings.simulator_seed)
        )
    if settings.vcenters:
        from veba.providers.vcenter import VCenterProvider

        providers += [VCenterProvider.from_config(vc, secrets) for vc in settings.vcenters]
    return providers


def _leaf_certificate(path: Path) -> str:
    """The first certificate of a PEM file (the server's own, before its chain):
    the one certificate workers trust for the API, so no other certificate of
    the same CA could stand in for it on loopback."""
    text = path.read_text()
    end = "-----END CERTIFICATE-----"
    start = text.find("-----BEGIN CERTIFICATE-----")
    stop = text.find(end, start)
    if start < 0 or stop < 0:
        raise ValueError(f"{path}: no PEM certificate in it")
    return text[start : stop + len(end)] + "\n"
