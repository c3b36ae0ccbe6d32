"""Where the appliance keeps its state, and how a client finds the appliance.

The data directory comes from `--data-dir`, then `VEBA_DATA_DIR`, then a
per-user default. The API token lives in it (mode 0600), so a CLI on the same
machine finds it without copying, beside the address the appliance serves on
(file `url`): the CLI sends that token to that address only (see
`veba.cli.credentials`).

The directory is private (see `veba.private`).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from veba.config import KnativeConfig, MetricsConfig, OpenFaaSConfig, VCenterConfig
from veba.functionlogs import DEFAULT_KEEP, DEFAULT_MAX_BYTES
from veba.listeners import ListenerPlan, plan_listeners
from veba.natsurl import NatsLocation

__all__ = [
    "DEFAULT_BATCH_MAX",
    "DEFAULT_EVENT_MAX",
    "DEFAULT_LISTEN",
    "ApplianceSettings",
    "default_data_dir",
    "ensure_token",
    "parse_listen",
    "read_recorded_url",
    "read_token",
    "record_url",
    "resolve_data_dir",
    "write_private",
]

DEFAULT_LISTEN = "127.0.0.1:8080"
# The webhook's body limits (veba.api.limits): one event, and a whole batch.
DEFAULT_EVENT_MAX = 1 << 20
DEFAULT_BATCH_MAX = 16 << 20
TOKEN_FILE = "token"
URL_FILE = "url"  # where the appliance that owns the token serves its API


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "veba"


def resolve_data_dir(option: str | Path | None = None) -> Path:
    if option:
        return Path(option).expanduser()
    env = os.environ.get("VEBA_DATA_DIR")
    return Path(env).expanduser() if env else default_data_dir()


def write_private(path: Path, data: bytes) -> None:
    """Create a file readable by its owner only, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def ensure_token(data_dir: Path) -> str:
    """The appliance's API token, created on first start."""
    path = data_dir / TOKEN_FILE
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    write_private(path, token.encode() + b"\n")
    return token


def read_token(data_dir: Path) -> str | None:
    """The token file in the data directory, if there is one."""
    try:
        return (data_dir / TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None


def record_url(data_dir: Path, url: str) -> None:
    """Note the address this appliance serves on, beside its token."""
    write_private(data_dir / URL_FILE, (url + "\n").encode())


def read_recorded_url(data_dir: Path) -> str | None:
    try:
        return (data_dir / URL_FILE).read_text().strip() or None
    except OSError:
        return None


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen {value!r}: expected HOST:PORT, like {DEFAULT_LISTEN}")
    return host.strip("[]") or "127.0.0.1", int(port)


@dataclass(frozen=True)
class ApplianceSettings:
    data_dir: Path
    listen: str = DEFAULT_LISTEN
    simulator: bool = True
    simulator_rate: float = 1.0
    simulator_seed: int = 0
    webhook_path: str = "/webhook"
    # The webhook takes the API token, and these if set; anonymous posts only
    # when `webhook_open` (`--webhook-open`, or a RouterConfig webhook without
    # an auth section, as VEBA reads it).
    webhook_basic_auth: tuple[str, str] | None = None
    webhook_bearer_token: str | None = None
    webhook_open: bool = False
    webhook_max_event: int = DEFAULT_EVENT_MAX  # bytes of one event
    webhook_max_batch: int = DEFAULT_BATCH_MAX  # bytes of one batch request
    # A RouterConfig webhook's bindAddress, as written (veba.listeners decides
    # whether it gets its own socket or shares the API's).
    webhook_listen: str | None = None
    # From `--config` (VEBA's RouterConfig) and `--vcenter`: see veba.config.
    vcenters: tuple[VCenterConfig, ...] = ()
    processors: tuple[OpenFaaSConfig | KnativeConfig, ...] = ()  # external sinks only
    metrics: MetricsConfig | None = None  # VEBA's /stats on its own address
    # Events whose deliveries are all done are dropped this long after they
    # arrived (0 keeps everything); dedupe by (source, id) holds within it.
    retention: float = 7 * 86400.0
    # HTTPS for the API (`veba serve --tls-cert/--tls-key`): PEM files.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Function log files rotate past this size; this many rotated files are kept.
    function_log_size: int = DEFAULT_MAX_BYTES
    function_log_files: int = DEFAULT_KEEP
    # An OTLP/HTTP collector to export a span per delivery attempt to (veba.otlp).
    otlp_endpoint: str | None = None
    # Workers of every function together that autoscaling may start (a function's
    # minimum always starts): a burst must not exhaust memory (~16 MB a worker).
    max_workers: int = 64
    # Where the log and the rest of the appliance's state live: None, this node
    # (SQLite and files in the data directory); or a NATS JetStream shared by
    # every node given the same location (`--event-log`, veba.backends), its
    # streams and buckets kept `replicas` times.
    event_log: NatsLocation | None = None
    replicas: int = 1

    def listeners(self) -> ListenerPlan:
        """Where the appliance listens; raises `ListenError` for settings that clash."""
        return plan_listeners(
            self.listen,
            webhook=self.webhook_listen,
            metrics=self.metrics.bind_address if self.metrics else None,
        )

    @property
    def log_path(self) -> Path:
        return self.data_dir / "events.db"

    @property
    def functions_dir(self) -> Path:
        return self.data_dir / "functions"

    @property
    def venv_cache(self) -> Path:
        return self.data_dir / "venvs"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"
