"""Deployed functions: their records, warm pools and dispatchers.

A deploy is all or nothing: the definition is checked, the code unpacked, the
virtualenv built and the new workers started, and the definition and code
saved, before anything of the old version is stopped; only then is the router
rebuilt. What is kept of each function (definition, code, paused flag) is a
`FunctionRecords` (`veba.functionrecords`: folders under `<data dir>/functions/`
by default), so a restarted appliance brings its functions back before it
takes events. The unpacked code (`<functions dir>/<name>/code-<hash>/`) and
the venvs are this node's cache: unpacked from the record's archive where
missing.

Records other nodes share (JetStream) change under a running node: `load()`
then starts `follow()`, which compares them with what this node runs every
`follow_every` seconds and starts, redeploys, pauses, resumes or stops what
another node changed. Records on this node's own disk change only through it,
so nothing follows them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from veba.activity import Activity
from veba.codearchive import CodeArchiveError, pack_folder, unpack
from veba.delivery import DeliveryPolicy, PolicyError, parse_duration
from veba.dispatch import DeadLetterSink, Dispatcher, Observer
from veba.eventlog.base import EventLog
from veba.functionlogs import LogHub
from veba.functionrecords import FileFunctionRecords, FunctionRecord, FunctionRecords
from veba.functions._scaling import DEFAULT_IDLE, DEFAULT_MAX_WORKERS, CallLimit, WorkerBudget
from veba.functions._workerproc import isolation_problem
from veba.functions.build import BuildError, ensure_venv
from veba.functions.isolate import SECRETS_PATH
from veba.functions.procfile import PROCFILE, web_command
from veba.functions.runtime import FunctionRuntime
from veba.functions.secretenv import SecretEnvError, required_secrets, secret_environment
from veba.functions.stack import (
    ALL_LANGS,
    KNATIVE_LANG,
    LANG_ALIASES,
    LANGS,
    StackError,
    function_name_problem,
)
from veba.functions.supervisor import (
    FunctionLoadError,
    FunctionPool,
    Invocation,
    Isolation,
    Outcome,
)
from veba.functions.webapp import WebAppPool
from veba.leadership import Leadership
from veba.routing import Router, Subscription, SubscriptionError, compile_subscription
from veba.scrub import MIN_LENGTH, Scrubber
from veba.secrets import SecretError, SecretStore, valid_secret_name
from veba.shapes import DEFAULT_SHAPE, KNATIVE_SHAPE, SHAPE_ANNOTATION, V08, Shape, parse_shape
from veba.store import Store, StoreTokens
from veba.targets.functions import FunctionTarget

__all__ = [
    "DeployError",
    "Deployment",
    "FunctionBusy",
    "FunctionDefinition",
    "Functions",
    "pack_code",
]

log = logging.getLogger("veba.deployments")
Progress = Callable[[str], None]


class DeployError(ValueError):
    """A deploy that cannot go ahead; the message starts with the field path."""


class FunctionBusy(RuntimeError):
    """A sync call over the function's call limit (maxInflight): OpenFaaS answers 429."""


# Scaling settings, by OpenFaaS's names (labels) and veba's own (annotations).
SCALE_MIN = "com.openfaas.scale.min"
SCALE_MAX = "com.openfaas.scale.max"
SCALE_ZERO = "com.openfaas.scale.zero"
SCALE_ZERO_DURATION = "com.openfaas.scale.zero-duration"
SCALE_IDLE = "veba.scale.idle"  # idle time before a worker is retired (min and zero too)
OVERLAP = "veba.overlap"  # calls one worker runs at once: for I/O-bound handlers
MAX_INFLIGHT_ENV = "max_inflight"  # OpenFaaS's watchdog setting
FOLLOW_EVERY = 1.0  # seconds between two reads of records other nodes share
# A function this node could not start is tried again after RETRY_FIRST seconds,
# then twice as long each time up to RETRY_MOST: what failed may mend itself (an
# index unreachable while its venv was built, a secret created afterwards).
RETRY_FIRST = 30.0
RETRY_MOST = 600.0


def retry_delay(tries: int, first: float = RETRY_FIRST) -> float:
    """Seconds before the next start of a function that failed `tries` times."""
    return float(min(first * 2.0 ** max(tries - 1, 0), max(RETRY_MOST, first)))


def pack_code(handler_dir: Path) -> str:
    """A function's handler folder as base64 tar.gz, for the deploy request."""
    return base64.b64encode(pack_folder(handler_dir)).decode()


def _field(payload: Mapping[str, Any], key: str, kind: type, default: Any, where: str) -> Any:
    value = payload.get(key, default)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise DeployError(f"{where}.{key}: expected {kind.__name__}, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class FunctionDefinition:
    name: str
    lang: str
    environment: dict[str, str] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    topic: str | None = None
    filters: Any = None
    delivery: dict[str, Any] = field(default_factory=dict)
    workers: int = 1
    timeout: float = 30.0
    code_hash: str = ""
    deployed_at: float = 0.0
    shape: Shape = DEFAULT_SHAPE  # the VEBA event shape it gets: v0.7 or v0.8
    # Knative functions (lang "knative"): variables from secrets (see
    # veba.functions.secretenv) and requests in flight per instance (0: no limit).
    secret_env: dict[str, dict[str, Any]] = field(default_factory=dict)
    env_from: list[dict[str, Any]] = field(default_factory=list)
    concurrency: int = 0
    # Scaling (stack.yml functions): `workers` is the minimum (0: scales to zero,
    # one worker at deploy), up to `max_workers`, each worker idle for `idle`
    # seconds retired; `overlap` calls run at once in one worker.
    max_workers: int = 0  # 0: as many as `workers`
    idle: float = DEFAULT_IDLE
    overlap: int = 1
    target: int = 0  # Knative: requests one instance is meant for (0: Knative's 100)

    @property
    def knative(self) -> bool:
        return self.lang == KNATIVE_LANG

    @property
    def where(self) -> str:
        """The field path errors about this function start with."""
        return f"Service/{self.name}" if self.knative else f"functions.{self.name}"

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], code_hash: str) -> FunctionDefinition:
        name = payload.get("name") or payload.get("service")
        if not isinstance(name, str) or function_name_problem(name):
            raise DeployError(
                f"functions.{name}: name must be a DNS-1123 label (lower-case letters,"
                " digits and '-', starting and ending with a letter or digit, at most 63)"
            )
        where = f"functions.{name}"
        lang = payload.get("lang")
        lang = LANG_ALIASES.get(str(lang), lang)
        if lang not in (*LANGS, KNATIVE_LANG):
            raise DeployError(
                f"{where}.lang: unknown lang {lang!r}; expected one of {', '.join(ALL_LANGS)}"
            )
        if lang == KNATIVE_LANG:
            where = f"Service/{name}"
        annotations = _field(payload, "annotations", dict, {}, where)
        raw_shape = payload.get("shape") or annotations.get(SHAPE_ANNOTATION)
        try:
            default = KNATIVE_SHAPE if lang == KNATIVE_LANG else DEFAULT_SHAPE
            shape = parse_shape(str(raw_shape)) if raw_shape else default
        except ValueError as exc:
            raise DeployError(f"{where}.annotations.{SHAPE_ANNOTATION}: {exc}") from None
        secret_env, env_from = _secret_refs(payload, where)
        concurrency = _field(payload, "concurrency", int, 0, where)
        if concurrency < 0:
            raise DeployError(f"{where}.concurrency: expected 0 (no limit) or more")
        workers = _field(payload, "workers", int, 1, where)
        if workers < 0 or workers > 64:
            raise DeployError(f"{where}.workers: expected 0 to 64 worker processes")
        timeout = payload.get("timeout", 30.0)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise DeployError(f"{where}.timeout: expected seconds greater than zero")
        secrets = _field(payload, "secrets", list, [], where)
        if not all(isinstance(s, str) for s in secrets):
            raise DeployError(f"{where}.secrets: expected a list of secret names")
        for secret in secrets:
            if not valid_secret_name(secret):
                raise DeployError(
                    f"{where}.secrets: {secret!r} is not a secret name (letters, digits,"
                    " '-', '.', '_')"
                )
        labels = {str(k): str(v) for k, v in _field(payload, "labels", dict, {}, where).items()}
        scale = _scale(lang, labels, {str(k): str(v) for k, v in annotations.items()}, where)
        # A function.yaml's bounds come as fields (its annotations are the template's).
        most = _field(payload, "max_workers", int, scale["max_workers"], where)
        if not 0 <= most <= 64:
            raise DeployError(f"{where}.max_workers: expected 0 to 64")
        scale["max_workers"] = most
        idle = payload.get("idle", scale["idle"])
        if isinstance(idle, bool) or not isinstance(idle, int | float) or idle < 0:
            raise DeployError(f"{where}.idle: expected seconds, 0 or more")
        scale["idle"] = float(idle)
        scale["target"] = _field(payload, "target", int, 0, where)
        if scale["target"] < 0:
            raise DeployError(f"{where}.target: expected 0 (Knative's default) or more")
        least = scale.pop("workers")
        if scale.pop("zero"):
            workers = 0  # OpenFaaS's scale.zero: idle, no worker at all
        elif least is not None:
            workers = least
        if scale["max_workers"] and scale["max_workers"] < max(workers, 1):
            raise DeployError(
                f"{where}.labels.{SCALE_MAX}: {scale['max_workers']} is below"
                f" {SCALE_MIN} {max(workers, 1)}"
            )
        raw_inflight = _field(payload, "environment", dict, {}, where).get(MAX_INFLIGHT_ENV)
        if raw_inflight is not None and not (
            str(raw_inflight).strip().isdigit() and int(str(raw_inflight)) >= 1
        ):
            raise DeployError(
                f"{where}.environment.{MAX_INFLIGHT_ENV}: expected a whole number >= 1,"
                f" got {raw_inflight!r}"
            )
        for key, value in _field(payload, "environment", dict, {}, where).items():
            # What execve cannot carry would fail every worker start.
            if not str(key) or "=" in str(key) or "\0" in f"{key}{value}":
                raise DeployError(
                    f"{where}.environment.{key}: a variable name is not empty and has no"
                    " '=', and neither has a NUL character"
                )
        # Every secret it reads, so that changing one restarts it.
        refs = [r["secret"] for r in [*env_from, *secret_env.values()]]
        secrets = list(dict.fromkeys([*secrets, *refs]))
        return cls(
            name=name,
            lang=lang,
            environment={
                str(k): str(v) for k, v in _field(payload, "environment", dict, {}, where).items()
            },
            secrets=list(secrets),
            labels=labels,
            annotations={str(k): str(v) for k, v in annotations.items()},
            topic=payload.get("topic") or annotations.get("topic"),
            filters=payload.get("filters"),
            delivery=dict(_field(payload, "delivery", dict, {}, where)),
            workers=workers,
            timeout=float(timeout),
            code_hash=code_hash,
            deployed_at=time.time(),
            shape=shape,
            secret_env=secret_env,
            env_from=env_from,
            concurrency=concurrency,
            **scale,
        )

    @property
    def min_workers(self) -> int:
        return self.workers

    @property
    def most_workers(self) -> int:
        return max(self.max_workers, self.workers, 1)

    def required_secrets(self) -> list[tuple[str, str]]:
        """(field path, name) of the secrets a deploy needs to exist (a Knative
        reference may be optional)."""
        if not self.knative:
            return [(f"{self.where}.secrets", name) for name in self.secrets]
        container = f"{self.where}.spec.template.spec.containers[0]"
        return [
            (f"{container}.{path}", name)
            for path, name in required_secrets(self.env_from, self.secret_env)
        ]

    def compile(self) -> tuple[Subscription, DeliveryPolicy]:
        where = self.where
        try:
            subscription = compile_subscription(
                self.name, self.topic, self.filters, where=where, shape=self.shape
            )
            policy = DeliveryPolicy.parse(
                self.delivery, where=f"{where}.delivery", default_timeout=self.timeout
            )
        except (SubscriptionError, PolicyError) as exc:
            raise DeployError(str(exc)) from None
        return subscription, replace(policy, max_inflight=self.call_limit(policy))

    def call_limit(self, policy: DeliveryPolicy) -> int:
        """Calls in flight at once, on every path: `delivery.maxInflight`, OpenFaaS's
        `max_inflight` variable, a Knative function's `containerConcurrency` per
        instance; the smallest given, else maxInflight's default."""
        given = [policy.max_inflight] if "maxInflight" in self.delivery else []
        raw = self.environment.get(MAX_INFLIGHT_ENV, "").strip()
        if raw.isdigit() and int(raw) >= 1:
            given.append(int(raw))
        if self.knative and self.concurrency:
            given.append(self.concurrency * self.most_workers)
        return min(given) if given else policy.max_inflight

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _secret_refs(
    payload: Mapping[str, Any], where: str
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """A Knative function's secret references, as the CLI sends them (see FunctionSpec)."""
    secret_env = _field(payload, "secret_env", dict, {}, where)
    env_from = _field(payload, "env_from", list, [], where)
    for variable, ref in secret_env.items():
        if not (
            isinstance(ref, dict)
            and isinstance(ref.get("secret"), str)
            and isinstance(ref.get("key"), str)
        ):
            raise DeployError(f"{where}.secret_env.{variable}: expected {{secret, key}}")
    for i, ref in enumerate(env_from):
        if not (isinstance(ref, dict) and isinstance(ref.get("secret"), str)):
            raise DeployError(f"{where}.env_from[{i}]: expected {{secret, prefix}}")
    return (
        {str(k): dict(v) for k, v in secret_env.items()},
        [dict(r) for r in env_from],
    )


def _scale(
    lang: str, labels: Mapping[str, str], annotations: Mapping[str, str], where: str
) -> dict[str, Any]:
    """Scaling fields from OpenFaaS's labels and veba's annotations, checked."""

    def whole(source: Mapping[str, str], key: str, at: str, least: int, most: int) -> int | None:
        raw = source.get(key)
        if raw is None:
            return None
        text = raw.strip()
        if not text.isdigit() or not least <= int(text) <= most:
            raise DeployError(
                f"{where}.{at}.{key}: expected a whole number from {least} to {most}, got {raw!r}"
            )
        return int(text)

    def seconds(source: Mapping[str, str], key: str, at: str) -> float | None:
        if key not in source:
            return None
        try:
            return parse_duration(source[key], f"{where}.{at}.{key}")
        except PolicyError as exc:
            raise DeployError(str(exc)) from None

    zero = labels.get(SCALE_ZERO, "false").strip().lower()
    if zero not in ("true", "false", "1", "0"):
        raise DeployError(f"{where}.labels.{SCALE_ZERO}: expected true or false, got {zero!r}")
    overlap = whole(annotations, OVERLAP, "annotations", 1, 256) or 1
    if overlap > 1 and lang == "python3":
        raise DeployError(
            f"{where}.annotations.{OVERLAP}: lang python3 answers with what the handler"
            " prints, so its calls cannot overlap; use python3-http, python3-flask or"
            " veba-cloudevent"
        )
    idle = seconds(annotations, SCALE_IDLE, "annotations")
    if idle is None:
        idle = seconds(labels, SCALE_IDLE, "labels")
    if idle is None:
        idle = seconds(labels, SCALE_ZERO_DURATION, "labels")
    return {
        "workers": whole(labels, SCALE_MIN, "labels", 1, 64),
        "max_workers": whole(labels, SCALE_MAX, "labels", 1, 64) or 0,
        "zero": zero in ("true", "1"),
        "idle": DEFAULT_IDLE if idle is None else idle,
        "overlap": overlap,
    }


@dataclass
class _Unstartable:
    """A record's definition this node could not start, and its next try."""

    definition: dict[str, Any]
    tries: int
    retry_at: float  # time.monotonic()


@dataclass
class Deployment:
    definition: FunctionDefinition
    subscription: Subscription
    policy: DeliveryPolicy
    code_dir: Path
    pool: FunctionRuntime | None = None
    dispatcher: Dispatcher | None = None
    status: str = "starting"  # starting | ready | error
    error: str | None = None
    # The one limit of calls in flight: events, async and sync calls alike.
    limit: CallLimit = field(default_factory=lambda: CallLimit(16))
    # Paused as its record says, until a dispatcher holds the state: a pause
    # outlives a restart of the appliance and a redeploy; resume or removal ends it.
    start_paused: bool = False

    def scaling(self) -> dict[str, Any]:
        """Workers now, their bounds and the last scaling decision (`veba status`)."""
        stats = self.pool.stats if self.pool else {}
        return {
            "workers": stats.get("workers", 0),
            "alive": stats.get("alive", 0),
            "min": self.definition.workers,
            "max": self.definition.most_workers,
            "last_scale": stats.get("last_scale"),
        }

    def info(self) -> dict[str, Any]:
        d = self.definition
        counts = self.dispatcher.counts if self.dispatcher else None
        stats = self.pool.stats if self.pool else {}
        return {
            "name": d.name,
            "lang": d.lang,
            "topic": d.topic,
            "filters": d.filters,
            "eventShape": d.shape,
            "status": self.status,
            "error": self.error,
            "replicas": stats.get("workers", d.workers),
            "availableReplicas": stats.get("alive", 0),
            "minReplicas": d.workers,
            "maxReplicas": d.most_workers,
            "scale": f"{d.workers}-{d.most_workers}",
            "overlap": d.overlap,
            "lastScale": stats.get("last_scale"),
            "limit": self.limit.stats(),
            "environment": d.environment,
            "secrets": d.secrets,
            "labels": d.labels,
            "annotations": d.annotations,
            "delivery": asdict(self.policy),
            "deployed_at": d.deployed_at,
            "version": d.code_hash,  # of the code deployed
            "in_flight": counts.in_flight if counts else 0,
            "last_error": self.dispatcher.last_error if self.dispatcher else None,
            "paused": self.paused,
        }

    @property
    def paused(self) -> bool:
        return self.dispatcher.paused if self.dispatcher else self.start_paused


class Functions:
    """The deployed functions of one appliance."""

    def __init__(
        self,
        *,
        functions_dir: Path,
        venv_cache: Path,
        log: EventLog,
        secrets: SecretStore,
        logs: LogHub,
        dead_letter_sink: DeadLetterSink | None = None,
        observer: Observer | None = None,
        store: Store | None = None,
        store_tokens: StoreTokens | None = None,
        api_url: str | None = None,
        api_certificate: str | None = None,
        callbacks: httpx.AsyncClient | None = None,
        private_dir: Path | None = None,
        activity: Activity | None = None,
        max_workers: int = DEFAULT_MAX_WORKERS,
        records: FunctionRecords | None = None,
        follow_every: float = FOLLOW_EVERY,
        retry_first: float = RETRY_FIRST,
    ) -> None:
        # This node's unpacked code (its workers' folders); what is kept of each
        # function is `records` (the same folders, unless given another backend).
        self._dir = functions_dir
        self._records: FunctionRecords = records or FileFunctionRecords(functions_dir)
        # Set by the appliance when other nodes share the log (JetStream): an
        # ordered function's dispatcher then leases only while it leads.
        self.leadership: Leadership | None = None
        # Workers of every function together; a pool's minimum is always allowed.
        self.budget = WorkerBudget(max_workers)
        self._activity = activity or Activity()  # deploys, removals, failures to start
        self._callbacks = callbacks  # for the X-Callback-Url of async calls
        self._venvs = venv_cache
        self._log = log
        self._secrets = secrets
        self._logs = logs
        self._dls = dead_letter_sink
        self._observer = observer
        # The store functions reach over the API, with a token per pool (see _start_pool).
        self._store = store
        self._store_tokens = store_tokens
        self._api_url = api_url
        # Under `serve --tls-cert`, the PEM certificate workers pin for the API.
        self._api_certificate = api_certificate
        self._pool_tokens: dict[FunctionRuntime, str] = {}
        # The version of each secret a pool's workers were started with (see
        # _follow_secrets): a secret replaced through another node restarts them.
        self._secrets_read: dict[FunctionRuntime, dict[str, str | None]] = {}
        self._deployments: dict[str, Deployment] = {}
        # /etc/hosts lines of isolated workers: gateway.openfaas (set by the appliance).
        self.hosts: tuple[str, ...] = ()
        # Hidden from isolated workers but for their own code, venv and SDK.
        self.private_dir = private_dir
        self._lock = asyncio.Lock()
        # A pause and the follower's read of the paused flag it applies, one at a
        # time: a short lock of its own, not the one a deploy holds for minutes.
        self._pause_lock = asyncio.Lock()
        self._starting: set[asyncio.Task[None]] = set()
        self.router = Router()
        # Following the records other nodes change (see follow()).
        self._follow_every = follow_every
        self._follower: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()  # a cancel nats-py swallows must not keep it going
        # The record definitions this node failed to start, by name, with how
        # often and when to try again: not every second, and at once if the record
        # changes.
        self._unstartable: dict[str, _Unstartable] = {}
        self._retry_first = retry_first

    # -- queries ---------------------------------------------------------------

    def get(self, name: str) -> Deployment | None:
        return self._deployments.get(name)

    def all(self) -> list[Deployment]:
        return [self._deployments[n] for n in sorted(self._deployments)]

    def worker_pids(self) -> set[int]:
        """Every live worker process of every function."""
        return {
            pid
            for d in self._deployments.values()
            if d.pool is not None
            for pid in d.pool.stats["pids"]
        }

    def wake(self, deliveries: Mapping[str, int]) -> None:
        for name in deliveries:
            deployment = self._deployments.get(name)
            if deployment is not None and deployment.dispatcher is not None:
                deployment.dispatcher.wake()

    async def pause(self, name: str, paused: bool = True) -> Deployment | None:
        """Stop (or, `paused=False`, resume) leasing `name`'s deliveries: new events
        wait in the log, none lost; kept in its record so a restart keeps it paused."""
        async with self._pause_lock:
            deployment = self._deployments.get(name)
            if deployment is None:
                return None
            await self._records.set_paused(name, paused)
            _set_paused(deployment, paused)
        self._activity.report("info", f"{'paused' if paused else 'resumed'} {name}")
        return deployment

    def _rebuild_router(self) -> None:
        self.router = Router(d.subscription for d in self._deployments.values())

    # -- start-up and shut-down ------------------------------------------------

    async def load(self) -> None:
        """Bring back saved functions: routing at once, workers in the background."""
        records = await self._records.all()
        if self._dir.exists():
            for home in sorted(p for p in self._dir.iterdir() if p.is_dir()):
                if home.name not in records:  # removed, or a deploy that never finished
                    shutil.rmtree(home, ignore_errors=True)
        for name, record in records.items():
            try:
                definition = FunctionDefinition(**record.definition)
                subscription, policy = definition.compile()
            except (ValueError, TypeError) as exc:
                log.error("cannot load function %s: %s", name, exc)
                continue
            code_dir = self._dir / name / f"code-{definition.code_hash}"
            deployment = Deployment(
                definition, subscription, policy, code_dir, start_paused=record.paused
            )
            self._deployments[definition.name] = deployment
            _tidy(code_dir.parent, deployment)
        self._rebuild_router()
        for deployment in self._deployments.values():
            self._start_in_background(deployment)
        if not isinstance(self._records, FileFunctionRecords) and self._follow_every > 0:
            # Only this node writes its own folders: nothing to follow there.
            self._follower = asyncio.create_task(self.follow())

    def _start_in_background(self, deployment: Deployment, tries: int = 0) -> None:
        task = asyncio.create_task(self._start_saved(deployment, tries))
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    async def _start_saved(self, deployment: Deployment, tries: int = 0) -> None:
        name = deployment.definition.name
        if tries:  # an earlier start failed: wait, then try again if still wanted
            with contextlib.suppress(TimeoutError):
                delay = retry_delay(tries, self._retry_first)
                await asyncio.wait_for(self._stopping.wait(), delay)
            if self._stopping.is_set() or self._deployments.get(name) is not deployment:
                return
            deployment.status, deployment.error = "starting", None
        try:
            await self._fetch_code(deployment)
            pool = await self._start_pool(deployment.definition, deployment.code_dir, _quiet)
        except DeployError as exc:
            deployment.status, deployment.error = "error", str(exc)
            if self._deployments.get(name) is not deployment:
                return  # replaced or removed meanwhile: its failure is nobody's concern
            again = f"trying again in {retry_delay(tries + 1, self._retry_first):g} s"
            self._logs.write(name, "system", f"could not start: {exc}; {again}")
            self._activity.report("error", f"{name}: could not start: {exc}; {again}")
            self._start_in_background(deployment, tries + 1)
            return
        if self._deployments.get(name) is not deployment:
            # Redeployed or removed while it started (here or on another node).
            await pool.stop()
            self._revoke(pool)
            return
        self._attach(deployment, pool)
        self._activity.report("info", f"started {name} ({_summary(deployment.definition)})")

    async def stop(self) -> None:
        self._stopping.set()
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.gather(self._follower, return_exceptions=True)
        for task in list(self._starting):
            task.cancel()
        await asyncio.gather(*self._starting, return_exceptions=True)
        await asyncio.gather(*(self._stop_deployment(d) for d in self._deployments.values()))

    async def _stop_deployment(self, deployment: Deployment) -> None:
        if deployment.dispatcher is not None:
            await deployment.dispatcher.stop()
        if deployment.pool is not None:
            await deployment.pool.stop()
            self._revoke(deployment.pool)

    def _revoke(self, pool: FunctionRuntime) -> None:
        self._secrets_read.pop(pool, None)
        token = self._pool_tokens.pop(pool, None)
        if token is not None and self._store_tokens is not None:
            self._store_tokens.revoke(token)

    # -- deploy / remove ---------------------------------------------------------

    async def deploy(self, payload: Mapping[str, Any], progress: Progress = print) -> Deployment:
        try:
            deployment = await self._deploy(payload, progress)
        except DeployError as exc:
            self._activity.report("error", f"deploy of {payload.get('name')} refused: {exc}")
            raise
        except Exception as exc:
            self._activity.report(
                "error", f"deploy of {payload.get('name')} failed: {type(exc).__name__}: {exc}"
            )
            raise
        self._activity.report(
            "info", f"deployed {deployment.definition.name} ({_summary(deployment.definition)})"
        )
        return deployment

    async def _deploy(self, payload: Mapping[str, Any], progress: Progress) -> Deployment:
        code = payload.get("code")
        if not isinstance(code, str):
            raise DeployError(f"functions.{payload.get('name')}.handler: no code was sent")
        try:
            archive = base64.b64decode(code, validate=True)
        except ValueError:
            raise DeployError(
                f"functions.{payload.get('name')}.handler: code is not base64"
            ) from None
        code_hash = hashlib.sha256(archive).hexdigest()[:16]
        definition = FunctionDefinition.from_payload(payload, code_hash)
        subscription, policy = definition.compile()
        where = definition.where
        for field_path, secret in definition.required_secrets():
            if not await self._secrets.exists(secret):
                raise DeployError(
                    f"{field_path}: secret {secret!r} does not exist;"
                    f" create it with: veba secret create {secret} --from-file FILE"
                )
        entry = PROCFILE if definition.knative else "handler.py"
        async with self._lock:
            home = self._dir / definition.name
            code_dir = home / f"code-{code_hash}"
            old = self._deployments.get(definition.name)
            try:
                if not code_dir.exists():
                    await asyncio.to_thread(_unpack, archive, code_dir, where, entry)
                progress(f"{definition.name}: code unpacked ({len(archive)} bytes)")
                pool = await self._start_pool(definition, code_dir, progress)
            except BaseException:
                # Nothing of a failed deploy stays: no code folder that no
                # deployment runs, no folder for a function that never deployed.
                _tidy(home, old)
                raise
            try:  # kept before the old version stops: a failed save leaves it running
                record = await self._records.save(definition.name, definition.to_dict(), archive)
            except BaseException:
                with contextlib.suppress(Exception):
                    await pool.stop()
                self._revoke(pool)
                _tidy(home, old)
                raise
            if old is not None:
                await self._stop_deployment(old)
            deployment = Deployment(
                definition, subscription, policy, code_dir, start_paused=record.paused
            )
            self._deployments[definition.name] = deployment
            self._rebuild_router()
            self._attach(deployment, pool)
            for stale in home.glob("code-*"):
                if stale != code_dir:
                    shutil.rmtree(stale, ignore_errors=True)
            kind = "instance(s)" if definition.knative else "worker(s)"
            progress(f"{definition.name}: deployed, {definition.workers} {kind} ready")
            return deployment

    async def restart_using(self, secret: str) -> list[str]:
        """Restart, with fresh values, every function that declares `secret`."""
        restarted = []
        async with self._lock:
            for old in list(self._deployments.values()):
                if secret not in old.definition.secrets:
                    continue
                name = old.definition.name
                await self._restart_fresh(old)
                self._logs.write(name, "system", f"restarted: secret {secret!r} changed")
                self._activity.report("info", f"restarted {name}: secret {secret!r} changed")
                restarted.append(name)
        return restarted

    async def _restart_fresh(self, old: Deployment) -> None:
        """`old` again on new workers, which read its secrets anew (under the lock)."""
        definition = old.definition
        pool = await self._start_pool(definition, old.code_dir, _quiet)
        await self._stop_deployment(old)
        fresh = Deployment(
            definition, old.subscription, old.policy, old.code_dir, start_paused=old.paused
        )
        self._deployments[definition.name] = fresh
        self._attach(fresh, pool)

    async def remove(self, name: str) -> bool:
        async with self._lock:
            deployment = self._deployments.pop(name, None)
            if deployment is None:
                return False
            self._rebuild_router()
            await self._stop_deployment(deployment)
            dropped = await self._log.forget(name)
            if self._store is not None:
                await self._store.drop(name)
            await self._records.remove(name)
            shutil.rmtree(self._dir / name, ignore_errors=True)  # this node's copy of the code
            self._logs.write(name, "system", f"removed; {dropped} undelivered event(s) dropped")
            self._activity.report("info", f"removed {name}; {dropped} undelivered event(s) dropped")
            self._logs.forget(name)
            return True

    async def invoke(self, name: str, invocation: Invocation) -> Outcome:
        """A sync call, within the function's call limit: over it, `FunctionBusy` at
        once (OpenFaaS's 429), or after waiting up to the policy's `queueTimeout`."""
        deployment = self._deployments.get(name)
        if deployment is None or deployment.pool is None:
            raise KeyError(name)
        pool, limit, policy = deployment.pool, deployment.limit, deployment.policy
        if not await limit.take(policy.queue_timeout):
            limit.refused += 1
            waited = f" within {policy.queue_timeout:g}s" if policy.queue_timeout else ""
            raise FunctionBusy(
                f"function {name!r} is running its limit of {limit.limit} call(s)"
                f" (maxInflight); none ended{waited}"
            )
        try:
            return await pool.invoke(invocation, policy.timeout)
        finally:
            limit.give()

    # -- following the records other nodes change --------------------------------

    async def follow(self) -> None:
        """Keep this node in step with the records until `stop()`: every
        `follow_every` seconds, each function whose record differs from what
        this node runs is brought in line (`_catch_up`). `load()` starts it
        for records other nodes share."""
        failing = False  # said once, not every second
        while not self._stopping.is_set():
            try:
                await self._follow_once()
            except Exception as exc:  # NATS out of reach, say: what runs keeps running
                if not failing:
                    log.warning("cannot follow the function records", exc_info=True)
                    self._activity.report(
                        "error",
                        f"cannot follow the function records ({type(exc).__name__}: {exc});"
                        " trying again",
                    )
                failing = True
            else:
                if failing:
                    self._activity.report("info", "following the function records again")
                failing = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._follow_every)

    async def _follow_once(self) -> None:
        records = await self._records.all()
        for name in sorted(set(records) | set(self._deployments)):
            if self._stopping.is_set():
                return
            if not self._in_step(name, records.get(name), self._deployments.get(name)):
                await self._catch_up(name)
        await self._follow_secrets()

    async def _follow_secrets(self) -> None:
        """Restart each function whose workers read a secret that has been written
        since (through another node: a local replace restarts them itself). One
        read per secret a running function declares."""
        for name, deployment in sorted(self._deployments.items()):
            read = self._secrets_read.get(deployment.pool) if deployment.pool else None
            for secret, version in sorted((read or {}).items()):
                if self._stopping.is_set():
                    return
                now = await self._secrets.version(secret)
                if now is None or now == version:
                    continue  # removed: what runs keeps the values it has
                async with self._lock:
                    if self._deployments.get(name) is not deployment:
                        break  # redeployed or restarted meanwhile: read afresh
                    await self._restart_fresh(deployment)
                self._followed(name, f"secret {secret!r} changed on another node: restarted here")
                break

    def _in_step(
        self, name: str, record: FunctionRecord | None, deployment: Deployment | None
    ) -> bool:
        if record is None:
            return deployment is None
        if deployment is None:  # one this node could not start waits for its next try
            return self._waits(name, record)
        return self._runs(name, record, deployment) and record.paused == deployment.paused

    def _runs(self, name: str, record: FunctionRecord, deployment: Deployment | None) -> bool:
        """Whether `deployment` is what this node runs for `record`: its definition,
        or, while this node waits to try the record's again, what it ran before."""
        if self._waits(name, record):
            return True
        return deployment is not None and _same_definition(record, deployment)

    def _waits(self, name: str, record: FunctionRecord) -> bool:
        """Whether `record` is one this node could not start, its next try not due."""
        failed = self._unstartable.get(name)
        return (
            failed is not None
            and failed.definition == record.definition
            and time.monotonic() < failed.retry_at
        )

    async def _catch_up(self, name: str) -> None:
        """Bring `name` in line with its record, read again under the lock a local
        deploy or removal holds: what `all()` said may be older than a deploy
        this node has just made, and must not undo it."""
        async with self._lock:
            if self._stopping.is_set():
                return
            record = await self._records.get(name)
            deployment = self._deployments.get(name)
            if record is None and deployment is not None:
                await self._stop_removed(deployment)
                return
            if record is None or self._in_step(name, record, deployment):
                return
            if not self._runs(name, record, deployment):
                await self._start_recorded(name, record, deployment)
                return
        async with self._pause_lock:  # a local pause meanwhile wins
            record = await self._records.get(name)
            deployment = self._deployments.get(name)
            if record is None or deployment is None or not self._runs(name, record, deployment):
                return  # the next round sees it
            if record.paused != deployment.paused:
                _set_paused(deployment, record.paused)
                done = "paused" if record.paused else "resumed"
                self._followed(name, f"{done} on another node: {done} here")

    async def _stop_removed(self, deployment: Deployment) -> None:
        name = deployment.definition.name
        del self._deployments[name]
        self._unstartable.pop(name, None)
        self._rebuild_router()
        await self._stop_deployment(deployment)
        # Its undelivered events and its store are the removing node's to drop.
        shutil.rmtree(self._dir / name, ignore_errors=True)
        self._followed(name, "removed on another node: stopped here")
        self._logs.forget(name)

    async def _start_recorded(
        self, name: str, record: FunctionRecord, old: Deployment | None
    ) -> None:
        """A function new to this node, or redeployed elsewhere: as a local deploy,
        the new workers start before the old stop; if they cannot, the old keep
        running, and the record is tried again later (`retry_delay`)."""
        what = "deployed" if old is None else "redeployed"
        try:
            definition = FunctionDefinition(**record.definition)
            subscription, policy = definition.compile()
            if definition.name != name:
                raise ValueError(f"its definition is named {definition.name!r}")
        except (ValueError, TypeError) as exc:
            self._cannot_start(name, record, f"{what} on another node, unreadable here: {exc}")
            return
        code_dir = self._dir / name / f"code-{definition.code_hash}"
        deployment = Deployment(
            definition, subscription, policy, code_dir, start_paused=record.paused
        )
        failed_before = self._unstartable.pop(name, None)
        if old is None or old.pool is None:  # nothing running: start it as load() does
            self._deployments[name] = deployment
            self._rebuild_router()
            if old is not None:
                await self._stop_deployment(old)
            self._start_in_background(deployment)
            self._followed(name, f"{what} on another node: starting here")
            return
        try:
            await self._fetch_code(deployment)
            pool = await self._start_pool_whole(definition, code_dir)
        except DeployError as exc:
            self._cannot_start(
                name,
                record,
                f"{what} on another node, cannot start here ({exc}); the"
                f" version {old.definition.code_hash} keeps running",
                failed_before,
            )
            return
        await self._stop_deployment(old)
        self._deployments[name] = deployment
        self._rebuild_router()
        self._attach(deployment, pool)
        _tidy(code_dir.parent, deployment)
        self._followed(name, f"{what} on another node: started here")

    async def _start_pool_whole(
        self, definition: FunctionDefinition, code_dir: Path
    ) -> FunctionRuntime:
        """A pool start a cancel (`stop()`) does not cut in half: the start runs to
        its end and the pool is stopped, so no worker outlives the node."""
        task = asyncio.create_task(self._start_pool(definition, code_dir, _quiet))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                pool = await task
                await pool.stop()
                self._revoke(pool)
            raise

    def _cannot_start(
        self,
        name: str,
        record: FunctionRecord,
        why: str,
        before: _Unstartable | None = None,
    ) -> None:
        tries = 1
        if before is not None and before.definition == record.definition:
            tries = before.tries + 1
        delay = retry_delay(tries, self._retry_first)
        self._unstartable[name] = _Unstartable(record.definition, tries, time.monotonic() + delay)
        why = f"{why}; trying again in {delay:g} s"
        self._logs.write(name, "system", why)
        self._activity.report("error", f"function {name} {why}")

    def _followed(self, name: str, change: str) -> None:
        """One line for each change another node made that this one followed."""
        self._logs.write(name, "system", change)
        self._activity.report("info", f"function {name} {change}")

    # -- internals --------------------------------------------------------------

    async def _fetch_code(self, deployment: Deployment) -> None:
        """This node's copy of a saved function's code, unpacked from its record
        if missing (deployed from another node, or the cache was cleared)."""
        definition = deployment.definition
        if deployment.code_dir.exists():
            return
        try:
            archive = await self._records.code(definition.name, definition.code_hash)
        except Exception as exc:  # the records' backend (NATS) out of reach, say
            raise DeployError(
                f"{definition.where}.handler: cannot fetch its code: {type(exc).__name__}: {exc}"
            ) from None
        if archive is None:
            raise DeployError(
                f"{definition.where}.handler: code {definition.code_hash} is not kept"
                " any more; deploy the function again"
            )
        entry = PROCFILE if definition.knative else "handler.py"
        await asyncio.to_thread(_unpack, archive, deployment.code_dir, definition.where, entry)

    async def _start_pool(
        self, definition: FunctionDefinition, code_dir: Path, progress: Progress
    ) -> FunctionRuntime:
        # Taken before the values are read: a write after it restarts the pool.
        versions = {s: await self._secrets.version(s) for s in definition.secrets}
        pool = await self._launch_pool(definition, code_dir, progress)
        self._secrets_read[pool] = versions
        return pool

    async def _launch_pool(
        self, definition: FunctionDefinition, code_dir: Path, progress: Progress
    ) -> FunctionRuntime:
        where = f"functions.{definition.name}"
        # A Knative function's code is the folder its container's image stands for.
        code = f"{where}.handler"
        if definition.knative:
            where = f"Service/{definition.name}.spec.template.spec.containers[0]"
            code = f"{where}.image"
        try:
            python = await asyncio.to_thread(ensure_venv, code_dir, self._venvs, progress)
        except BuildError as exc:
            raise DeployError(f"{code}: {exc}") from None
        if definition.knative:
            return await self._start_web_app(definition, code_dir, python, where)
        secrets = await self._secret_files(definition)
        isolation = await self._isolation(definition, secrets)
        environment = dict(definition.environment)
        # What the SDK needs: the timeout (an idempotency record in progress
        # expires with it), and the store's URL and this pool's own token.
        _, policy = definition.compile()
        environment["VEBA_FUNCTION_TIMEOUT"] = f"{policy.timeout:g}"
        token = None
        if self._store_tokens is not None and self._api_url is not None:
            token = self._store_tokens.issue(definition.name)
            environment["VEBA_API_URL"] = self._api_url
            environment["VEBA_STORE_TOKEN"] = token
            if self._api_certificate is not None:
                environment["VEBA_API_CERT"] = self._api_certificate
        # Store tokens are scrubbed like secrets (old pools' too, while they run).
        tokens = [t.encode() for p, t in self._pool_tokens.items() if p.name == definition.name]
        scrubber = Scrubber([*secrets.values(), *tokens, *([token.encode()] if token else [])])
        pool = FunctionPool(
            definition.name,
            python=python,
            handler_dir=code_dir,
            lang=definition.lang,
            workers=definition.workers,
            max_workers=definition.most_workers,
            overlap=definition.overlap,
            idle=definition.idle,
            budget=self.budget,
            on_scale=lambda line: self._scaled(definition.name, line),
            environment=environment,
            secrets=secrets,
            log_sink=self._logs.write,
            isolation=isolation,
            scrubber=scrubber,
        )
        if token is not None:
            self._pool_tokens[pool] = token
        self._logs.set_scrubber(definition.name, scrubber)
        for file, value in sorted(secrets.items()):
            if len(value.strip()) < MIN_LENGTH:
                self._logs.write(
                    definition.name,
                    "system",
                    f"secret file {file!r} is shorter than {MIN_LENGTH} bytes: veba cannot"
                    " keep so short a value out of this function's output and logs",
                )
        try:
            await pool.start()
        except FunctionLoadError as exc:
            with contextlib.suppress(Exception):
                await pool.stop()
            self._revoke(pool)
            raise DeployError(f"{where}.handler: {exc}") from None
        except BaseException:
            self._revoke(pool)
            raise
        return pool

    async def _isolation(
        self, definition: FunctionDefinition, secrets: Mapping[str, bytes]
    ) -> Isolation | None:
        """Workers in a pod's view of the machine (veba.functions.isolate) where Linux
        allows it; without it a function with secrets cannot run as written."""
        problem = await asyncio.to_thread(isolation_problem)
        if problem is None:
            # Named as a Deployment's pods are, so VEBA code that finds its own
            # name in socket.gethostname() works.
            prefix = f"{definition.name[:47]}-{definition.code_hash[:9]}"
            user = function_user(definition.name) if os.geteuid() == 0 else None
            return Isolation(prefix, self.hosts, private_dir=self.private_dir, user=user)
        if secrets:
            raise DeployError(
                f"functions.{definition.name}.secrets: functions read their secrets at"
                f" {SECRETS_PATH} in a private mount namespace, which this machine does"
                f" not allow ({problem}); run veba as root, or allow unprivileged user"
                " namespaces (sysctl user.max_user_namespaces=15000)"
            )
        self._logs.write(
            definition.name,
            "system",
            f"running without isolation ({problem}): no private hostname, no gateway.openfaas",
        )
        return None

    async def _start_web_app(
        self, definition: FunctionDefinition, code_dir: Path, python: Path, where: str
    ) -> WebAppPool:
        """A Knative function: its Procfile's web command, secrets as variables."""
        try:
            command = web_command(code_dir)
            secret_env = await secret_environment(
                self._secrets, definition.env_from, definition.secret_env
            )
        except StackError as exc:
            raise DeployError(f"{where}.image: {PROCFILE} {exc.field}: {exc.reason}") from None
        except SecretEnvError as exc:
            raise DeployError(f"{where}.{exc}") from None
        environment = {**secret_env, **definition.environment}
        for variable in definition.secret_env:  # env wins over envFrom, in either form
            if variable in secret_env:
                environment[variable] = secret_env[variable]
        environment["VEBA_FUNCTION_TIMEOUT"] = f"{definition.compile()[1].timeout:g}"
        scrubber = Scrubber(v.encode() for v in secret_env.values())
        self._logs.set_scrubber(definition.name, scrubber)
        pool = WebAppPool(
            definition.name,
            python=python,
            app_dir=code_dir,
            command=command,
            instances=definition.workers,
            max_instances=definition.most_workers,
            idle=definition.idle,
            target=definition.target or 100,
            budget=self.budget,
            on_scale=lambda line: self._scaled(definition.name, line),
            environment=environment,
            log_sink=self._logs.write,
            concurrency=definition.concurrency,
            isolation=await self._isolation(definition, {}),  # its secrets are variables
            scrubber=scrubber,
        )
        try:
            await pool.start()
        except FunctionLoadError as exc:
            raise DeployError(f"{where}.image: {exc}") from None
        return pool

    async def _secret_files(self, definition: FunctionDefinition) -> dict[str, bytes]:
        """The files a function's declared secrets become, as OpenFaaS mounts them:
        one per single-value secret, one per key of a secret with several."""
        where = f"functions.{definition.name}.secrets"
        files: dict[str, bytes] = {}
        owner: dict[str, str] = {}
        for name in definition.secrets:
            try:
                got = await self._secrets.files(name)
            except SecretError as exc:
                raise DeployError(f"{where}: {exc}") from None
            for file, value in got.items():
                if file in files:
                    raise DeployError(
                        f"{where}: secret {name!r} and secret {owner[file]!r} both give"
                        f" a file named {file!r}; a function sees them in one folder"
                    )
                files[file], owner[file] = value, name
        return files

    def _scaled(self, name: str, line: str) -> None:
        """A scaling decision: in the function's log and the operator's lines."""
        self._logs.write(name, "system", line)
        self._activity.report("info", f"{name}: {line}")

    def _attach(self, deployment: Deployment, pool: FunctionRuntime) -> None:
        name = deployment.definition.name
        shape = deployment.definition.shape
        deployment.pool = pool
        deployment.limit = CallLimit(deployment.policy.max_inflight)
        deployment.dispatcher = Dispatcher(
            name,
            log=self._log,
            # VEBA v0.8's shape goes in binary mode, as its Knative broker sent it.
            target=FunctionTarget(name, pool, self._callbacks, binary=shape == V08),
            policy=deployment.policy,
            dead_letter_sink=self._dls,
            observer=self._observer,
            shape=shape,
            limit=deployment.limit,
            leadership=self.leadership,
        )
        if deployment.start_paused:
            deployment.dispatcher.pause()
        deployment.dispatcher.start()
        deployment.status, deployment.error = "ready", None


# Functions' own users when veba runs as root: far above the ids of real accounts,
# systemd's dynamic users and the usual subordinate-id ranges of user namespaces.
_FUNCTION_UID_BASE = 1_900_000_000
_FUNCTION_UIDS = 10_000_000


def function_user(name: str) -> tuple[int, int]:
    """The (uid, gid) a function's processes run as under a root appliance: its own,
    stable across restarts, so functions cannot signal or trace one another."""
    index = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % _FUNCTION_UIDS
    uid = _FUNCTION_UID_BASE + index
    return uid, uid


def _summary(definition: FunctionDefinition) -> str:
    """What a deploy line says of a function: language, what it gets, workers."""
    topic = definition.topic or ("Trigger filters" if definition.filters else "no topic")
    kind = "instance(s)" if definition.knative else "worker(s)"
    count = f"{definition.workers}"
    if definition.most_workers != definition.workers:
        count = f"{definition.workers}-{definition.most_workers}"
    return f"{definition.lang}, {topic}, {count} {kind}"


def _quiet(_: str) -> None:
    pass


def _same_definition(record: FunctionRecord, deployment: Deployment) -> bool:
    """Whether a deployment runs its record's definition, compared as the record
    keeps it (JSON): a redeploy, even of the same code, has a new `deployed_at`."""
    return bool(json.loads(json.dumps(deployment.definition.to_dict())) == record.definition)


def _set_paused(deployment: Deployment, paused: bool) -> None:
    deployment.start_paused = paused  # for a dispatcher not attached yet
    if deployment.dispatcher is not None:
        if paused:
            deployment.dispatcher.pause()
        else:
            deployment.dispatcher.resume()


def _unpack(archive: bytes, code_dir: Path, where: str, entry: str = "handler.py") -> None:
    try:
        unpack(archive, code_dir, entry=entry)
    except CodeArchiveError as exc:
        raise DeployError(f"{where}.handler: {exc}") from None


def _tidy(home: Path, deployment: Deployment | None) -> None:
    """Remove from a function's folder what no deployment uses: everything, when
    none is deployed; else every code folder but the deployed one."""
    if deployment is None:
        shutil.rmtree(home, ignore_errors=True)
        return
    for path in home.glob("code-*"):
        if path != deployment.code_dir:
            shutil.rmtree(path, ignore_errors=True)
