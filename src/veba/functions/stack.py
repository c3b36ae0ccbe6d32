"""stack.yml as faas-cli writes it, checked with one clear error per mistake.

(`FunctionSpec` also describes a Knative function.yaml's Service, see
`veba.functions.knative`.)

Every error names the file and the field path (``functions.tag-vm.lang``) so a
user can go straight to the line; see `StackError`.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from veba.delivery import DeliveryPolicy, PolicyError, parse_duration
from veba.functions.build import not_code
from veba.routing import SubscriptionError, compile_subscription
from veba.shapes import SHAPE_ANNOTATION, parse_shape
from veba.yamlnodes import AliasLoop, nodes

__all__ = [
    "ALL_LANGS",
    "KNATIVE_LANG",
    "LANGS",
    "FunctionSpec",
    "Stack",
    "StackError",
    "check_handler_syntax",
    "function_name_problem",
    "load_stack",
    "load_yaml",
]

LANGS = ("python3", "python3-flask", "python3-http", "veba-cloudevent")
# OpenFaaS's Debian-based templates run the same handlers as their base template,
# and its classic `python` template (Python 2 in its day) has python3's conventions.
LANG_ALIASES = {
    "python": "python3",
    "python3-debian": "python3",
    "python3-http-debian": "python3-http",
    "python3-flask-debian": "python3-flask",
}
# Every template name a stack.yml may use, for messages and `veba template list`.
ALL_LANGS = (*LANGS, *LANG_ALIASES)
# A function.yaml Service: a Procfile `web` process spoken to over HTTP, not a handler.
KNATIVE_LANG = "knative"
DEFAULT_TIMEOUT = 30.0
SCALE_MIN_LABEL = "com.openfaas.scale.min"
FILTERS_ANNOTATION = "veba.filters"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_LABEL_RULE = (
    "a function name must be a DNS-1123 label: lower case letters, digits and '-',"
    " starting and ending with a letter or digit, at most 63 characters"
)

# Every field faas-cli's stack.yml schema has (openfaas/go-sdk stack/schema.go, and the
# older registry_auth / provider.network / templates[].path), plus veba's own. A
# misspelt one fails with a suggestion: an `anotations:` would silently leave the
# function without a topic. Fields in the *_UNUSED sets only matter when building
# images; they are accepted, as faas-cli would, and ignored without a word.
_TOP = {"version", "provider", "functions", "configuration"}
_PROVIDER = {"name", "gateway", "network"}
_CONFIGURATION = {"templates", "copy"}
_TEMPLATE_SOURCE = {"name", "source", "path"}
_RESOURCES = {"memory", "cpu"}
_FUNCTION_USED = (
    "lang", "handler", "image", "environment", "environment_file", "secrets",
    "labels", "annotations", "limits", "delivery", "filters",
)  # fmt: skip
_FUNCTION_UNUSED = {
    "fprocess", "skip_build", "constraints", "requests", "readonly_root_filesystem",
    "build_options", "build_args", "build_secrets", "platforms", "namespace",
    "registry_auth",
}  # fmt: skip
_FUNCTION_SHOWN = ", ".join(_FUNCTION_USED) + "; and faas-cli's image build fields"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class StackError(ValueError):
    """A stack.yml mistake: ``str()`` is ``<file>: <field path>: <reason>``."""

    def __init__(self, file: str, field: str, reason: str) -> None:
        super().__init__(f"{file}: {field}: {reason}")
        self.file = file
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    lang: str
    handler: Path
    image: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)
    # Raw subscription and delivery settings, validated by routing and dispatch.
    topic: str | None = None
    filters: Any = None
    delivery: dict[str, Any] = field(default_factory=dict)
    workers: int = 1
    timeout: float = DEFAULT_TIMEOUT
    stack_file: Path | None = None  # where the spec came from, for error messages
    # The VEBA event shape it gets (v0.7 / v0.8); None: its kind's default.
    shape: str | None = None
    # Knative only: environment variables from secrets, as Kubernetes sets them
    # (`{"VAR": {"secret": s, "key": k, "optional": b}}`, `[{"secret": s, "prefix": p,
    # "optional": b}]`), and requests in flight per instance (0: no limit).
    secret_env: dict[str, dict[str, Any]] = field(default_factory=dict)
    env_from: list[dict[str, Any]] = field(default_factory=list)
    concurrency: int = 0
    # Knative only (a stack.yml's are its labels, read at deploy): the most
    # instances, how long one idles before it ends (None: veba's default), and
    # the requests one is meant for (0: Knative's default).
    max_workers: int = 0
    idle: float | None = None
    target: int = 0


@dataclass(frozen=True)
class Stack:
    version: str
    provider_name: str
    gateway: str | None
    functions: dict[str, FunctionSpec]
    path: Path


def substitute(text: str, env: Mapping[str, str]) -> str:
    """``${VAR}`` and ``${VAR:-default}`` as faas-cli expands them; unset is empty."""

    def value(m: re.Match[str]) -> str:
        got = env.get(m.group(1))
        if got:
            return got
        return m.group(2) if m.group(2) is not None else (got or "")

    return _VAR.sub(value, text)


def load_stack(path: Path, env: Mapping[str, str] | None = None) -> Stack:
    path = Path(path)
    file = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise StackError(file, "file", f"cannot read: {exc.strerror}") from None
    doc = load_yaml(substitute(text, os.environ if env is None else env), file)
    if not isinstance(doc, dict):
        raise StackError(file, "(top level)", f"expected a mapping, got {_kind(doc)}")
    _check_values(doc, file)
    checker = _Checker(file, path.resolve().parent, path)
    checker.known(doc, _TOP, "")
    version = doc.get("version", "1.0")
    if not isinstance(version, str | int | float) or isinstance(version, bool):
        raise StackError(file, "version", f"expected a string, got {_kind(version)}")
    provider = checker.mapping(doc.get("provider"), "provider")
    checker.known(provider, _PROVIDER, "provider")
    checker.configuration(doc.get("configuration"))
    provider_name = checker.string(provider.get("name", "openfaas"), "provider.name")
    gateway = checker.optional_string(provider.get("gateway"), "provider.gateway")
    if "functions" not in doc:
        raise StackError(file, "functions", "missing; a stack needs at least one function")
    functions = doc["functions"]
    if not isinstance(functions, dict):
        raise StackError(
            file, "functions", f"expected a mapping of function names, got {_kind(functions)}"
        )
    specs = {str(name): checker.function(str(name), body) for name, body in functions.items()}
    return Stack(str(version), provider_name, gateway, specs, path)


def load_yaml(text: str, file: str, *, every_document: bool = False) -> Any:
    """One YAML document (or, with ``every_document``, the list of all of them); a
    syntax error is a `StackError` naming the line."""
    try:
        return list(yaml.safe_load_all(text)) if every_document else yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}" if mark else "(yaml)"
        raise StackError(file, where, f"invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise StackError(file, "(yaml)", f"invalid YAML: {exc}") from None
    except RecursionError:  # PyYAML's parser recurses once per nesting level
        raise StackError(file, "(yaml)", "invalid YAML: nested too deeply") from None


def _check_values(doc: Any, file: str) -> None:
    """What YAML can say but a stack cannot mean: an alias that contains itself
    (`&x [*x]`), and .nan or .inf, which JSON (the deploy request) cannot carry."""
    try:
        for where, value in nodes(doc):
            if isinstance(value, float) and not math.isfinite(value):
                raise StackError(file, where, f"expected a finite number, got {value}")
    except AliasLoop as exc:
        raise StackError(file, exc.path, "a YAML alias that contains itself") from None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "mapping", list: "list", str: "string", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


class _Checker:
    """Field-by-field checks of one stack file; each failure names its field path."""

    def __init__(self, file: str, base: Path, path: Path) -> None:
        self.file = file
        self.base = base
        self.path = path

    def fail(self, where: str, reason: str) -> StackError:
        return StackError(self.file, where, reason)

    def known(
        self,
        value: Mapping[Any, Any],
        allowed: Collection[str],
        where: str,
        shown: str | None = None,
    ) -> None:
        """Refuse a field the schema does not have, suggesting the one meant;
        `shown` is what the message lists as known (default: `allowed`)."""
        for key in value:
            if str(key) not in allowed:
                raise self.fail(
                    f"{where}.{key}" if where else str(key),
                    unknown_field(str(key), allowed, shown),
                )

    def configuration(self, value: Any) -> None:
        """faas-cli's `configuration` (template sources, extra paths): checked, not used."""
        config = self.mapping(value, "configuration")
        self.known(config, _CONFIGURATION, "configuration")
        templates = config.get("templates")
        if templates is not None and not isinstance(templates, list):
            raise self.fail("configuration.templates", f"expected a list, got {_kind(templates)}")
        for i, item in enumerate(templates or []):
            where = f"configuration.templates[{i}]"
            self.known(self.mapping(item, where), _TEMPLATE_SOURCE, where)
        self.strings(config.get("copy"), "configuration.copy")

    def mapping(self, value: Any, where: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a mapping, got {_kind(value)}")
        return {str(k): v for k, v in value.items()}

    def string(self, value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise self.fail(where, f"expected a string, got {_kind(value)}")
        return value

    def optional_string(self, value: Any, where: str) -> str | None:
        return None if value is None else self.string(value, where)

    def strings(self, value: Any, where: str) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(where, f"expected a list of strings, got {_kind(value)}")
        return [self.string(item, f"{where}[{i}]") for i, item in enumerate(value)]

    def string_map(self, value: Any, where: str) -> dict[str, str]:
        """A Go ``map[string]string``: scalars become their YAML spelling."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a mapping of names to values, got {_kind(value)}")
        out = {}
        for key, item in value.items():
            if isinstance(item, dict | list):
                raise self.fail(
                    f"{where}.{key}", f"expected a string, number or boolean, got {_kind(item)}"
                )
            if isinstance(item, bool):
                item = "true" if item else "false"
            out[str(key)] = "" if item is None else str(item)
        return out

    def function(self, name: str, body: Any) -> FunctionSpec:
        where = f"functions.{name}"
        problem = function_name_problem(name)
        if problem:
            raise self.fail(where, problem)
        fn = self.mapping(body, where)
        self.known(fn, {*_FUNCTION_USED, *_FUNCTION_UNUSED}, where, _FUNCTION_SHOWN)
        for resources in ("limits", "requests"):
            self.known(
                self.mapping(fn.get(resources), f"{where}.{resources}"),
                _RESOURCES,
                f"{where}.{resources}",
            )
        lang = self.lang(fn.get("lang"), f"{where}.lang")
        handler = self.handler(fn.get("handler"), f"{where}.handler")
        environment = self.environment_files(fn.get("environment_file"), where)
        environment.update(self.string_map(fn.get("environment"), f"{where}.environment"))
        labels = self.string_map(fn.get("labels"), f"{where}.labels")
        annotations = self.string_map(fn.get("annotations"), f"{where}.annotations")
        delivery = self.mapping(fn.get("delivery"), f"{where}.delivery")
        shape = annotations.get(SHAPE_ANNOTATION)
        if shape is not None:
            try:
                parse_shape(shape)
            except ValueError as exc:
                raise self.fail(f"{where}.annotations.{SHAPE_ANNOTATION}", str(exc)) from None
        filters = self.filters(fn, annotations, where)
        timeout = self.timeout(delivery, environment, where)
        self.subscription(name, annotations.get("topic"), filters, fn, where, delivery, timeout)
        return FunctionSpec(
            name=name,
            lang=lang,
            handler=handler,
            image=self.optional_string(fn.get("image"), f"{where}.image"),
            environment=environment,
            secrets=self.strings(fn.get("secrets"), f"{where}.secrets"),
            labels=labels,
            annotations=annotations,
            limits=self.mapping(fn.get("limits"), f"{where}.limits"),
            topic=annotations.get("topic"),
            filters=filters,
            delivery=delivery,
            workers=self.workers(labels, f"{where}.labels.{SCALE_MIN_LABEL}"),
            timeout=timeout,
            stack_file=self.path,
            shape=shape,
        )

    def lang(self, value: Any, where: str) -> str:
        expected = f"expected one of {', '.join(ALL_LANGS)}"
        if value is None:
            raise self.fail(where, f"missing; {expected}")
        lang = LANG_ALIASES.get(value, value) if isinstance(value, str) else value
        if lang not in LANGS:
            raise self.fail(where, f"unknown lang {value!r}; {expected}")
        return str(lang)

    def handler(self, value: Any, where: str) -> Path:
        if value is None:
            raise self.fail(where, "missing; the folder that holds handler.py")
        try:
            folder = (self.base / self.string(value, where)).resolve()
        except ValueError:  # a NUL byte: no path can hold one
            raise self.fail(where, f"{value!r} is not a folder name") from None
        if not folder.is_dir():
            raise self.fail(where, f"folder {value} does not exist")
        if not (folder / "handler.py").is_file():
            raise self.fail(where, f"{value} has no handler.py")
        return folder

    def environment_files(self, value: Any, where: str) -> dict[str, str]:
        merged: dict[str, str] = {}
        for i, name in enumerate(self.strings(value, f"{where}.environment_file")):
            at = f"{where}.environment_file[{i}]"
            path = self.base / name
            try:
                text = path.read_text()
            except FileNotFoundError:
                raise self.fail(at, f"file {name} does not exist") from None
            except OSError as exc:
                raise self.fail(at, f"cannot read {name}: {exc.strerror}") from None
            except ValueError:  # a NUL byte in the name
                raise self.fail(at, f"{name!r} is not a file name") from None
            try:
                doc = load_yaml(text, name)
            except StackError as exc:
                raise self.fail(at, f"{name} {exc.field}: {exc.reason}") from None
            # faas-cli's format is {"environment": {...}}; a bare mapping is accepted too.
            if isinstance(doc, dict) and "environment" in doc:
                doc = doc["environment"]
            merged.update(self.string_map(doc, f"{at}.environment"))
        return merged

    def filters(self, fn: dict[str, Any], annotations: dict[str, str], where: str) -> Any:
        if fn.get("filters") is not None:
            return fn["filters"]
        text = annotations.get(FILTERS_ANNOTATION)
        if text is None:
            return None
        try:
            return json.loads(text)
        except ValueError as exc:
            raise self.fail(
                f"{where}.annotations.{FILTERS_ANNOTATION}", f"invalid JSON: {exc}"
            ) from None

    def subscription(
        self,
        name: str,
        topic: str | None,
        filters: Any,
        fn: dict[str, Any],
        where: str,
        delivery: dict[str, Any],
        timeout: float,
    ) -> None:
        """Compile the subscription and the delivery policy as a deploy will, so a
        mistake in either is reported here, with the file, not by the appliance."""
        # Filters name their own path: `filters[0]` under the function, or under the
        # `veba.filters` annotation they were read from.
        filters_at = where if fn.get("filters") is not None else f"{where}.annotations.veba"
        try:
            compile_subscription(name, topic, filters, where=filters_at)
            DeliveryPolicy.parse(delivery, where=f"{where}.delivery", default_timeout=timeout)
        except (SubscriptionError, PolicyError) as exc:
            field, _, reason = str(exc).partition(": ")
            raise self.fail(field, reason) from None

    def workers(self, labels: dict[str, str], where: str) -> int:
        raw = labels.get(SCALE_MIN_LABEL)
        if raw is None:
            return 1
        try:
            workers = int(raw)
        except ValueError:
            raise self.fail(where, f"expected a whole number, got {raw!r}") from None
        if workers < 1:
            raise self.fail(where, f"must be at least 1, got {workers}")
        return workers

    def timeout(self, delivery: dict[str, Any], environment: dict[str, str], where: str) -> float:
        if delivery.get("timeout") is not None:
            at, value = f"{where}.delivery.timeout", delivery["timeout"]
        elif "exec_timeout" in environment:
            at, value = f"{where}.environment.exec_timeout", environment["exec_timeout"]
        else:
            return DEFAULT_TIMEOUT
        try:
            seconds = parse_duration(value, at)
        except PolicyError as exc:
            raise self.fail(at, exc.reason) from None
        if seconds <= 0:
            raise self.fail(at, f"must be greater than zero, got {value!r}")
        return seconds


def function_name_problem(name: str) -> str | None:
    """Why `name` cannot name a function (None if it can): faas-cli's and
    Kubernetes' rule, since VEBA's functions were Kubernetes objects."""
    if len(name) > 63 or not _DNS_LABEL.fullmatch(name):
        return DNS_LABEL_RULE
    return None


def unknown_field(key: str, known: Collection[str], shown: str | None = None) -> str:
    """`unknown field 'anotations'; did you mean 'annotations'? (known here: ...)`."""
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown field {key!r}{hint} (known here: {shown or ', '.join(known)})"


def check_handler_syntax(spec: FunctionSpec) -> None:
    """Compile the handler's Python files so a syntax error is reported at load time."""
    base = spec.stack_file.resolve().parent if spec.stack_file else spec.handler
    file = str(spec.stack_file) if spec.stack_file else str(spec.handler / "handler.py")
    where = f"functions.{spec.name}.handler"
    if spec.lang == KNATIVE_LANG:
        where = f"Service/{spec.name}.spec.template.spec.containers[0].image"
    for path in _python_files(spec.handler, with_handler=spec.lang != KNATIVE_LANG):
        shown = "./" + os.path.relpath(path, base)
        try:
            source = path.read_bytes()
            compile(source, str(path), "exec", dont_inherit=True)
        except SyntaxError as exc:
            kind = type(exc).__name__
            raise StackError(file, where, f"{shown} line {exc.lineno}: {kind}: {exc.msg}") from None
        except (ValueError, OSError) as exc:  # null bytes, unreadable file
            raise StackError(file, where, f"{shown}: {exc}") from None


def _python_files(folder: Path, *, with_handler: bool = True) -> list[Path]:
    files = [folder / "handler.py"] if with_handler else []
    for root, dirs, names in os.walk(folder):
        # Skip what is not the function's own code: venvs, caches, hidden folders.
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".")
            and d not in ("node_modules", "venv", "site-packages")
            and not not_code(folder, (Path(root) / d).relative_to(folder))
        )
        files += [Path(root) / n for n in sorted(names) if n.endswith(".py")]
    return list(dict.fromkeys(files))
