from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from veba.functions import StackError, check_handler_syntax, load_stack


def write(folder: Path, text: str, name: str = "stack.yml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def stack_dir(tmp_path: Path) -> Path:
    for fn in ("echo", "tag-vm"):
        (tmp_path / fn).mkdir()
        (tmp_path / fn / "handler.py").write_text("def handle(req):\n    return req\n")
    return tmp_path


def test_faas_cli_stack_with_substitution_and_environment_file(stack_dir: Path) -> None:
    write(
        stack_dir,
        """
        environment:
          SHARED: from-file
          VCENTER_URL: file-loses
        """,
        "vcenter.yml",
    )
    path = write(
        stack_dir,
        """
        version: 1.0
        provider:
          name: openfaas
          gateway: ${GATEWAY:-http://127.0.0.1:8080}
        functions:
          tag-vm:
            lang: python3-http-debian
            handler: ./tag-vm
            image: ${REGISTRY}/tag-vm:latest
            environment:
              VCENTER_URL: ${VC}
              write_debug: true
              exec_timeout: 1m30s
              PORT: 8080
            environment_file:
              - vcenter.yml
            secrets: [vc-password]
            labels:
              com.openfaas.scale.min: "3"
            annotations:
              topic: VmPoweredOnEvent,VmPoweredOffEvent
            limits:
              memory: 64Mi
            build_args:
              ADDITIONAL_PACKAGE: gcc
          echo:
            lang: veba-cloudevent
            handler: echo
            filters:
              - prefix: {subject: Vm}
            delivery:
              retry: 5
              backoffPolicy: exponential
              timeout: PT10S
        """,
    )
    stack = load_stack(path, env={"REGISTRY": "ghcr.io/me", "VC": "https://vc/sdk"})
    assert stack.version == "1.0"
    assert (stack.provider_name, stack.gateway) == ("openfaas", "http://127.0.0.1:8080")
    tag = stack.functions["tag-vm"]
    assert tag.lang == "python3-http"
    assert tag.handler == (stack_dir / "tag-vm").resolve()
    assert tag.image == "ghcr.io/me/tag-vm:latest"
    assert tag.environment == {
        "SHARED": "from-file",
        "VCENTER_URL": "https://vc/sdk",  # inline wins over the file
        "write_debug": "true",
        "exec_timeout": "1m30s",
        "PORT": "8080",
    }
    assert tag.secrets == ["vc-password"]
    assert tag.workers == 3
    assert tag.timeout == 90.0
    assert tag.topic == "VmPoweredOnEvent,VmPoweredOffEvent"
    assert tag.limits == {"memory": "64Mi"}
    assert tag.filters is None and tag.delivery == {}
    echo = stack.functions["echo"]
    assert echo.lang == "veba-cloudevent"
    assert echo.filters == [{"prefix": {"subject": "Vm"}}]
    assert echo.delivery == {"retry": 5, "backoffPolicy": "exponential", "timeout": "PT10S"}
    assert echo.timeout == 10.0
    assert echo.workers == 1


def test_substitution_defaults_to_process_environment(
    stack_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ECHO_LANG", "python3")
    path = write(stack_dir, "functions:\n  echo: {lang: '${ECHO_LANG}', handler: ./echo}\n")
    assert load_stack(path).functions["echo"].lang == "python3"


def test_filters_from_annotation_and_defaults(stack_dir: Path) -> None:
    path = write(
        stack_dir,
        """
        functions:
          echo:
            lang: python3
            handler: ./echo
            annotations:
              veba.filters: '[{"all": [{"exact": {"type": "com.vmware.event.router/event"}}]}]'
        """,
    )
    echo = load_stack(path, env={}).functions["echo"]
    assert echo.filters == [{"all": [{"exact": {"type": "com.vmware.event.router/event"}}]}]
    assert echo.timeout == 30.0 and echo.workers == 1 and echo.topic is None


BAD = [
    (
        "functions:\n  echo:\n    lang: python3\n    handler: ./echo: x\n",
        "line 4",
        "invalid YAML: mapping values are not allowed here",
    ),
    ("version: 1.0\n", "functions", "missing"),
    ("functions: [echo]\n", "functions", "expected a mapping"),
    ("functions:\n  Tag_VM: {lang: python3, handler: ./echo}\n", "functions.Tag_VM", "DNS-1123"),
    (
        f"functions:\n  {'a' * 64}: {{lang: python3, handler: ./echo}}\n",
        f"functions.{'a' * 64}",
        "DNS-1123",
    ),
    ("functions:\n  echo: {handler: ./echo}\n", "functions.echo.lang", "missing"),
    (
        "functions:\n  tag-vm: {lang: go, handler: ./echo}\n",
        "functions.tag-vm.lang",
        "unknown lang 'go'; expected one of python3, python3-flask, python3-http, veba-cloudevent",
    ),
    ("functions:\n  echo: {lang: python3}\n", "functions.echo.handler", "missing"),
    (
        "functions:\n  echo: {lang: python3, handler: ./nope}\n",
        "functions.echo.handler",
        "does not exist",
    ),
    (
        "functions:\n  echo: {lang: python3, handler: ./empty}\n",
        "functions.echo.handler",
        "no handler.py",
    ),
    (
        "functions:\n  echo: {lang: python3, handler: ./echo, environment: [A=1]}\n",
        "functions.echo.environment",
        "expected a mapping",
    ),
    (
        "functions:\n  echo: {lang: python3, handler: ./echo, environment: {A: {b: 1}}}\n",
        "functions.echo.environment.A",
        "expected a string",
    ),
    (
        "functions:\n  echo: {lang: python3, handler: ./echo, secrets: token}\n",
        "functions.echo.secrets",
        "expected a list of strings",
    ),
    (
        "functions:\n  echo: {lang: python3, handler: ./echo, secrets: [ok, 3]}\n",
        "functions.echo.secrets[1]",
        "expected a string",
    ),
    (
        "functions:\n  echo: {lang: python3, handler: ./echo, labels: [a]}\n",
        "functions.echo.labels",
        "expected a mapping",
    ),
    (
        "functions:\n  echo: {lang: python3, handler: ./echo, image: [a]}\n",
        "functions.echo.image",
        "expected a string",
    ),
    (
        "functions:\n  echo: {lang: python3, handler: ./echo, environment_file: [nope.yml]}\n",
        "functions.echo.environment_file[0]",
        "file nope.yml does not exist",
    ),
    (
        "functions:\n  echo: {lang: python3, handler: ./echo, delivery: 3}\n",
        "functions.echo.delivery",
        "expected a mapping",
    ),
    (
        "functions:\n  echo: {lang: python3, handler: ./echo, delivery: {timeout: soon}}\n",
        "functions.echo.delivery.timeout",
        "ISO-8601",
    ),
    (
        "functions:\n  echo: {lang: python3, handler: ./echo, environment: {exec_timeout: 10x}}\n",
        "functions.echo.environment.exec_timeout",
        "duration",
    ),
    (
        "functions:\n  echo: {lang: python3, handler: ./echo,"
        " labels: {com.openfaas.scale.min: many}}\n",
        "functions.echo.labels.com.openfaas.scale.min",
        "whole number",
    ),
    (
        "functions:\n  echo: {lang: python3, handler: ./echo, annotations: {veba.filters: '{'}}\n",
        "functions.echo.annotations.veba.filters",
        "invalid JSON",
    ),
    ("provider: {gateway: 8080}\nfunctions: {}\n", "provider.gateway", "expected a string"),
    (
        "functions:\n  echo: {lang: python3, handler: ./echo, environment_file: vc.yml}\n",
        "functions.echo.environment_file",
        "expected a list of strings",
    ),
    (
        "functions:\n  echo: {lang: python3, handler: ./echo, environment_file: [bad.yml]}\n",
        "functions.echo.environment_file[0]",
        "bad.yml line 2: invalid YAML",
    ),
    (
        "functions:\n  echo: {lang: python3, handler: ./echo, environment_file: [list.yml]}\n",
        "functions.echo.environment_file[0].environment",
        "expected a mapping",
    ),
]


@pytest.mark.parametrize(("text", "field", "reason"), BAD)
def test_bad_stack_names_file_and_field(
    stack_dir: Path, text: str, field: str, reason: str
) -> None:
    (stack_dir / "empty").mkdir()
    write(stack_dir, "environment:\n  A: b: c\n", "bad.yml")
    write(stack_dir, "environment: [A=1]\n", "list.yml")
    path = write(stack_dir, text)
    with pytest.raises(StackError) as info:
        load_stack(path, env={})
    assert info.value.field == field
    assert reason in info.value.reason
    assert str(info.value).startswith(f"{path}: {field}: ")


def test_error_message_reads_as_documented(
    stack_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(stack_dir)
    write(stack_dir, "functions:\n  tag-vm: {lang: go, handler: ./echo}\n")
    with pytest.raises(StackError) as info:
        load_stack(Path("stack.yml"))
    assert str(info.value) == (
        "stack.yml: functions.tag-vm.lang: unknown lang 'go'; "
        "expected one of python3, python3-flask, python3-http, veba-cloudevent, python, "
        "python3-debian, python3-http-debian, python3-flask-debian"
    )


def test_check_handler_syntax(stack_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(stack_dir)
    write(stack_dir, "functions:\n  echo: {lang: python3, handler: ./echo}\n")
    spec = load_stack(Path("stack.yml")).functions["echo"]
    check_handler_syntax(spec)  # fine as written

    (stack_dir / "echo" / "handler.py").write_text("import os\n\ndef handle(req)\n    return req\n")
    with pytest.raises(StackError) as info:
        check_handler_syntax(spec)
    assert str(info.value).startswith(
        "stack.yml: functions.echo.handler: ./echo/handler.py line 3: SyntaxError: "
    )

    (stack_dir / "echo" / "handler.py").write_text("def handle(req):\n    return req\n")
    (stack_dir / "echo" / "lib").mkdir()
    (stack_dir / "echo" / "lib" / "util.py").write_text("x = (\n")
    with pytest.raises(StackError, match=r"\./echo/lib/util\.py line 1: SyntaxError"):
        check_handler_syntax(spec)


MISSPELT = [
    # (stack text, field path, the suggestion)
    ("fucntions:\n  echo: {lang: python3, handler: ./echo}\n", "fucntions", "functions"),
    ("provider: {name: openfaas, gatway: http://x}\nfunctions: {}\n", "provider.gatway", "gateway"),
    (
        "functions:\n  echo:\n    lang: python3\n    handler: ./echo\n"
        "    anotations: {topic: VmPoweredOnEvent}\n",
        "functions.echo.anotations",
        "annotations",
    ),
    (
        "functions:\n  echo: {lang: python3, handler: ./echo, enviroment: {A: b}}\n",
        "functions.echo.enviroment",
        "environment",
    ),
    (
        "functions:\n  echo: {lang: python3, handler: ./echo, secret: [token]}\n",
        "functions.echo.secret",
        "secrets",
    ),
    (
        "functions:\n  echo: {lang: python3, handler: ./echo, limits: {memroy: 64Mi}}\n",
        "functions.echo.limits.memroy",
        "memory",
    ),
    (
        "functions:\n  echo: {lang: python3, handler: ./echo, delivery: {retries: 3}}\n",
        "functions.echo.delivery.retries",
        "retry",
    ),
    (
        "configuration:\n  templates:\n    - {name: python3-http, sourse: https://x}\n"
        "functions: {}\n",
        "configuration.templates[0].sourse",
        "source",
    ),
]


@pytest.mark.parametrize(("text", "field", "meant"), MISSPELT)
def test_a_misspelt_field_fails_with_its_path_and_the_field_meant(
    stack_dir: Path, text: str, field: str, meant: str
) -> None:
    """Problem 3: `anotations:` deployed a function with no topic, silently."""
    path = write(stack_dir, text)
    with pytest.raises(StackError) as info:
        load_stack(path, env={})
    assert info.value.field == field
    assert info.value.reason.startswith(
        f"unknown field {field.rsplit('.', 1)[-1]!r}; did you mean {meant!r}?"
    ) or info.value.reason.startswith(f"unknown delivery setting; did you mean {meant!r}?")


def test_every_faas_cli_field_loads_and_what_veba_does_not_use_is_ignored(
    stack_dir: Path,
) -> None:
    path = write(
        stack_dir,
        """
        version: 1.0
        provider:
          name: openfaas
          gateway: http://127.0.0.1:8080
          network: func_functions
        configuration:
          templates:
            - name: python3-http
              source: https://github.com/openfaas/python-flask-template
            - {name: golang-middleware, path: ./templates}
          copy: [./common]
        functions:
          echo:
            lang: python3
            handler: ./echo
            image: registry/echo:latest
            fprocess: python3 index.py
            skip_build: true
            constraints: ["node.platform.os == linux"]
            requests: {memory: 32Mi, cpu: 100m}
            limits: {memory: 64Mi, cpu: 200m}
            readonly_root_filesystem: true
            build_options: [dev]
            build_args: {ADDITIONAL_PACKAGE: gcc}
            build_secrets: {token: ./token.txt}
            platforms: linux/amd64,linux/arm64
            namespace: openfaas-fn
            registry_auth: c2VjcmV0
            secrets: [vc]
            labels: {app: echo}
            annotations: {topic: VmPoweredOnEvent}
        """,
    )
    echo = load_stack(path, env={}).functions["echo"]
    assert (echo.image, echo.topic, echo.secrets) == (
        "registry/echo:latest",
        "VmPoweredOnEvent",
        ["vc"],
    )


def test_filters_and_delivery_are_checked_at_load_with_the_file(stack_dir: Path) -> None:
    path = write(
        stack_dir,
        "functions:\n  echo: {lang: python3, handler: ./echo, filters: [{exactly: {a: b}}]}\n",
    )
    with pytest.raises(StackError) as info:
        load_stack(path, env={})
    assert info.value.field == "functions.echo.filters[0]"
    assert "unknown filter 'exactly'" in info.value.reason
    path = write(
        stack_dir,
        "functions:\n  echo:\n    lang: python3\n    handler: ./echo\n"
        "    annotations: {veba.filters: '[{\"any\": []}]'}\n",
    )
    with pytest.raises(StackError) as info:
        load_stack(path, env={})
    assert info.value.field == "functions.echo.annotations.veba.filters[0].any"


def test_function_names_need_nothing_else(stack_dir: Path) -> None:
    from veba.functions.knative import function_names

    path = write(stack_dir, "functions:\n  gone: {handler: ./nope}\n  broken: {lang: go}\n")
    assert function_names(path, env={}) == ["gone", "broken"]
    with pytest.raises(StackError, match="functions: expected a mapping"):
        function_names(write(stack_dir, "version: 1.0\n"), env={})
