"""function.yaml as VEBA v0.7-v0.8 shipped Knative functions: a Service and its Triggers.

The file is read as Kubernetes would read it, strictly: every field veba does not
know fails with its path (``Trigger/echo-trigger.spec.subscriber.ref.name``).
What each part becomes:

* the `serving.knative.dev/v1` **Service** is the function. Its container's
  `image` stands for the folder holding function.yaml (a `Procfile` with a `web`
  line, `requirements.txt`, the code); `env` (values and `secretKeyRef`s) and
  `envFrom` `secretRef`s become environment variables; the
  `autoscaling.knative.dev/minScale` and `maxScale` annotations bound its
  instances (minScale 1 when not given, veba's default; 0 scales to zero),
  `scale-down-delay` is how long an instance idles before it ends and `target`
  the requests one instance is meant for; `timeoutSeconds` the function
  timeout; `containerConcurrency` the requests in flight per instance.
* each `eventing.knative.dev/v1` **Trigger** subscribes it: `spec.filter.attributes`
  (exact matches, "" matching anything) or the newer `spec.filters` dialect.
  Several Triggers on one Service: the function gets an event once if any of
  them matches, and they must share one `spec.delivery` (retry, backoff,
  dead-letter sink), which applies as for every function.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from veba.delivery import DeliveryPolicy, PolicyError, parse_duration
from veba.functions.procfile import web_command
from veba.functions.stack import (
    DEFAULT_TIMEOUT,
    KNATIVE_LANG,
    FunctionSpec,
    Stack,
    StackError,
    function_name_problem,
    load_stack,
    load_yaml,
    substitute,
)
from veba.routing import SubscriptionError, compile_subscription
from veba.shapes import KNATIVE_SHAPE, SHAPE_ANNOTATION, parse_shape

__all__ = ["function_names", "is_knative", "load_functions", "load_knative"]

SERVING = "serving.knative.dev/v1"
EVENTING = "eventing.knative.dev/v1"
MIN_SCALE = ("autoscaling.knative.dev/minScale", "autoscaling.knative.dev/min-scale")
MAX_SCALE = ("autoscaling.knative.dev/maxScale", "autoscaling.knative.dev/max-scale")
SCALE_DOWN_DELAY = "autoscaling.knative.dev/scale-down-delay"
TARGET = "autoscaling.knative.dev/target"
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_RESERVED_ENV = ("PORT",)  # veba sets it, as Knative does

# Fields veba reads, and fields it accepts without use (they only matter on a cluster).
_OBJECT = {"apiVersion", "kind", "metadata", "spec"}
_METADATA = {"name", "namespace", "labels", "annotations", "generateName"}
_SERVICE_SPEC = {"template", "traffic"}
_TEMPLATE = {"metadata", "spec"}
_POD = {
    "containers", "containerConcurrency", "timeoutSeconds",
    "serviceAccountName", "imagePullSecrets", "enableServiceLinks",
    "responseStartTimeoutSeconds", "idleTimeoutSeconds",
}  # fmt: skip
_CONTAINER = {
    "image", "name", "env", "envFrom", "ports", "resources", "imagePullPolicy",
    "readinessProbe", "livenessProbe", "startupProbe", "securityContext",
}  # fmt: skip
_TRIGGER_SPEC = {"broker", "filter", "filters", "subscriber", "delivery"}
_NOT_HERE = {
    "command": "veba runs the Procfile's web command",
    "args": "veba runs the Procfile's web command",
    "volumeMounts": "functions get secrets as environment variables (envFrom, secretKeyRef)",
    "volumes": "functions get secrets as environment variables (envFrom, secretKeyRef)",
    "workingDir": "the function runs in its own folder",
}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "mapping", list: "list", str: "string", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


def _documents(text: str, file: str) -> list[Any]:
    documents: list[Any] = load_yaml(text, file, every_document=True)
    return documents


def is_knative(documents: list[Any]) -> bool:
    """Whether YAML documents are Knative objects (by apiVersion/kind, not file name)."""
    for doc in documents:
        if isinstance(doc, Mapping) and (
            str(doc.get("apiVersion", "")).split("/")[0].endswith("knative.dev")
            or (doc.get("kind") in ("Service", "Trigger") and "apiVersion" in doc)
        ):
            return True
    return False


def load_functions(path: Path, env: Mapping[str, str] | None = None) -> Stack:
    """The functions of a stack.yml or of a Knative function.yaml, told apart by content."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise StackError(str(path), "file", f"cannot read: {exc.strerror}") from None
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError:
        documents = []  # load_stack reports it with its line
    if is_knative(documents):
        return load_knative(path)
    return load_stack(path, env)


def function_names(path: Path, env: Mapping[str, str] | None = None) -> list[str]:
    """The names of the functions a stack.yml or function.yaml defines, and nothing
    else checked: enough to remove them, even when their code is gone or broken."""
    path = Path(path)
    file = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise StackError(file, "file", f"cannot read: {exc.strerror}") from None
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError:
        documents = []
    if is_knative(documents):
        reader = _Reader(file)
        return [
            reader.name(doc, f"documents[{i}]")
            for i, doc in enumerate(documents)
            if isinstance(doc, dict)
            and (doc.get("apiVersion"), doc.get("kind")) == (SERVING, "Service")
        ]
    stack = _documents(substitute(text, os.environ if env is None else env), file)
    functions = (
        stack[0].get("functions") if len(stack) == 1 and isinstance(stack[0], dict) else None
    )
    if not isinstance(functions, dict) or not functions:
        raise StackError(file, "functions", "expected a mapping of function names")
    return [str(name) for name in functions]


def load_knative(path: Path) -> Stack:
    """A function.yaml's Services, each with the Triggers that name it."""
    path = Path(path)
    file = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise StackError(file, "file", f"cannot read: {exc.strerror}") from None
    reader = _Reader(file)
    services: dict[str, tuple[str, dict[str, Any]]] = {}
    triggers: list[_Trigger] = []
    for index, doc in enumerate(_documents(text, file)):
        if doc is None:
            continue
        where = f"documents[{index}]"
        obj = reader.mapping(doc, where)
        api, kind = obj.get("apiVersion"), obj.get("kind")
        name = (
            obj.get("metadata", {}).get("name") if isinstance(obj.get("metadata"), dict) else None
        )
        ident = f"{kind}/{name}" if isinstance(name, str) and name else where
        if (api, kind) == (SERVING, "Service"):
            reader.known(obj, _OBJECT, ident)
            service_name = reader.name(obj, ident)
            if service_name in services:
                raise StackError(file, ident, f"a second Service named {service_name!r}")
            services[service_name] = (ident, obj)
        elif (api, kind) == (EVENTING, "Trigger"):
            reader.known(obj, _OBJECT, ident)
            triggers.append(reader.trigger(obj, ident))
        else:
            raise StackError(
                file,
                f"{where}.kind",
                f"{api} {kind} is not supported; a function.yaml holds a {SERVING} Service"
                f" and {EVENTING} Triggers (make secrets with `veba secret create`)",
            )
    if not services:
        raise StackError(file, "(top level)", f"no {SERVING} Service in this file")
    for trigger in triggers:
        if trigger.service not in services:
            names = ", ".join(repr(n) for n in services)
            raise StackError(
                file,
                f"{trigger.ident}.spec.subscriber.ref.name",
                f"names Service {trigger.service!r}, which is not in this file"
                f" (its Service: {names}); a Trigger here subscribes this file's function",
            )
    specs = {
        name: reader.service(obj, ident, path, [t for t in triggers if t.service == name])
        for name, (ident, obj) in services.items()
    }
    return Stack("knative", "knative", None, specs, path)


@dataclass(frozen=True)
class _Trigger:
    ident: str
    service: str
    expression: Any  # one filter expression, or None for every event
    delivery: dict[str, Any] = field(default_factory=dict)


class _Reader:
    """Field-by-field checks of one function.yaml; each failure names its path."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, where: str, reason: str) -> StackError:
        return StackError(self.file, where, reason)

    def mapping(self, value: Any, where: str, *, required: bool = False) -> dict[str, Any]:
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a mapping, got {_kind(value)}")
        return {str(k): v for k, v in value.items()}

    def known(self, obj: Mapping[str, Any], allowed: set[str], where: str) -> None:
        for key in obj:
            if key in _NOT_HERE:
                raise self.fail(f"{where}.{key}", f"not supported: {_NOT_HERE[key]}")
            if key not in allowed:
                raise self.fail(
                    f"{where}.{key}", f"unknown field; expected {', '.join(sorted(allowed))}"
                )

    def string(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(where, f"expected a non-empty string, got {_kind(value)}")
        return value

    def string_map(self, value: Any, where: str) -> dict[str, str]:
        out = {}
        for key, item in self.mapping(value, where).items():
            if isinstance(item, dict | list) or item is None:
                raise self.fail(f"{where}.{key}", f"expected a string, got {_kind(item)}")
            out[key] = "true" if item is True else "false" if item is False else str(item)
        return out

    def metadata(self, obj: Mapping[str, Any], where: str) -> dict[str, Any]:
        meta = self.mapping(obj.get("metadata"), f"{where}.metadata")
        self.known(meta, _METADATA, f"{where}.metadata")
        return meta

    def name(self, obj: Mapping[str, Any], where: str) -> str:
        """A Service's name: the function's, a DNS-1123 label as Knative requires."""
        name = self.metadata(obj, where).get("name")
        at = f"{where}.metadata.name"
        if name is None:
            raise self.fail(at, "missing; the function's name")
        if not isinstance(name, str) or function_name_problem(name):
            raise self.fail(
                at,
                "must be a DNS-1123 label: lower case letters, digits and '-', "
                "starting and ending with a letter or digit, at most 63 characters",
            )
        return name

    def object_name(self, obj: Mapping[str, Any], where: str) -> str:
        """Another object's name (a Trigger's): a DNS-1123 subdomain, as Kubernetes'."""
        name = self.metadata(obj, where).get("name")
        at = f"{where}.metadata.name"
        if name is None:
            raise self.fail(at, "missing")
        if not isinstance(name, str) or len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
            raise self.fail(
                at, "must be lower case letters, digits, '-' and '.' (a DNS-1123 subdomain)"
            )
        return name

    # -- Trigger ------------------------------------------------------------------------

    def trigger(self, obj: Mapping[str, Any], ident: str) -> _Trigger:
        self.object_name(obj, ident)
        spec = self.mapping(obj.get("spec"), f"{ident}.spec", required=True)
        self.known(spec, _TRIGGER_SPEC, f"{ident}.spec")
        self.string(spec.get("broker"), f"{ident}.spec.broker")
        service = self.subscriber(spec.get("subscriber"), f"{ident}.spec.subscriber")
        if spec.get("filter") is not None and spec.get("filters") is not None:
            raise self.fail(f"{ident}.spec.filters", "give spec.filter or spec.filters, not both")
        expression = self.filter(spec, ident)
        delivery = self.mapping(spec.get("delivery"), f"{ident}.spec.delivery")
        try:
            DeliveryPolicy.parse(delivery, where=f"{ident}.spec.delivery")
        except PolicyError as exc:
            at, _, reason = str(exc).partition(": ")
            raise self.fail(at, reason) from None
        return _Trigger(ident, service, expression, delivery)

    def subscriber(self, value: Any, where: str) -> str:
        subscriber = self.mapping(value, where, required=True)
        if "uri" in subscriber and "ref" not in subscriber:
            raise self.fail(
                f"{where}.uri",
                "not supported: a Trigger here subscribes this file's Service (subscriber.ref);"
                " for an outside sink use a RouterConfig knative processor",
            )
        self.known(subscriber, {"ref"}, where)
        ref = self.mapping(subscriber.get("ref"), f"{where}.ref", required=True)
        self.known(ref, {"apiVersion", "kind", "name", "namespace"}, f"{where}.ref")
        if ref.get("kind") != "Service" or ref.get("apiVersion") != SERVING:
            raise self.fail(
                f"{where}.ref",
                f"must reference a {SERVING} Service, got"
                f" {ref.get('apiVersion')} {ref.get('kind')}",
            )
        return self.string(ref.get("name"), f"{where}.ref.name")

    def filter(self, spec: Mapping[str, Any], ident: str) -> Any:
        """One filter expression for the Trigger; None when it takes every event."""
        if spec.get("filters") is not None:
            filters = spec["filters"]
            where = f"{ident}.spec"
            if not isinstance(filters, list):
                raise self.fail(f"{where}.filters", f"expected a list, got {_kind(filters)}")
            expression: Any = {"all": filters} if len(filters) > 1 else (filters or [None])[0]
        else:
            where = f"{ident}.spec.filter"
            raw = self.mapping(spec.get("filter"), where)
            self.known(raw, {"attributes"}, where)
            attributes = self.string_map(raw.get("attributes"), f"{where}.attributes")
            # Knative: an attribute with the value "" matches any value.
            exact = {k: v for k, v in attributes.items() if v != ""}
            filters = [{"exact": exact}] if exact else []
            expression = filters[0] if filters else None
            where = f"{ident}.spec.filter.attributes"
        if expression is not None:
            try:
                compile_subscription("check", None, filters, where=where)
            except SubscriptionError as exc:
                at, _, reason = str(exc).partition(": ")
                raise self.fail(at, reason) from None
        return expression

    # -- Service ------------------------------------------------------------------------

    def service(
        self, obj: Mapping[str, Any], ident: str, path: Path, triggers: list[_Trigger]
    ) -> FunctionSpec:
        name = self.name(obj, ident)
        meta = self.metadata(obj, ident)
        labels = self.string_map(meta.get("labels"), f"{ident}.metadata.labels")
        annotations = self.string_map(meta.get("annotations"), f"{ident}.metadata.annotations")
        shape = self.shape(annotations, f"{ident}.metadata.annotations")
        spec = self.mapping(obj.get("spec"), f"{ident}.spec", required=True)
        self.known(spec, _SERVICE_SPEC, f"{ident}.spec")
        where = f"{ident}.spec.template"
        template = self.mapping(spec.get("template"), where, required=True)
        self.known(template, _TEMPLATE, where)
        tmeta = self.mapping(template.get("metadata"), f"{where}.metadata")
        self.known(tmeta, _METADATA, f"{where}.metadata")
        scale = self.string_map(tmeta.get("annotations"), f"{where}.metadata.annotations")
        workers, most, idle, target = self.scale(scale, f"{where}.metadata.annotations")
        pod = self.mapping(template.get("spec"), f"{where}.spec", required=True)
        self.known(pod, _POD, f"{where}.spec")
        timeout = self.seconds(pod.get("timeoutSeconds"), f"{where}.spec.timeoutSeconds")
        concurrency = self.whole(
            pod.get("containerConcurrency", 0), f"{where}.spec.containerConcurrency", 0
        )
        containers = pod.get("containers")
        if not isinstance(containers, list) or len(containers) != 1:
            raise self.fail(
                f"{where}.spec.containers",
                f"expected a list of one container, got {_kind(containers)}"
                + (f" of {len(containers)}" if isinstance(containers, list) else ""),
            )
        at = f"{where}.spec.containers[0]"
        container = self.mapping(containers[0], at, required=True)
        self.known(container, _CONTAINER, at)
        image = self.string(container.get("image"), f"{at}.image")
        folder = path.resolve().parent
        web_command(folder)  # a Procfile with a web line, or a clear error now
        environment, secret_env = self.env(container.get("env"), f"{at}.env")
        env_from = self.env_from(container.get("envFrom"), f"{at}.envFrom")
        secrets = [e["secret"] for e in env_from] + [v["secret"] for v in secret_env.values()]
        topic, filters, delivery = self.subscription(triggers)
        if "timeout" in delivery:
            timeout = DeliveryPolicy.parse(delivery, where="delivery").timeout
        return FunctionSpec(
            name=name,
            lang=KNATIVE_LANG,
            handler=folder,
            image=image,
            environment=environment,
            secrets=list(dict.fromkeys(secrets)),
            labels=labels,
            annotations=annotations,
            topic=topic,
            filters=filters,
            delivery=delivery,
            workers=workers,
            max_workers=most,
            idle=idle,
            target=target,
            timeout=timeout,
            stack_file=path,
            shape=shape,
            secret_env=secret_env,
            env_from=env_from,
            concurrency=concurrency,
        )

    def shape(self, annotations: Mapping[str, str], where: str) -> str:
        raw = annotations.get(SHAPE_ANNOTATION)
        if raw is None:
            return KNATIVE_SHAPE
        try:
            return parse_shape(raw)
        except ValueError as exc:
            raise self.fail(f"{where}.{SHAPE_ANNOTATION}", str(exc)) from None

    def whole(self, value: Any, where: str, minimum: int) -> int:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(where, f"expected a whole number >= {minimum}, got {value!r}")
        return value

    def seconds(self, value: Any, where: str) -> float:
        if value is None:
            return DEFAULT_TIMEOUT
        return float(self.whole(value, where, 1))

    def scale(
        self, annotations: Mapping[str, str], where: str
    ) -> tuple[int, int, float | None, int]:
        """(minScale, maxScale, scale-down-delay, target): the instances' bounds,
        how long one idles before it ends, the requests one is meant for."""
        low = next((k for k in MIN_SCALE if k in annotations), None)
        high = next((k for k in MAX_SCALE if k in annotations), None)
        # Not given: one warm instance (veba's default, where Knative's is zero).
        minimum = self.whole(annotations[low], f"{where}.{low}", 0) if low else 1
        maximum = self.whole(annotations[high], f"{where}.{high}", 0) if high else 0
        if maximum and minimum > maximum:
            raise self.fail(f"{where}.{low}", f"minScale {minimum} is above maxScale {maximum}")
        if minimum > 64 or maximum > 64:
            raise self.fail(f"{where}.{high if maximum > 64 else low}", "at most 64 instances")
        idle = None
        if SCALE_DOWN_DELAY in annotations:
            try:
                idle = parse_duration(annotations[SCALE_DOWN_DELAY], "")
            except PolicyError as exc:
                raise self.fail(f"{where}.{SCALE_DOWN_DELAY}", exc.reason) from None
        target = self.whole(annotations.get(TARGET, 0), f"{where}.{TARGET}", 0)
        return minimum, maximum or max(minimum, 1), idle, target

    def env(self, value: Any, where: str) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
        if value is None:
            return {}, {}
        if not isinstance(value, list):
            raise self.fail(where, f"expected a list of {{name, value}}, got {_kind(value)}")
        plain: dict[str, str] = {}
        secret: dict[str, dict[str, Any]] = {}
        for i, raw in enumerate(value):
            at = f"{where}[{i}]"
            item = self.mapping(raw, at, required=True)
            self.known(item, {"name", "value", "valueFrom"}, at)
            name = self.env_name(item.get("name"), f"{at}.name")
            if "valueFrom" in item:
                source = self.mapping(item["valueFrom"], f"{at}.valueFrom", required=True)
                if set(source) != {"secretKeyRef"}:
                    other = next(iter(sorted(set(source) - {"secretKeyRef"})), "secretKeyRef")
                    raise self.fail(
                        f"{at}.valueFrom.{other}",
                        "not supported; veba takes values from secrets (secretKeyRef)",
                    )
                ref_at = f"{at}.valueFrom.secretKeyRef"
                ref = self.mapping(source["secretKeyRef"], ref_at, required=True)
                self.known(ref, {"name", "key", "optional"}, ref_at)
                secret[name] = {
                    "secret": self.string(ref.get("name"), f"{ref_at}.name"),
                    "key": self.string(ref.get("key"), f"{ref_at}.key"),
                    "optional": self.boolean(ref.get("optional"), f"{ref_at}.optional"),
                }
                plain.pop(name, None)
            else:
                text = item.get("value", "")
                if isinstance(text, dict | list):
                    raise self.fail(f"{at}.value", f"expected a string, got {_kind(text)}")
                plain[name] = "" if text is None else str(text)
                secret.pop(name, None)
        return plain, secret

    def env_from(self, value: Any, where: str) -> list[dict[str, Any]]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(
                where, f"expected a list of {{secretRef: {{name}}}}, got {_kind(value)}"
            )
        out = []
        for i, raw in enumerate(value):
            at = f"{where}[{i}]"
            item = self.mapping(raw, at, required=True)
            if "configMapRef" in item:
                raise self.fail(
                    f"{at}.configMapRef", "not supported; veba takes variables from secrets"
                )
            self.known(item, {"secretRef", "prefix"}, at)
            ref = self.mapping(item.get("secretRef"), f"{at}.secretRef", required=True)
            self.known(ref, {"name", "optional"}, f"{at}.secretRef")
            prefix = item.get("prefix", "")
            if not isinstance(prefix, str):
                raise self.fail(f"{at}.prefix", f"expected a string, got {_kind(prefix)}")
            out.append(
                {
                    "secret": self.string(ref.get("name"), f"{at}.secretRef.name"),
                    "prefix": prefix,
                    "optional": self.boolean(ref.get("optional"), f"{at}.secretRef.optional"),
                }
            )
        return out

    def env_name(self, value: Any, where: str) -> str:
        name = self.string(value, where)
        if not _ENV_NAME.match(name):
            raise self.fail(where, f"{name!r} is not a valid environment variable name")
        if name in _RESERVED_ENV:
            raise self.fail(where, f"{name} is set by veba (the port the function listens on)")
        return name

    def boolean(self, value: Any, where: str) -> bool:
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self.fail(where, f"expected true or false, got {_kind(value)}")
        return value

    def subscription(self, triggers: list[_Trigger]) -> tuple[str | None, Any, dict[str, Any]]:
        """(topic, filters, delivery) of a Service: an event once if any Trigger matches."""
        delivery: dict[str, Any] = triggers[0].delivery if triggers else {}
        for trigger in triggers[1:]:
            if trigger.delivery != delivery:
                raise self.fail(
                    f"{trigger.ident}.spec.delivery",
                    f"differs from {triggers[0].ident}'s; the Triggers of one Service share"
                    " one delivery policy in veba (the function gets each event once)",
                )
        if not triggers:
            return None, None, delivery  # invoke only
        if any(t.expression is None for t in triggers):
            return "*", None, delivery
        expressions = [t.expression for t in triggers]
        filters = [expressions[0] if len(expressions) == 1 else {"any": expressions}]
        return None, filters, delivery
