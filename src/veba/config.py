"""The appliance's configuration file: VEBA's RouterConfig, read strictly.

`veba serve --config FILE` takes the `event-router.vmware.com/v1alpha1`
`RouterConfig` that VEBA's router reads: one YAML document, or several
separated by `---` (one per vCenter, say), each with an `eventProvider`
(vcenter or webhook), an `eventProcessor` (openfaas or knative) and a
`metricsProvider` (default). As VEBA's strict parser does, an unknown field is
an error that names the field's path. String values may use `${VAR}` (or
`${VAR:-default}`) to keep passwords out of the file; substitution comes
first, so `insecureSSL: ${VC_INSECURE}` works (a substituted `true`/`false` is
a boolean where the schema wants one).

What each section means here:

* `vcenter`: a vCenter to stream events from (basic auth, `insecureSSL`,
  `certificates.rootCAs`); veba always checkpoints, in its log, so
  `checkpoint` and `checkpointDir` are accepted and ignored.
* `webhook`: the appliance's CloudEvents webhook on `bindAddress` + `path`
  (see `veba.listeners` for how it shares a port with `--listen`).
* `openfaas`: VEBA's in-appliance gateway (`gateway.openfaas:8080`), an
  address that names the appliance itself, or none, means its own functions;
  any other address is an external OpenFaaS gateway that gets every event for
  the functions whose `topic` matches.
* `knative`: `destination.ref` to a Broker means the appliance's own functions
  (veba is the broker); otherwise every event goes to `destination.uri`,
  binary or structured.
* `metricsProvider.default`: VEBA's `/stats` JSON on `bindAddress`.

VEBA's `horizon` provider and `aws_event_bridge` processor are refused with
what to use instead.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

__all__ = [
    "API_VERSION",
    "KIND",
    "ApplianceConfig",
    "BasicAuth",
    "ConfigError",
    "KnativeConfig",
    "MetricsConfig",
    "OpenFaaSConfig",
    "OwnBroker",
    "VCenterConfig",
    "WebhookConfig",
    "load_config",
    "names_this_appliance",
    "parse_config",
    "vcenter_from_url",
]

API_VERSION = "event-router.vmware.com/v1alpha1"
KIND = "RouterConfig"


class ConfigError(ValueError):
    """A configuration mistake: ``str()`` is ``<file>: <field path>: <reason>``."""

    def __init__(self, file: str, path: str, reason: str) -> None:
        super().__init__(f"{file}: {path}: {reason}" if path else f"{file}: {reason}")
        self.file = file
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class BasicAuth:
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class VCenterConfig:
    name: str
    address: str
    username: str
    password: str | None = field(default=None, repr=False)
    password_env: str | None = None  # or read the password from this variable
    password_secret: str | None = None  # or from this veba secret
    insecure_ssl: bool = False
    root_cas: tuple[str, ...] = ()


@dataclass(frozen=True)
class WebhookConfig:
    name: str
    bind_address: str
    path: str = "/webhook"
    basic_auth: BasicAuth | None = None


@dataclass(frozen=True)
class OpenFaaSConfig:
    name: str
    address: str | None
    async_: bool = False
    basic_auth: BasicAuth | None = None


@dataclass(frozen=True)
class KnativeConfig:
    name: str
    uri: str
    encoding: str = "binary"  # or "structured"
    insecure_ssl: bool = False
    basic_auth: BasicAuth | None = None


@dataclass(frozen=True)
class OwnBroker:
    """A knative processor whose `destination.ref` is a Broker. veba is the broker
    (functions subscribe with `topic` or trigger filters), so it means the
    appliance's own functions: nothing is sent anywhere."""

    name: str
    ref: str  # as the file named it, for the line at start: "Broker vmware-functions/default"


@dataclass(frozen=True)
class MetricsConfig:
    name: str
    bind_address: str
    basic_auth: BasicAuth | None = None


Processor = OpenFaaSConfig | KnativeConfig | OwnBroker


@dataclass(frozen=True)
class ApplianceConfig:
    vcenters: tuple[VCenterConfig, ...] = ()
    webhook: WebhookConfig | None = None
    processors: tuple[Processor, ...] = ()
    metrics: MetricsConfig | None = None

    def settings(self, listen: str) -> dict[str, Any]:
        """The `ApplianceSettings` fields this config sets, for an appliance on `listen`."""
        out: dict[str, Any] = {}
        if self.vcenters:
            out["vcenters"] = self.vcenters
        local = [p for p, _ in self.own_processors(listen)]
        external = tuple(p for p in self.processors if p not in local)
        if external:
            out["processors"] = external
        if self.metrics is not None:
            out["metrics"] = self.metrics
        if self.webhook is not None:
            out["webhook_path"] = self.webhook.path
            if self.webhook.basic_auth is not None:
                auth = self.webhook.basic_auth
                out["webhook_basic_auth"] = (auth.username, auth.password)
            else:  # VEBA's webhook provider without `auth` takes anyone's events
                out["webhook_open"] = True
            out["webhook_listen"] = self.webhook.bind_address
        return out

    def own_processors(self, listen: str) -> list[tuple[Processor, str]]:
        """The processors that mean this appliance's own functions, each with a line
        that says so (shown at start, so nobody wonders where events go)."""
        out: list[tuple[Processor, str]] = []
        for p in self.processors:
            if isinstance(p, OwnBroker):
                why = f"destination.ref {p.ref} is this appliance (veba is the broker)"
            elif isinstance(p, OpenFaaSConfig) and names_this_appliance(p.address, listen):
                why = f"{p.address or 'no address'} is this appliance"
                if p.address and _is_veba_gateway(urlsplit(p.address).hostname or ""):
                    why += " (VEBA's in-appliance OpenFaaS gateway)"
            else:
                continue
            kind = "openfaas" if isinstance(p, OpenFaaSConfig) else "knative"
            out.append((p, f"eventProcessor {p.name} ({kind}): {why}; events go to its functions"))
        return out

    def merge(self, other: ApplianceConfig, file: str) -> ApplianceConfig:
        for single in ("webhook", "metrics"):
            mine, theirs = getattr(self, single), getattr(other, single)
            if mine is not None and theirs is not None and mine != theirs:
                section = "eventProvider.webhook" if single == "webhook" else "metricsProvider"
                raise ConfigError(file, section, f"a second, different {single} section")
        addresses = {v.address for v in self.vcenters}
        for vc in other.vcenters:
            if vc.address in addresses:
                raise ConfigError(
                    file, "eventProvider.vcenter.address", f"{vc.address} is configured twice"
                )
        return ApplianceConfig(
            vcenters=self.vcenters + other.vcenters,
            webhook=self.webhook or other.webhook,
            processors=self.processors + other.processors,
            metrics=self.metrics or other.metrics,
        )


# -- the schema: VEBA's v1alpha1 types, field by field ----------------------------

_AUTH: dict[str, Any] = {
    "type": str,
    "basicAuth": {"username": str, "password": str},
    "awsAccessKeyAuth": {"accessKey": str, "secretKey": str},
    "activeDirectoryAuth": {"domain": str, "username": str, "password": str},
}
_SCHEMA: dict[str, Any] = {
    "apiVersion": str,
    "kind": str,
    "metadata": {"name": str, "labels": {str: str}},
    "eventProvider": {
        "type": str,
        "name": str,
        "vcenter": {
            "address": str,
            "insecureSSL": bool,
            "checkpoint": bool,
            "checkpointDir": str,
            "auth": _AUTH,
        },
        "vcsim": {"address": str, "insecureSSL": bool, "auth": _AUTH},
        "webhook": {"bindAddress": str, "path": str, "auth": _AUTH},
        "horizon": {"address": str, "insecureSSL": bool, "auth": _AUTH},  # refused, see below
    },
    "eventProcessor": {
        "type": str,
        "name": str,
        "openfaas": {"address": str, "async": bool, "auth": _AUTH},
        "knative": {
            "destination": {
                "ref": {
                    "apiVersion": str,
                    "kind": str,
                    "name": str,
                    "namespace": str,
                    "group": str,
                    "address": str,
                },
                "uri": (str, {"scheme": str, "host": str, "path": str}),
                "CACerts": str,
                "audience": str,
            },
            "insecureSSL": bool,
            "encoding": str,
            "auth": _AUTH,
        },
        "awsEventBridge": {
            "region": str,
            "eventBus": str,
            "ruleARN": str,
            "auth": _AUTH,
        },
    },
    "metricsProvider": {
        "type": str,
        "name": str,
        "default": {"bindAddress": str, "auth": _AUTH},
    },
    "certificates": {"rootCAs": [str]},
}


def _conform(value: Any, schema: Any, path: str, file: str) -> Any:
    """Strict structural check: unknown fields and wrong types name their path.
    Returns the value with substituted text turned into what the schema wants."""
    if isinstance(schema, tuple):  # one of several shapes
        for option in schema:
            try:
                return _conform(value, option, path, file)
            except ConfigError:
                continue
        return _conform(value, schema[0], path, file)
    if isinstance(schema, dict) and str in schema:  # a free-form string map
        if not isinstance(value, Mapping):
            raise ConfigError(file, path, "expected a mapping")
        return {
            key: _conform(item, schema[str], f"{path}.{key}", file) for key, item in value.items()
        }
    if isinstance(schema, dict):
        if not isinstance(value, Mapping):
            raise ConfigError(file, path, f"expected a mapping, got {_kind(value)}")
        out = {}
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if key not in schema:
                close = difflib.get_close_matches(str(key), list(schema), n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                known = ", ".join(schema)
                raise ConfigError(file, where, f"unknown field {key!r}{hint} (known here: {known})")
            out[key] = None if item is None else _conform(item, schema[key], where, file)
        return out
    if isinstance(schema, list):
        if not isinstance(value, list):
            raise ConfigError(file, path, f"expected a list, got {_kind(value)}")
        return [
            _conform(item, schema[0], f"{path}[{index}]", file) for index, item in enumerate(value)
        ]
    if schema is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, _FromEnv) and value in _BOOLEANS:
            return _BOOLEANS[value]
        raise ConfigError(file, path, f"expected true or false, got {_kind(value)}")
    if schema is str:
        if not _stringy(value):
            raise ConfigError(file, path, f"expected a string, got {_kind(value)}")
        return str(value) if isinstance(value, _FromEnv) else value
    raise AssertionError(f"unknown schema {schema!r}")  # pragma: no cover


# What YAML reads as a boolean, for text that `${VAR}` put where one belongs.
_BOOLEANS = {
    **dict.fromkeys(("true", "True", "TRUE"), True),
    **dict.fromkeys(("false", "False", "FALSE"), False),
}


def _stringy(value: Any) -> bool:
    # YAML reads a numeric password or name as a number: it is taken as its text.
    return isinstance(value, str | int | float) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, _FromEnv):
        if _SECRET_NAME.search(value.source):
            return f"the value of {value.source} (not shown: it looks like a secret)"
        return f"{str(value)!r} (from {value.source})"
    return repr(value)


# -- reading ------------------------------------------------------------------------

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SECRET_NAME = re.compile(r"PASS|SECRET|TOKEN|KEY|CRED", re.IGNORECASE)


class _FromEnv(str):
    """Text that `${VAR}` substitution made; `source` is what the file said, for
    error messages. `_conform` turns it into a plain value of the schema's type."""

    source: str

    def __new__(cls, value: str, source: str) -> _FromEnv:
        self = super().__new__(cls, value)
        self.source = source
        return self


def _substitute(value: Any, path: str, file: str, env: Mapping[str, str]) -> Any:
    if isinstance(value, str) and _VAR.search(value):

        def expand(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(file, path, f"${{{name}}} is not set in the environment")

        return _FromEnv(_VAR.sub(expand, value), value)
    if isinstance(value, Mapping):
        return {
            k: _substitute(v, f"{path}.{k}" if path else str(k), file, env)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_substitute(v, f"{path}[{i}]", file, env) for i, v in enumerate(value)]
    return value


def load_config(
    paths: Path | str | Sequence[Path | str], env: Mapping[str, str] | None = None
) -> ApplianceConfig:
    """Read one or more config files, each one or more RouterConfig documents."""
    if isinstance(paths, str | Path):
        paths = [paths]
    config = ApplianceConfig()
    for path in paths:
        file = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(file, "", f"cannot read: {exc.strerror or exc}") from None
        try:
            documents = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as exc:
            raise ConfigError(file, "", f"not valid YAML: {exc}") from None
        if not documents:
            raise ConfigError(file, "", "empty: expected a RouterConfig")
        for index, document in enumerate(documents):
            where = file if len(documents) == 1 else f"{file} (document {index + 1})"
            config = config.merge(parse_config(document, file=where, env=env), where)
    return config


def parse_config(
    document: Any, *, file: str = "config", env: Mapping[str, str] | None = None
) -> ApplianceConfig:
    """Check one RouterConfig document and turn it into what the appliance runs."""
    if not isinstance(document, Mapping):
        raise ConfigError(file, "", f"expected a RouterConfig mapping, got {_kind(document)}")
    for key, want in (("apiVersion", API_VERSION), ("kind", KIND)):
        if document.get(key) != want:
            raise ConfigError(file, key, f"expected {want!r}, got {document.get(key)!r}")
    doc = _substitute(document, "", file, os.environ if env is None else env)
    _refuse_unsupported(doc, file)
    doc = _conform(doc, _SCHEMA, "", file)
    root_cas = tuple(str(p) for p in (doc.get("certificates") or {}).get("rootCAs") or ())

    config = ApplianceConfig()
    provider = _section(doc, "eventProvider", file)
    if provider is not None:
        config = _provider(provider, root_cas, file)
    processor = _section(doc, "eventProcessor", file)
    if processor is not None:
        config = ApplianceConfig(
            config.vcenters, config.webhook, (_processor(processor, file),), config.metrics
        )
    metrics = _section(doc, "metricsProvider", file)
    if metrics is not None:
        kind = _type(metrics, "metricsProvider", ("default",), file)
        body = _body(metrics, "metricsProvider", kind, file)
        bind = _address(body, "metricsProvider.default.bindAddress", file)
        config = ApplianceConfig(
            config.vcenters,
            config.webhook,
            config.processors,
            MetricsConfig(
                _name(metrics, "metricsProvider", file),
                bind,
                _basic_auth(body, "metricsProvider.default", file),
            ),
        )
    return config


_HORIZON = (
    "horizon is not supported: veba has no Horizon provider. Send Horizon's events"
    " to the webhook provider instead (eventProvider.type: webhook) as CloudEvents,"
    " e.g. from a small poller of Horizon's audit-events API"
)
_EVENTBRIDGE = (
    "{kind} is not supported: veba does not forward to AWS EventBridge. Deploy a"
    " function that forwards the events with boto3 (events.put_events), or use"
    " eventProcessor.type: knative with destination.uri set to an HTTP endpoint"
)


def _refuse_unsupported(doc: Mapping[str, Any], file: str) -> None:
    """VEBA's providers and processors that veba does not have, refused first with
    what to use instead (before any other complaint about their sections)."""
    provider, processor = doc.get("eventProvider"), doc.get("eventProcessor")
    if isinstance(provider, Mapping) and provider.get("type") == "horizon":
        raise ConfigError(file, "eventProvider.type", _HORIZON)
    # `aws_event_bridge` is VEBA's type; the appliance's installer calls it `aws`.
    if isinstance(processor, Mapping) and processor.get("type") in ("aws_event_bridge", "aws"):
        raise ConfigError(file, "eventProcessor.type", _EVENTBRIDGE.format(kind=processor["type"]))


def _section(doc: Mapping[str, Any], key: str, file: str) -> Mapping[str, Any] | None:
    value = doc.get(key)
    if value is None:
        return None
    return value  # type: ignore[no-any-return]


def _name(section: Mapping[str, Any], path: str, file: str) -> str:
    name = section.get("name")
    if not name:
        raise ConfigError(file, f"{path}.name", "required")
    return str(name)


def _type(section: Mapping[str, Any], path: str, known: Sequence[str], file: str) -> str:
    kind = section.get("type")
    if kind not in known:
        raise ConfigError(file, f"{path}.type", f"expected one of {', '.join(known)}, got {kind!r}")
    return str(kind)


def _body(section: Mapping[str, Any], path: str, kind: str, file: str) -> Mapping[str, Any]:
    body = section.get(kind)
    if not isinstance(body, Mapping):
        raise ConfigError(file, f"{path}.{kind}", f"required for type {kind}")
    others = [k for k in section if k not in ("type", "name", kind) and section[k] is not None]
    if others:
        raise ConfigError(file, f"{path}.{others[0]}", f"does not go with type {kind}; remove it")
    return body


def _basic_auth(
    body: Mapping[str, Any], path: str, file: str, *, required: bool = False
) -> BasicAuth | None:
    auth = body.get("auth")
    if auth is None:
        if required:
            raise ConfigError(file, f"{path}.auth", "required (basic_auth)")
        return None
    if auth.get("type", "basic_auth") != "basic_auth":
        raise ConfigError(
            file,
            f"{path}.auth.type",
            f"only basic_auth is supported here, got {auth.get('type')!r}",
        )
    basic = auth.get("basicAuth")
    if not isinstance(basic, Mapping):
        raise ConfigError(file, f"{path}.auth.basicAuth", "required for basic_auth")
    for key in ("username", "password"):
        if basic.get(key) in (None, ""):
            raise ConfigError(file, f"{path}.auth.basicAuth.{key}", "required")
    return BasicAuth(str(basic["username"]), str(basic["password"]))


def _address(body: Mapping[str, Any], path: str, file: str) -> str:
    value = body.get(path.rsplit(".", 1)[-1])
    if not value:
        raise ConfigError(file, path, "required (HOST:PORT)")
    host, sep, port = str(value).rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(file, path, f"expected HOST:PORT, like 0.0.0.0:8082; got {value!r}")
    return str(value)


def _url(value: Any, path: str, file: str) -> str:
    if isinstance(value, Mapping):  # url.URL as a YAML mapping: {scheme, host, path}
        value = (
            f"{value.get('scheme') or 'http'}://{value.get('host') or ''}{value.get('path') or ''}"
        )
    parts = urlsplit(str(value or ""))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(file, path, f"expected an http(s) URL, got {value!r}")
    return str(value)


def _provider(section: Mapping[str, Any], root_cas: tuple[str, ...], file: str) -> ApplianceConfig:
    path = "eventProvider"
    kind = _type(section, path, ("vcenter", "vcsim", "webhook"), file)
    name = _name(section, path, file)
    body = _body(section, path, kind, file)
    if kind == "webhook":
        bind = _address(body, f"{path}.webhook.bindAddress", file)
        hook_path = str(body.get("path") or "/webhook")
        if not hook_path.startswith("/"):
            raise ConfigError(
                file, f"{path}.webhook.path", f"must start with '/', got {hook_path!r}"
            )
        return ApplianceConfig(
            webhook=WebhookConfig(name, bind, hook_path, _basic_auth(body, f"{path}.webhook", file))
        )
    where = f"{path}.{kind}"
    address = _url(body.get("address"), f"{where}.address", file)
    auth = _basic_auth(body, where, file, required=True)
    assert auth is not None
    return ApplianceConfig(
        vcenters=(
            VCenterConfig(
                name=name,
                address=address,
                username=auth.username,
                password=auth.password,
                insecure_ssl=bool(body.get("insecureSSL", False)),
                root_cas=root_cas,
            ),
        )
    )


def _processor(section: Mapping[str, Any], file: str) -> Processor:
    path = "eventProcessor"
    kind = _type(section, path, ("openfaas", "knative"), file)
    name = _name(section, path, file)
    body = _body(section, path, kind, file)
    where = f"{path}.{kind}"
    if kind == "openfaas":
        address = body.get("address")
        return OpenFaaSConfig(
            name,
            _url(address, f"{where}.address", file) if address else None,
            bool(body.get("async", False)),
            _basic_auth(body, where, file),
        )
    destination = body.get("destination") or {}
    uri, ref = destination.get("uri"), destination.get("ref")
    if ref is not None and uri is not None:
        raise ConfigError(
            file, f"{where}.destination", "give destination.uri or destination.ref, not both"
        )
    if ref is not None:
        return OwnBroker(name, _broker_ref(ref, f"{where}.destination.ref", file))
    if uri is None:
        raise ConfigError(file, f"{where}.destination.uri", "required (or destination.ref)")
    encoding = str(body.get("encoding") or "structured")
    if encoding not in ("binary", "structured"):
        raise ConfigError(
            file, f"{where}.encoding", f"expected binary or structured, got {encoding!r}"
        )
    return KnativeConfig(
        name,
        _url(uri, f"{where}.destination.uri", file),
        encoding,
        bool(body.get("insecureSSL", False)),
        _basic_auth(body, where, file),
    )


def _broker_ref(ref: Mapping[str, Any], path: str, file: str) -> str:
    """A destination.ref must be a Knative Broker: veba is the broker. Anything else
    (a Service, a Channel) lives in a Kubernetes cluster veba cannot look into."""
    kind, api = str(ref.get("kind") or ""), str(ref.get("apiVersion") or "")
    if kind != "Broker" or not api.startswith("eventing.knative.dev/"):
        raise ConfigError(
            file,
            path,
            f"a {kind or 'ref without kind'} cannot be resolved: veba does not run in Kubernetes,"
            " so destination.ref can only name a Broker (apiVersion: eventing.knative.dev/v1,"
            " kind: Broker), which is this appliance; give anything else's URL as"
            " destination.uri",
        )
    if not ref.get("name"):
        raise ConfigError(file, f"{path}.name", "required")
    namespace = f"{ref['namespace']}/" if ref.get("namespace") else ""
    return f"Broker {namespace}{ref['name']}"


def vcenter_from_url(
    url: str,
    *,
    username: str | None = None,
    password_env: str | None = None,
    password_secret: str | None = None,
    insecure: bool = False,
    root_cas: Sequence[str] = (),
) -> VCenterConfig:
    """A vCenter from `veba serve --vcenter URL` (the user may be in the URL, never the
    password: that comes from an environment variable or a veba secret)."""
    parts = urlsplit(url)
    where = "--vcenter"
    if parts.password:
        raise ConfigError(
            where,
            url.replace(parts.password, "***"),
            "no password in the URL: use"
            " --vcenter-password-env VAR or --vcenter-password-secret NAME",
        )
    user = parts.username or username
    if not user:
        raise ConfigError(
            where, url, "no user: put it in the URL (https://USER@HOST/sdk) or give --vcenter-user"
        )
    netloc = parts.netloc.rpartition("@")[2]
    address = _url(parts._replace(netloc=netloc, path=parts.path or "/sdk").geturl(), url, where)
    if not password_env and not password_secret:
        raise ConfigError(
            where,
            url,
            "no password: give --vcenter-password-env VAR or --vcenter-password-secret NAME",
        )
    return VCenterConfig(
        name=netloc,
        address=address,
        username=user,
        password_env=password_env,
        password_secret=password_secret,
        insecure_ssl=insecure,
        root_cas=tuple(root_cas),
    )


_SELF_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "::", ""}
# The OpenFaaS gateway inside a VEBA appliance (v0.7), as its router config names it.
_VEBA_GATEWAYS = {"gateway.openfaas", "gateway.openfaas.svc", "gateway.openfaas.svc.cluster.local"}


def names_this_appliance(address: str | None, listen: str) -> bool:
    """Whether an OpenFaaS gateway address is this appliance (its own functions):
    none, VEBA's in-appliance gateway, or an address that reaches `listen`."""
    if not address:
        return True
    parts = urlsplit(address)
    hostname = parts.hostname or ""
    if _is_veba_gateway(hostname):
        return True
    host, _, port = listen.rpartition(":")
    listen_host = host.strip("[]")
    same_port = (parts.port or (443 if parts.scheme == "https" else 80)) == int(port)
    if not same_port:
        return False
    if hostname == listen_host:
        return True
    if listen_host not in _SELF_HOSTS:
        return False
    if hostname in _SELF_HOSTS:
        return True
    # Listening on every address: this machine's name or any of its addresses is it.
    wildcard = listen_host in ("0.0.0.0", "::", "")
    return wildcard and (hostname == socket.gethostname().lower() or _is_local_ip(hostname))


def _is_veba_gateway(hostname: str) -> bool:
    return hostname.lower().rstrip(".") in _VEBA_GATEWAYS


def _is_local_ip(host: str) -> bool:
    """Whether `host` is an IP address of this machine (it can be bound; no DNS)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((str(ip), 0))
        except OSError:
            return False
    return True
