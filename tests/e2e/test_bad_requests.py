"""Bad requests, each a 400 whose `error` names the field by its path; nothing
of them is kept and nothing accepted is changed. The inputs that gave 500s, or
were silently stored changed, before the API validated at the edge."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tests.e2e.harness import ApplianceProcess

STRUCTURED = {"Content-Type": "application/cloudevents+json"}
JSON = {"Content-Type": "application/json"}
EVENT = '{"specversion": "1.0", "id": "e1", "source": "s", "type": "t"'
NOT_A_TARBALL = base64.b64encode(b"not a tarball").decode()


def deploy(**fields: Any) -> dict[str, Any]:
    return {"json": {"name": "x", "lang": "python3-http", "code": NOT_A_TARBALL, **fields}}


def webhook(text: str) -> dict[str, Any]:
    return {"content": text.encode(), "headers": STRUCTURED}


# (method, path, request, the error's start, words in it)
CASES: list[tuple[str, str, dict[str, Any], str, str]] = [
    # Empty, non-JSON and wrong-typed bodies.
    ("POST", "/api/v1/dlq/redrive", {}, "body", "required"),
    ("POST", "/api/v1/dlq/redrive", {"content": b"", "headers": JSON}, "body", "required"),
    ("POST", "/api/v1/replay", {"content": b"{nope", "headers": JSON}, "body", "not valid JSON"),
    ("POST", "/system/secrets", {"content": b"[]", "headers": JSON}, "body", "JSON object"),
    ("PUT", "/system/functions", {"content": b"\xff", "headers": JSON}, "body", "not UTF-8"),
    ("DELETE", "/system/functions", {"content": b"nope"}, "body", "not valid JSON"),
    ("DELETE", "/system/secrets", {"json": {}}, "body.name", "required"),
    ("POST", "/api/v1/dlq/redrive", {"json": {"function_name": "f"}}, "body.function_name",
     "not a field"),
    ("POST", "/api/v1/replay", {"json": {"function": "f", "since": "yesterday"}}, "body.since",
     "expected a number"),
    ("POST", "/api/v1/replay", {"json": {"function": "f", "types": "VmPoweredOnEvent"}},
     "body.types", "expected a list"),
    ("POST", "/system/secrets", {"json": {"name": "s", "rawValue": "%%%"}}, "body.rawValue",
     "not valid base64"),
    # Bounds: integers that SQLite cannot hold, negative limits, lists and counts.
    ("GET", "/api/v1/events?after=18446744073709551616", {}, "query.after", "at most"),
    ("GET", "/api/v1/events?limit=-1", {}, "query.limit", "at least 1"),
    ("GET", "/api/v1/deliveries?limit=100000", {}, "query.limit", "at most 10000"),
    ("GET", "/api/v1/dlq/1180591620717411303424", {}, "path.delivery_id", "at most"),
    ("GET", "/api/v1/store/ns?limit=0", {}, "query.limit", "at least 1"),
    ("DELETE", "/api/v1/store/ns/k?expect_revision=-1", {}, "query.expect_revision",
     "at least 0"),
    ("GET", "/system/logs?name=x&tail=-1", {}, "query.tail", "at least 0"),
    ("GET", "/api/v1/catalog/VmPoweredOnEvent?" + "&".join(["set=a=1"] * 101), {}, "query.set",
     "at most 100 items"),
    ("GET", "/api/v1/catalog/VmPoweredOnEvent?set=data.Vm.Name=NaN", {}, "query.set data.Vm.Name",
     "not a JSON number"),
    ("GET", "/api/v1/catalog/VmPoweredOnEvent?set=data.Key=" + "[" * 2000 + "]" * 2000, {},
     "query.set data.Key", "nested deeper than 128"),
    ("POST", "/api/v1/providers/simulator/trigger", {"json": {"count": 1e9}}, "body.count",
     "expected an integer"),
    ("POST", "/api/v1/providers/simulator/trigger", {"json": {"count": 10**9}}, "body.count",
     "expected at most 1000"),
    ("POST", "/api/v1/dlq/redrive", {"json": {"ids": list(range(1, 10_002))}}, "body.ids",
     "at most 10000 items"),
    ("POST", "/api/v1/dlq/redrive", {"json": {"ids": [2**63]}}, "body.ids[0]", "at most"),
    # The webhook: what cannot be stored exactly is refused, naming where.
    ("POST", "/webhook", webhook(EVENT.replace('"e1"', '"\\ud800"') + "}"), "body.id",
     "lone surrogate"),
    ("POST", "/webhook", webhook(EVENT + ', "subject": "a\\udfffb"}'), "body.subject",
     "lone surrogate"),
    ("POST", "/webhook", webhook(EVENT + ', "data": ' + "[" * 1025 + "]" * 1025 + "}"), "body",
     "nested deeper than 128"),
    ("POST", "/webhook", webhook(EVENT + ', "data": ' + "[" * 200 + "]" * 200 + "}"),
     "body.data[0][0]", "nested deeper than 128"),
    ("POST", "/webhook", webhook(EVENT + ', "data": {"x": NaN}}'), "body.data.x",
     "NaN and Infinity are refused"),
    ("POST", "/webhook", webhook(EVENT + ', "data": {"x": -Infinity}}'), "body.data.x",
     "not a JSON number"),
    ("POST", "/webhook", webhook(EVENT + ', "data": {"n": 123456789012345678901234567890}}'),
     "body.data.n", "beyond 64 bits"),
    ("POST", "/webhook", {"content": b'{"x": NaN}', "headers": {
        "ce-specversion": "1.0", "ce-id": "b1", "ce-source": "s", "ce-type": "t",
        "Content-Type": "application/json"}}, "binary-mode event: data.x", "not a JSON number"),
    # The store: values are JSON kept exactly too.
    ("PUT", "/api/v1/store/ns/k", {"content": b'{"value": {"n": NaN}}', "headers": JSON},
     "body.value.n", "not a JSON number"),
    ("PUT", "/api/v1/store/ns/k", {"content": b'{"value": 99999999999999999999999}',
     "headers": JSON}, "body.value", "beyond 64 bits"),
    # Deploys: a secret name that is a path, an environment execve cannot carry.
    ("POST", "/system/functions", deploy(secrets=["../../etc/x"]), "functions.x.secrets",
     "not a secret name"),
    ("POST", "/system/functions", deploy(environment={"A=B": "1"}), "functions.x.environment.A=B",
     "no '='"),
    ("POST", "/system/functions", deploy(workers=0), "body.workers", "at least 1"),
    ("POST", "/system/functions", deploy(timeout=-1), "body.timeout", "more than 0"),
    ("POST", "/system/functions", deploy(), "functions.x.handler", "cannot unpack"),
]  # fmt: skip


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    data = tmp_path_factory.mktemp("bad-requests") / "data"
    appliance = ApplianceProcess(data, "--simulator-rate", "0").start()
    yield appliance
    appliance.stop()


@pytest.mark.parametrize(
    ("method", "path", "request_", "field", "words"),
    CASES,
    ids=[f"{m} {p[:40]} {f}" for m, p, _, f, _ in CASES],
)
def test_a_bad_request_is_a_400_naming_the_field(
    app: ApplianceProcess,
    method: str,
    path: str,
    request_: dict[str, Any],
    field: str,
    words: str,
) -> None:
    with app.client() as http:
        r = http.request(method, path, **request_)
    assert r.status_code == 400, (r.status_code, r.text)
    error = r.json()["error"]
    assert error.startswith(field), error
    assert words in error, error


# Runs after the table (pytest keeps a module's order), on the same appliance.
def test_nothing_of_them_was_kept(app: ApplianceProcess) -> None:
    with app.client() as http:
        assert http.get("/api/v1/events", params={"limit": 100}).json() == []
        assert http.get("/system/secrets").json() == []
        assert http.get("/system/functions").json() == []
        assert http.get("/api/v1/store/ns").json()["entries"] == []
    # A failed deploy leaves no folder behind.
    functions = app.data_dir / "functions"
    assert not functions.exists() or list(functions.iterdir()) == []
    assert "Traceback" not in app.log_path.read_text()


def test_what_is_accepted_is_kept_exactly(app: ApplianceProcess) -> None:
    exact = {"big": 2**64 - 1, "small": -(2**63), "float": 1.5e300, "text": "café 😀"}
    body = json.dumps({"specversion": "1.0", "id": "exact-1", "source": "s", "type": "t",
                       "data": exact})  # fmt: skip
    with app.client() as http:
        r = http.post("/webhook", content=body, headers=STRUCTURED)
        assert r.status_code == 200 and r.json()["accepted"] == 1
        assert http.get("/api/v1/events/exact-1").json()["event"]["data"] == exact
        r = http.put("/api/v1/store/ns/k", json={"value": exact})
        assert r.status_code == 200 and http.get("/api/v1/store/ns/k").json()["value"] == exact
