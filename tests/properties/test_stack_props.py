"""stack.yml as a property: any YAML document either loads or fails with a
`StackError` naming the file and a field path, and what loads either deploys
or is refused with a `DeployError` naming the field: never another exception,
which the CLI would show as a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from hypothesis import event, example, given
from hypothesis import strategies as st

from tests.properties.strategies import any_text, json_values, maybe, without_missing, yaml_values
from veba.cli.functions import _payload
from veba.deployments import DeployError, FunctionDefinition
from veba.functions.stack import ALL_LANGS, Stack, StackError, load_stack

ENV = {"HOME": "/home/me", "TOPIC": "VmPoweredOnEvent", "EMPTY": ""}

durations = st.sampled_from(["PT10S", "10s", "1m30s", "PT0.5S", 2, 0.25])
bad_durations = st.one_of(
    st.sampled_from(["PT", "P1W", "nan", "inf", "-1", "0", "1e400", "soon"]),
    st.integers(min_value=-5, max_value=10**400),
    st.floats(),
)
delivery = st.fixed_dictionaries(
    {},
    optional={
        "retry": maybe(st.integers(0, 10), st.integers(-2, 10**30) | yaml_values(2)),
        "backoffPolicy": maybe(st.sampled_from(["exponential", "linear"]), st.just("fibonacci")),
        "backoffDelay": maybe(durations, bad_durations),
        "backoffCap": maybe(durations, bad_durations),
        "jitter": maybe(st.sampled_from([0, 0.2, 0.5]), st.floats() | st.integers(-1, 2)),
        "timeout": maybe(durations, bad_durations),
        "deadLetterSink": maybe(
            st.sampled_from(["http://dls:8080", {"uri": "https://x"}]),
            st.sampled_from(["ftp://x", {"url": "http://x"}]) | yaml_values(2),
        ),
        "maxInflight": maybe(st.integers(1, 100), st.integers(-1, 0) | yaml_values(2)),
        "orderingKey": maybe(st.just("data.Vm.Vm.Value"), st.sampled_from(["", "  "])),
        "backoff": yaml_values(3),
    },
)
filters = st.one_of(
    st.just([{"exact": {"type": "com.vmware.event.router/event"}}]),
    st.lists(
        st.dictionaries(
            st.sampled_from(["exact", "prefix", "all", "any", "not", "cesql"]),
            json_values(4),
            max_size=2,
        ),
        max_size=2,
    ),
)
function_bodies = st.fixed_dictionaries(
    {
        "lang": maybe(st.sampled_from(ALL_LANGS), st.sampled_from(["node14", "python27"])),
        "handler": maybe(
            st.sampled_from(["./fn", "fn"]),
            st.sampled_from(["./missing", "./empty", "/", "./fn\x00x"]) | yaml_values(2),
        ),
    },
    optional={
        "image": maybe(any_text),
        "environment": maybe(st.dictionaries(any_text, yaml_values(3), max_size=3)),
        "environment_file": maybe(
            st.lists(st.just("env.yml"), max_size=1),
            st.lists(st.sampled_from(["bad.yml", "gone.yml", "x\x00"]), min_size=1, max_size=2),
        ),
        "secrets": maybe(st.lists(any_text, max_size=2)),
        "labels": maybe(
            st.dictionaries(
                st.sampled_from(["com.openfaas.scale.min", "team"]),
                st.sampled_from(["1", "2", 3]),
                max_size=2,
            ),
            st.fixed_dictionaries(
                {"com.openfaas.scale.min": st.sampled_from(["0", "-1", "two", "9" * 30])}
            )
            | yaml_values(3),
        ),
        "annotations": maybe(
            st.dictionaries(
                st.sampled_from(["topic", "note"]),
                st.sampled_from(["VmPoweredOnEvent", "*", "${TOPIC}", "a,b", ""]),
                max_size=2,
            ),
            st.dictionaries(
                st.sampled_from(["topic", "veba.filters"]),
                st.sampled_from(["[{", '[{"exact": {}}]', '{"any": []}']) | yaml_values(2),
                max_size=2,
            ),
        ),
        "filters": maybe(filters),
        "delivery": maybe(delivery),
        "limits": maybe(st.just({"memory": "128Mi"})),
    },
)
documents = st.fixed_dictionaries(
    {
        "functions": maybe(
            st.dictionaries(
                st.sampled_from(["fn", "tag-vm", "a1"]),
                function_bodies,
                min_size=1,
                max_size=2,
            ),
            st.dictionaries(
                st.sampled_from(["Bad_Name", "a" * 64, "-x"]) | st.integers(0, 3),
                function_bodies,
                max_size=2,
            )
            | yaml_values(3),
        ),
    },
    optional={
        "version": maybe(st.sampled_from([1.0, "1.0"]), st.just([1])),
        "provider": maybe(
            st.fixed_dictionaries(
                {},
                optional={"name": st.just("openfaas"), "gateway": st.just("http://127.0.0.1:8080")},
            )
        ),
    },
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("stack")
    (base / "fn").mkdir()
    (base / "fn" / "handler.py").write_text("def handle(req):\n    return req\n")
    (base / "empty").mkdir()
    (base / "env.yml").write_text("environment:\n  A: b\n")
    (base / "bad.yml").write_text("environment: [\n")
    return base


def check(folder: Path, text: str) -> Stack | None:
    path = folder / "stack.yml"
    path.write_text(text)
    try:
        stack = load_stack(path, env=ENV)
    except StackError as exc:
        assert exc.file == str(path)
        assert exc.field and exc.reason, exc
        event("refused by load_stack")
        return None
    for spec in stack.functions.values():
        deploys_or_is_refused(spec)
    return stack


def deploys_or_is_refused(spec: Any) -> None:
    """What `veba up` does with a loaded function: its request as JSON (httpx
    refuses NaN, which the CLI must not send), then the appliance's checks."""
    try:
        body = json.loads(httpx.Request("POST", "http://x/", json=_payload(spec)).content)
    except ValueError as exc:
        raise AssertionError(f"the CLI cannot send {spec.name}: {exc}") from exc
    try:
        FunctionDefinition.from_payload(body, "hash").compile()
    except DeployError as exc:
        assert str(exc).startswith(f"functions.{spec.name}"), exc
        event("loaded, refused at deploy")
    else:
        event("loaded and deployable")


@given(documents)
# Found by this property: 10**400 raised OverflowError at deploy, a NaN timeout
# reached `veba up` (which cannot send it as JSON), a NUL byte raised ValueError.
@example(
    {"functions": {"fn": {"lang": "python3", "handler": "./fn", "delivery": {"timeout": 10**400}}}}
)
@example(
    {
        "functions": {
            "fn": {"lang": "python3", "handler": "./fn", "delivery": {"retry": float("nan")}}
        }
    }
)
@example(
    {"functions": {"fn": {"lang": "python3", "handler": "./fn", "delivery": {"timeout": "nan"}}}}
)
@example({"functions": {"fn": {"lang": "python3", "handler": "./fn\x00x"}}})
def test_a_stack_file_loads_or_names_the_field_at_fault(folder: Path, document: Any) -> None:
    check(folder, yaml.safe_dump(without_missing(document), sort_keys=False, allow_unicode=True))


@given(st.text(max_size=300))
@example("functions: {fn: {lang: python3, handler: ./fn}}")
# Found by this property: deep nesting raised RecursionError, an alias loop too.
@example("[" * 5000)
@example("a: &x [*x]")
@example("functions:\n  fn: !!python/object:os.system {}\n")
def test_any_text_loads_or_names_the_field_at_fault(folder: Path, text: str) -> None:
    check(folder, text)
