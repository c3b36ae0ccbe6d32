"""`veba serve`: run the appliance."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from veba.cli.client import DataDirOption, err, fail
from veba.settings import DEFAULT_LISTEN, ApplianceSettings, parse_listen, resolve_data_dir

if TYPE_CHECKING:
    from veba.eventlog import OwnerLock
    from veba.natsurl import NatsLocation


def serve(
    listen: str = typer.Option(
        DEFAULT_LISTEN, "--listen", envvar="VEBA_LISTEN", help="HOST:PORT to serve the API on"
    ),
    data_dir: Path | None = DataDirOption,
    event_log: str = typer.Option(
        "sqlite",
        "--event-log",
        envvar="VEBA_EVENT_LOG",
        help="Where events and deliveries are kept: sqlite (a file in the data directory)"
        " or nats://HOST:PORT,HOST:PORT.../NAME, a NATS JetStream cluster shared by several"
        " veba nodes (one server will do; NAME, default veba, prefixes its streams and"
        " buckets)",
    ),
    replicas: int = typer.Option(
        1,
        "--replicas",
        envvar="VEBA_REPLICAS",
        min=1,
        max=5,
        help="With a NATS --event-log: how many servers keep each stream and bucket"
        " (3 on a 3-server cluster, so any one may fail); made with this, kept after",
    ),
    simulator: bool | None = typer.Option(
        None,
        "--simulator/--no-simulator",
        help="Built-in vCenter simulator (default: on, unless a vCenter or a RouterConfig"
        " webhook is configured)",
    ),
    simulator_rate: float = typer.Option(
        1.0, "--simulator-rate", help="Simulated events per second (0 = paused)"
    ),
    simulator_seed: int = typer.Option(
        0, "--simulator-seed", help="Seed of the simulator's inventory and event stream"
    ),
    webhook_path: str = typer.Option(
        "/webhook", "--webhook-path", help="Path of the CloudEvents webhook"
    ),
    webhook_user: str | None = typer.Option(
        None, "--webhook-user", envvar="VEBA_WEBHOOK_USER", help="Require HTTP basic auth: user"
    ),
    webhook_password: str | None = typer.Option(
        None,
        "--webhook-password",
        envvar="VEBA_WEBHOOK_PASSWORD",
        help="Require HTTP basic auth: password (prefer the environment variable)",
    ),
    webhook_token: str | None = typer.Option(
        None,
        "--webhook-token",
        envvar="VEBA_WEBHOOK_TOKEN",
        help="Also take this bearer token on the webhook (the API token always works)",
    ),
    webhook_open: bool = typer.Option(
        False,
        "--webhook-open",
        help="Take events without credentials on the webhook (default: the API token,"
        " or --webhook-token / --webhook-user, is needed)",
    ),
    webhook_max_event: str = typer.Option(
        "1MiB", "--webhook-max-event", help="Largest event the webhook takes (413 beyond)"
    ),
    webhook_max_batch: str = typer.Option(
        "16MiB", "--webhook-max-batch", help="Largest batch request the webhook takes"
    ),
    config_files: list[Path] = typer.Option(
        [], "--config", help="VEBA RouterConfig (event-router.vmware.com/v1alpha1); repeatable"
    ),
    vcenters: list[str] = typer.Option(
        [], "--vcenter", help="vCenter SDK URL to stream from, https://USER@HOST/sdk; repeatable"
    ),
    vcenter_user: str | None = typer.Option(
        None, "--vcenter-user", help="vCenter user, if not in the --vcenter URL"
    ),
    vcenter_password_env: str | None = typer.Option(
        None, "--vcenter-password-env", help="Environment variable holding the vCenter password"
    ),
    vcenter_password_secret: str | None = typer.Option(
        None, "--vcenter-password-secret", help="veba secret holding the vCenter password"
    ),
    vcenter_insecure: bool = typer.Option(False, "--vcenter-insecure", help="Skip TLS checks"),
    vcenter_ca: list[str] = typer.Option([], "--vcenter-ca", help="Root CA file; repeatable"),
    retention: str = typer.Option(
        "7d",
        "--retention",
        help="Drop delivered events this long after they arrived (7d, 36h, P30D; 0 = keep)",
    ),
    tls_cert: Path | None = typer.Option(
        None, "--tls-cert", help="Serve the API over HTTPS with this PEM certificate (chain)"
    ),
    tls_key: Path | None = typer.Option(
        None, "--tls-key", help="The PEM private key of --tls-cert"
    ),
    function_log_size: str = typer.Option(
        "10M", "--function-log-size", help="Rotate a function's log file past this size (10M, 512K)"
    ),
    function_log_files: int = typer.Option(
        3, "--function-log-files", min=0, help="Rotated log files kept per function"
    ),
    max_workers: int = typer.Option(
        64,
        "--max-workers",
        min=1,
        help="Workers of all functions together that scaling may start (~16 MB each)",
    ),
    log_level: str = typer.Option(
        "info", "--log-level", help="debug, info, warning or error (the appliance's own log)"
    ),
    verbose: bool = typer.Option(
        False, "--verbose", help="Also a line per event logged and per failed attempt"
    ),
    log_json: bool = typer.Option(
        False,
        "--log-json",
        help="The appliance's own log as JSON lines (with event_id, function, attempt"
        " on lines about an event)",
    ),
    otlp_endpoint: str | None = typer.Option(
        None,
        "--otlp-endpoint",
        envvar="VEBA_OTLP_ENDPOINT",
        help="Export a span per delivery attempt to this OTLP/HTTP collector"
        " (http://HOST:4318; needs veba's extra 'otel' installed)",
    ),
) -> None:
    """Run the appliance: event log, functions, providers, API and webhook.

    Everything is checked before anything is written into the data directory
    (addresses free, data directory not in use, vCenter passwords readable,
    config valid); a refusal is one line. While it runs, it prints a line per
    deploy, provider change and dead letter (--verbose: per event too).
    """
    import uvicorn

    from veba.activity import Activity
    from veba.api import create_app
    from veba.appliance import Appliance
    from veba.cli.serving import Server, printer
    from veba.observability import configure_logging
    from veba.store import local_api_url

    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        fail(str(exc))
    nats_log = _event_log(event_log)
    if (tls_cert is None) != (tls_key is None):
        fail("--tls-cert and --tls-key go together")
    if tls_cert is not None and tls_key is not None:
        _check_tls(tls_cert, tls_key)
    if otlp_endpoint is not None:
        _check_otlp(otlp_endpoint)
    if bool(webhook_user) != bool(webhook_password):
        fail("--webhook-user and --webhook-password go together")
    if webhook_open and (webhook_user or webhook_token):
        fail(
            "--webhook-open takes events without credentials: drop it, or drop"
            " --webhook-user/--webhook-token"
        )
    from veba.api.limits import parse_size

    try:
        max_event = parse_size(webhook_max_event, "--webhook-max-event")
        max_batch = parse_size(webhook_max_batch, "--webhook-max-batch")
    except ValueError as exc:
        fail(str(exc))
    if max_batch < max_event:
        fail(
            f"--webhook-max-batch {webhook_max_batch} is smaller than"
            f" --webhook-max-event {webhook_max_event}"
        )
    from veba.config import ApplianceConfig, ConfigError, load_config, vcenter_from_url

    config = ApplianceConfig()
    try:
        if config_files:
            config = load_config(config_files)
        for url in vcenters:
            flag = vcenter_from_url(
                url,
                username=vcenter_user,
                password_env=vcenter_password_env,
                password_secret=vcenter_password_secret,
                insecure=vcenter_insecure,
                root_cas=vcenter_ca,
            )
            config = config.merge(ApplianceConfig(vcenters=(flag,)), "--vcenter")
    except ConfigError as exc:
        fail(str(exc))
    if simulator is None:  # simulated events never mix into a configured provider's
        simulator = not config.vcenters and config.webhook is None
    fields: dict[str, Any] = {
        "webhook_path": webhook_path,
        "webhook_basic_auth": (webhook_user, webhook_password)
        if webhook_user and webhook_password
        else None,
    }
    fields.update(config.settings(listen))  # a RouterConfig's webhook section wins
    # Open on purpose only: credentials given on the command line close a
    # RouterConfig webhook that has no auth section.
    open_by = "--webhook-open" if webhook_open else None
    if fields.get("webhook_open") and not (webhook_token or fields.get("webhook_basic_auth")):
        open_by = "the RouterConfig's eventProvider.webhook has no auth section, as VEBA reads it"
    fields["webhook_open"] = open_by is not None
    settings = ApplianceSettings(
        data_dir=resolve_data_dir(data_dir),
        listen=listen,
        simulator=simulator and simulator_rate >= 0,
        simulator_rate=simulator_rate,
        simulator_seed=simulator_seed,
        webhook_bearer_token=webhook_token,
        webhook_max_event=max_event,
        webhook_max_batch=max_batch,
        retention=_retention(retention),
        tls_cert=tls_cert,
        tls_key=tls_key,
        function_log_size=_size(function_log_size, "--function-log-size"),
        function_log_files=function_log_files,
        otlp_endpoint=otlp_endpoint,
        max_workers=max_workers,
        event_log=nats_log,
        replicas=replicas,
        **fields,
    )
    from veba.cli.preflight import vcenter_problems

    problems = vcenter_problems(
        settings.vcenters, settings.data_dir, shared_secrets=nats_log is not None
    )
    if problems:
        for line in problems[:-1]:
            err.print(f"[red]error:[/red] {line}", highlight=False)
        fail(problems[-1])
    from veba.listeners import KEEP_ALIVE_SECONDS, ListenError

    try:  # every socket bound before anything starts: a refusal loses nothing
        plan = settings.listeners()
        sockets = plan.bind()
    except ListenError as exc:
        fail(str(exc))
    from veba.private import DataDirError, check_data_dir

    try:  # a folder it could not make private (/tmp, the home directory)
        check_data_dir(settings.data_dir)
    except DataDirError as exc:
        fail(str(exc))
    # Everything the appliance creates is its own: the log, function logs, code,
    # venvs, and what workers write (they run as this user and inherit it).
    os.umask(0o077)
    url = local_api_url(listen, tls=tls_cert is not None)
    lock = _lock_data_dir(settings.log_path, url)  # the first write into the data dir
    configure_logging(log_level, json_logs=log_json)
    activity = Activity()
    activity.subscribe(printer(err), verbose=verbose)
    # Writes its token and URL (the CLI's way to it) into the data directory.
    try:
        appliance = Appliance(settings, sockets=sockets, lock=lock, activity=activity)
    except DataDirError as exc:
        fail(str(exc))
    scheme = "https" if tls_cert else "http"
    ready = [
        f"veba serving on {scheme}://{host}:{port}  data: {settings.data_dir}  "
        f"token: {settings.data_dir / 'token'}",
        _webhook_line(settings, open_by),
        *(why for _, why in config.own_processors(listen)),
        *plan.notes,
        "a line per deploy, provider change and dead letter follows"
        + ("; and per event (--verbose)" if verbose else " (--verbose: per event too)"),
    ]
    server = Server(
        appliance,
        ready,
        uvicorn.Config(
            create_app(appliance, own_lifetime=False),
            host=host,
            port=port,
            log_level="warning" if log_level == "info" else log_level,
            access_log=False,
            timeout_graceful_shutdown=10,
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            ssl_certfile=str(tls_cert) if tls_cert else None,
            ssl_keyfile=str(tls_key) if tls_key else None,
        ),
        err,
    )
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sockets["api"]])
    if not server.started:
        raise typer.Exit(3)  # said why in one line


def _event_log(value: str) -> NatsLocation | None:
    """None for the SQLite log in the data directory, else where the NATS cluster is."""
    if value.strip().lower() in ("", "sqlite"):
        return None
    from veba.natsurl import NatsURLError, parse_nats_url

    try:
        return parse_nats_url(value)
    except NatsURLError as exc:
        from rich.markup import escape  # the message shows [,HOST:PORT...][/NAME]

        fail(escape(f"--event-log {exc} (or sqlite)"))


def _check_otlp(endpoint: str) -> None:
    """The OpenTelemetry packages are there and the endpoint is a URL, before anything."""
    import importlib.util

    try:
        found = importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is not None
        found = found and importlib.util.find_spec("opentelemetry.sdk") is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        from rich.markup import escape

        fail(
            "--otlp-endpoint needs the OpenTelemetry SDK and its OTLP/HTTP exporter: "
            + escape("pip install 'pyveba[otel]'")
        )
    from veba.otlp import traces_url

    try:
        traces_url(endpoint)
    except ValueError as exc:
        fail(str(exc))


def _lock_data_dir(log_path: Path, url: str) -> OwnerLock:
    from veba.eventlog import LogInUse, OwnerLock

    try:
        return OwnerLock.acquire(log_path, url=url)
    except LogInUse as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"data directory {log_path.parent}: {exc.strerror or exc}")


def _check_tls(cert: Path, key: Path) -> None:
    """Load the pair now, so a wrong file is one clear line, not a traceback."""
    import ssl

    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not path.is_file():
            fail(f"{flag} {path}: no such file")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        fail(
            f"--tls-cert {cert} / --tls-key {key}: not a PEM certificate and its key"
            f" ({getattr(exc, 'reason', None) or exc})"
        )


def _retention(value: str) -> float:
    from veba.delivery import PolicyError, parse_duration

    text = value.strip()
    if text.endswith("d") and text[:-1].replace(".", "", 1).isdigit():
        text = f"P{text[:-1]}D"  # days, which Go durations lack
    try:
        return parse_duration(text, "--retention")
    except PolicyError as exc:
        fail(str(exc))


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _size(value: str, flag: str) -> int:
    """Bytes from ``10M``, ``512KiB``, ``1g`` or a plain number (binary units)."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmg]?)(?:i?b)?\s*", value, re.IGNORECASE)
    if match is None or int(match[1]) == 0:
        fail(f"{flag} {value!r}: expected a size like 10M, 512K or 1048576 (bytes)")
    return int(match[1]) * _UNITS[match[2].lower()]


def _webhook_line(settings: ApplianceSettings, open_by: str | None) -> str:
    """Who may post to the webhook, in one line at start."""
    from veba.api.auth import webhook_credentials
    from veba.api.limits import format_size

    where = f"webhook {settings.webhook_listen or settings.listen}{settings.webhook_path}"
    limits = (
        f"events up to {format_size(settings.webhook_max_event)},"
        f" batches up to {format_size(settings.webhook_max_batch)}"
    )
    if open_by is not None:
        return f"{where}: OPEN, takes events without credentials ({open_by}); {limits}"
    return f"{where}: needs {' or '.join(webhook_credentials(settings))}; {limits}"
