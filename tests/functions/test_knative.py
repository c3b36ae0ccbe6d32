"""Knative function.yaml files as VEBA v0.7-v0.8 shipped them: what each part becomes,
and one clear error (file, field path, reason) per mistake."""

from __future__ import annotations

import base64
import io
import re
import tarfile
import textwrap
from pathlib import Path

import pytest

from veba.deployments import pack_code
from veba.events import vsphere_event
from veba.functions.knative import load_functions
from veba.functions.procfile import loopback_only, web_command
from veba.functions.stack import KNATIVE_LANG, FunctionSpec, StackError, check_handler_syntax
from veba.routing import compile_subscription
from veba.shapes import V08, to_shape

PROCFILE = (
    "web: FLASK_ENV=development FLASK_APP=handler.py"
    " python3 -m flask run --host=0.0.0.0 --port=$PORT\n"
)

SERVICE = """
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: kn-py-notify
  labels:
    app: veba-ui
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/maxScale: "1"
        autoscaling.knative.dev/minScale: "1"
    spec:
      containers:
        - image: ghcr.io/example/kn-py-notify:1.0
"""

TRIGGER = """
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: {name}
  labels:
    app: veba-ui
spec:
  broker: default
  filter:
    attributes:
      type: {type}
  subscriber:
    ref:
      apiVersion: serving.knative.dev/v1
      kind: Service
      name: kn-py-notify
"""


def trigger(event_class: str, name: str | None = None) -> str:
    return TRIGGER.format(
        name=name or f"kn-py-notify-{event_class.lower()}",
        type=f"com.vmware.vsphere.{event_class}.v0",
    )


def function_folder(
    tmp_path: Path, manifest: str, procfile: str | None = PROCFILE, file: str = "function.yaml"
) -> Path:
    folder = tmp_path / "kn-py-notify"
    folder.mkdir(exist_ok=True)
    (folder / file).write_text(textwrap.dedent(manifest))
    (folder / "handler.py").write_text("from flask import Flask\napp = Flask(__name__)\n")
    (folder / "requirements.txt").write_text("flask\ncloudevents<2\n")
    if procfile is not None:
        (folder / "Procfile").write_text(procfile)
    return folder / file


def only(path: Path) -> FunctionSpec:
    stack = load_functions(path)
    (spec,) = stack.functions.values()
    return spec


def event(event_class: str, key: int = 1):  # type: ignore[no-untyped-def]
    data = {"Key": key, "CreatedTime": "2026-01-01T00:00:00Z", "Vm": {"Name": "web-01"}}
    return vsphere_event(data, event_class=event_class, source="https://vc/sdk", instance_uuid="vc")


def matches(spec: FunctionSpec, event_class: str) -> bool:
    sub = compile_subscription(spec.name, spec.topic, spec.filters, shape=V08)
    logged = event(event_class)
    # The same answer for the event as logged (v0.7) and as posted in v0.8's shape.
    assert sub.matches(logged) == sub.matches(to_shape(logged, V08))
    return sub.matches(logged)


# -- what the parts become -------------------------------------------------------------


def test_a_service_with_one_trigger(tmp_path: Path) -> None:
    path = function_folder(tmp_path, SERVICE + "---" + trigger("VmPoweredOffEvent"))
    spec = only(path)
    assert spec.name == "kn-py-notify" and spec.lang == KNATIVE_LANG
    assert spec.handler == path.parent.resolve()  # the image stands for this folder
    assert spec.image == "ghcr.io/example/kn-py-notify:1.0"
    assert (spec.workers, spec.timeout, spec.shape) == (1, 30.0, "v0.8")
    assert spec.labels == {"app": "veba-ui"}
    assert spec.topic is None and spec.delivery == {}
    assert matches(spec, "VmPoweredOffEvent") and not matches(spec, "VmPoweredOnEvent")
    check_handler_syntax(spec)


def test_detected_by_content_not_by_file_name(tmp_path: Path) -> None:
    path = function_folder(tmp_path, SERVICE, file="deploy.yml")
    assert only(path).lang == KNATIVE_LANG


def test_several_triggers_on_one_service_deliver_an_event_once_if_any_matches(
    tmp_path: Path,
) -> None:
    classes = ["VmCreatedEvent", "VmClonedEvent", "VmRegisteredEvent", "DrsVmPoweredOnEvent"]
    manifest = "---" + SERVICE + "".join("---" + trigger(c) for c in classes)
    spec = only(function_folder(tmp_path, manifest))
    assert spec.filters == [
        {"any": [{"exact": {"type": f"com.vmware.vsphere.{c}.v0"}} for c in classes]}
    ]
    assert all(matches(spec, c) for c in classes)
    assert not matches(spec, "VmPoweredOffEvent")


def test_secrets_become_environment_variables(tmp_path: Path) -> None:
    manifest = SERVICE + textwrap.indent(
        textwrap.dedent(
            """\
            envFrom:
              - secretRef:
                  name: notify-secret
              - prefix: VC_
                secretRef:
                  name: vcconfig-secret
                  optional: true
            env:
              - name: CHANNEL
                value: "#ops"
              - name: TOKEN
                valueFrom:
                  secretKeyRef:
                    name: notify-token
                    key: token
            """
        ),
        " " * 10,
    )
    spec = only(function_folder(tmp_path, manifest))
    assert spec.environment == {"CHANNEL": "#ops"}
    assert spec.env_from == [
        {"secret": "notify-secret", "prefix": "", "optional": False},
        {"secret": "vcconfig-secret", "prefix": "VC_", "optional": True},
    ]
    assert spec.secret_env == {
        "TOKEN": {"secret": "notify-token", "key": "token", "optional": False}
    }
    assert spec.secrets == ["notify-secret", "vcconfig-secret", "notify-token"]


def test_scale_timeout_concurrency_delivery_and_the_newer_filters(tmp_path: Path) -> None:
    service = (
        SERVICE.replace('minScale: "1"', 'minScale: "2"').replace('maxScale: "1"', 'maxScale: "3"')
        + "      containerConcurrency: 4\n      timeoutSeconds: 90\n"
    )
    dialect = """
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: kn-py-notify-vm-power
spec:
  broker: default
  filters:
    - prefix:
        type: com.vmware.vsphere.VmPowered
    - not:
        exact:
          type: com.vmware.vsphere.VmPoweredOnEvent.v0
  delivery:
    retry: 3
    backoffPolicy: linear
    backoffDelay: PT0.5S
    deadLetterSink:
      uri: http://127.0.0.1:9/dead
  subscriber:
    ref:
      apiVersion: serving.knative.dev/v1
      kind: Service
      name: kn-py-notify
"""
    spec = only(function_folder(tmp_path, service + "---" + dialect))
    assert (spec.workers, spec.max_workers, spec.timeout, spec.concurrency) == (2, 3, 90.0, 4)
    assert (spec.idle, spec.target) == (None, 0)
    assert spec.delivery["retry"] == 3 and spec.delivery["backoffPolicy"] == "linear"
    assert matches(spec, "VmPoweredOffEvent") and not matches(spec, "VmPoweredOnEvent")
    assert not matches(spec, "VmCreatedEvent")


def test_a_trigger_without_filter_takes_every_event_and_none_means_invoke_only(
    tmp_path: Path,
) -> None:
    everything = re.sub(r"  filter:\n    attributes:\n      type: .*\n", "", trigger("X"))
    spec = only(function_folder(tmp_path, SERVICE + "---" + everything))
    assert spec.topic == "*" and spec.filters is None
    assert matches(spec, "VmPoweredOnEvent") and matches(spec, "UserLoginSessionEvent")
    # Knative: an attribute filter of "" matches any value.
    anything = trigger("X").replace("type: com.vmware.vsphere.X.v0", 'type: ""')
    assert only(function_folder(tmp_path, SERVICE + "---" + anything)).topic == "*"
    alone = only(function_folder(tmp_path, SERVICE))
    assert alone.topic is None and alone.filters is None
    assert not matches(alone, "VmPoweredOnEvent")


def test_a_service_may_choose_the_v07_shape(tmp_path: Path) -> None:
    manifest = SERVICE.replace(
        "  labels:\n", "  annotations:\n    veba.event-shape: v0.7\n  labels:\n"
    )
    assert only(function_folder(tmp_path, manifest)).shape == "v0.7"


# -- the Procfile -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (
            "FLASK_APP=handler.py python3 -m flask run --host=0.0.0.0 --port=$PORT",
            "FLASK_APP=handler.py python3 -m flask run --host=127.0.0.1 --port=$PORT",
        ),
        ("flask run -h 0.0.0.0 -p $PORT", "flask run -h 127.0.0.1 -p $PORT"),
        ("gunicorn -b 0.0.0.0:$PORT app:app", "gunicorn -b 127.0.0.1:$PORT app:app"),
        ("gunicorn --bind=[::]:$PORT app:app", "gunicorn --bind=127.0.0.1:$PORT app:app"),
        ("flask run --host :: --port $PORT", "flask run --host 127.0.0.1 --port $PORT"),
        ("python3 -m flask run --port=$PORT", "python3 -m flask run --port=$PORT"),
        ("echo 10.0.0.0 && serve", "echo 10.0.0.0 && serve"),
    ],
)
def test_a_wildcard_host_becomes_loopback(command: str, expected: str) -> None:
    assert loopback_only(command) == expected


def test_the_procfile_web_line_of_a_package_app(tmp_path: Path) -> None:
    (tmp_path / "Procfile").write_text(
        "# built by buildpacks\n"
        "worker: python3 jobs.py\n"
        "web: FLASK_ENV=development FLASK_APP=kn_py_notify python3 -m flask run"
        " --host=0.0.0.0 --port=$PORT"  # no newline at the end, as VEBA's files
    )
    assert web_command(tmp_path) == (
        "FLASK_ENV=development FLASK_APP=kn_py_notify python3 -m flask run"
        " --host=127.0.0.1 --port=$PORT"
    )


def test_packing_skips_a_venv_made_in_the_function_folder(tmp_path: Path) -> None:
    folder = function_folder(tmp_path, SERVICE).parent
    (folder / "pyvenv.cfg").write_text("home = /usr/bin\n")  # VEBA's examples ship this
    for leftover in ("bin/python3", "lib/python3.11/site-packages/flask/__init__.py"):
        (folder / leftover).parent.mkdir(parents=True, exist_ok=True)
        (folder / leftover).write_text("")
    for skipped in (".venv/pyvenv.cfg", "__pycache__/handler.cpython-311.pyc", ".git/HEAD"):
        (folder / skipped).parent.mkdir(parents=True, exist_ok=True)
        (folder / skipped).write_text("")
    (folder / "kn_py_notify").mkdir()
    (folder / "kn_py_notify" / "__init__.py").write_text("")
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(pack_code(folder)))) as archive:
        names = archive.getnames()
    assert sorted(names) == [
        "Procfile",
        "function.yaml",
        "handler.py",
        "kn_py_notify",
        "kn_py_notify/__init__.py",
        "requirements.txt",
    ]


# -- one clear error per mistake --------------------------------------------------------


def fails(tmp_path: Path, manifest: str, procfile: str | None = PROCFILE) -> StackError:
    path = function_folder(tmp_path, manifest, procfile)
    with pytest.raises(StackError) as info:
        only(path)
    return info.value


@pytest.mark.parametrize(
    ("manifest", "field", "reason"),
    [
        (
            SERVICE.replace("- image:", "- imagePullPolicie: Always\n          image:"),
            "Service/kn-py-notify.spec.template.spec.containers[0].imagePullPolicie",
            "unknown field; expected env, envFrom, image, ",
        ),
        (
            SERVICE
            + "---"
            + trigger("VmPoweredOffEvent").replace("name: kn-py-notify\n", "name: kn-py-other\n"),
            "Trigger/kn-py-notify-vmpoweredoffevent.spec.subscriber.ref.name",
            "names Service 'kn-py-other', which is not in this file (its Service: 'kn-py-notify')",
        ),
        (
            SERVICE + "---" + trigger("X").replace("  filter:\n", "  filters: []\n  filter:\n"),
            "Trigger/kn-py-notify-x.spec.filters",
            "give spec.filter or spec.filters, not both",
        ),
        (
            SERVICE
            + "---"
            + trigger("X").replace(
                "  filter:\n    attributes:\n      type: com.vmware.vsphere.X.v0\n",
                "  filters:\n    - cesql: \"type = 'x'\"\n",
            ),
            "Trigger/kn-py-notify-x.spec.filters[0].cesql",
            "CESQL filters are not supported",
        ),
        (
            SERVICE
            + "---"
            + trigger("X").replace(
                "  broker: default\n",
                "  broker: default\n  delivery:\n    backoffPolicy: fibonacci\n",
            ),
            "Trigger/kn-py-notify-x.spec.delivery.backoffPolicy",
            "'fibonacci' is not exponential or linear",
        ),
        (
            SERVICE
            + "---"
            + trigger("A")
            + "---"
            + trigger("B").replace(
                "  broker: default\n", "  broker: default\n  delivery:\n    retry: 2\n"
            ),
            "Trigger/kn-py-notify-b.spec.delivery",
            "differs from Trigger/kn-py-notify-a's; the Triggers of one Service share",
        ),
        (
            SERVICE
            + "---"
            + trigger("X").replace(
                "  subscriber:\n    ref:\n      apiVersion: serving.knative.dev/v1\n      kind: Service\n      name: kn-py-notify\n",
                "  subscriber:\n    uri: http://example.com/\n",
            ),
            "Trigger/kn-py-notify-x.spec.subscriber.uri",
            "not supported: a Trigger here subscribes this file's Service",
        ),
        (
            SERVICE
            + "          envFrom:\n            - configMapRef:\n                name: settings\n",
            "Service/kn-py-notify.spec.template.spec.containers[0].envFrom[0].configMapRef",
            "not supported; veba takes variables from secrets",
        ),
        (
            SERVICE + "          env:\n            - name: PORT\n              value: '8080'\n",
            "Service/kn-py-notify.spec.template.spec.containers[0].env[0].name",
            "PORT is set by veba",
        ),
        (
            SERVICE + "          command: [python3, handler.py]\n",
            "Service/kn-py-notify.spec.template.spec.containers[0].command",
            "not supported: veba runs the Procfile's web command",
        ),
        (
            SERVICE.replace('minScale: "1"', 'minScale: "3"'),
            "Service/kn-py-notify.spec.template.metadata.annotations.autoscaling.knative.dev/minScale",
            "minScale 3 is above maxScale 1",
        ),
        (
            SERVICE.replace("name: kn-py-notify", "name: Kn_Notify"),
            "Service/Kn_Notify.metadata.name",
            "must be a DNS-1123 label",
        ),
        (
            SERVICE + "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: s\n",
            "documents[1].kind",
            "v1 Secret is not supported; a function.yaml holds a serving.knative.dev/v1 Service",
        ),
    ],
)
def test_mistakes_name_the_file_and_field(
    tmp_path: Path, manifest: str, field: str, reason: str
) -> None:
    error = fails(tmp_path, manifest)
    assert error.file.endswith("function.yaml")
    assert (error.field, error.reason[: len(reason)]) == (field, reason)
    assert str(error).startswith(f"{error.file}: {field}: ")


def test_a_procfile_without_a_web_line(tmp_path: Path) -> None:
    error = fails(tmp_path, SERVICE, procfile="worker: python3 jobs.py\n")
    assert error.file == str(tmp_path / "kn-py-notify" / "Procfile")
    assert error.field == "web"
    assert error.reason.startswith("missing; veba runs the Procfile's web process")


def test_a_folder_without_a_procfile(tmp_path: Path) -> None:
    error = fails(tmp_path, SERVICE, procfile=None)
    assert error.file.endswith("Procfile") and error.reason.startswith("missing; a Knative")


def test_a_stack_yml_is_still_a_stack(tmp_path: Path) -> None:
    (tmp_path / "fn").mkdir()
    (tmp_path / "fn" / "handler.py").write_text("def handle(req):\n    return req\n")
    (tmp_path / "function.yaml").write_text(
        "version: 1.0\nprovider:\n  name: openfaas\nfunctions:\n"
        "  fn:\n    lang: python3\n    handler: ./fn\n"
        "    annotations:\n      veba.event-shape: v0.8\n"
    )
    spec = only(tmp_path / "function.yaml")
    assert spec.lang == "python3" and spec.shape == "v0.8"
    (tmp_path / "function.yaml").write_text(
        (tmp_path / "function.yaml").read_text().replace("v0.8", "v2")
    )
    with pytest.raises(StackError, match=r"functions\.fn\.annotations\.veba\.event-shape: unknown"):
        only(tmp_path / "function.yaml")


def test_min_scale_zero_scales_to_zero_after_the_scale_down_delay(tmp_path: Path) -> None:
    service = SERVICE.replace('minScale: "1"', 'minScale: "0"').replace(
        'maxScale: "1"', 'maxScale: "4"\n        autoscaling.knative.dev/scale-down-delay: "2m"'
    )
    spec = only(function_folder(tmp_path, service))
    assert (spec.workers, spec.max_workers, spec.idle) == (0, 4, 120.0)
