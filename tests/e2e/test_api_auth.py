"""Every route, on every listener, asked with no credentials, wrong ones and
other listeners' ones: nothing but /healthz answers without the right
credentials, and the webhook and /stats only to their own.

The appliance runs VEBA's v0.8 router config with the webhook on an address of
its own (basic auth, plus `--webhook-token`) and `/stats` behind basic auth, so
the walk covers the API listener, the webhook's listener and the metrics one.
The credentials are checked before anything of the request is read: a bad body
or one over the size limit still gets a 401.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.e2e.harness import ApplianceProcess, free_port

DATA = Path(__file__).parent.parent / "data"
HOOK_USER, HOOK_PASSWORD = "hook-user", "Hook-Pass-1"
HOOK_TOKEN = "hook-bearer-Token-7"
METRICS_USER, METRICS_PASSWORD = "metrics-user", "Metrics-Pass-9"
EVENT = {"specversion": "1.0", "id": "walk-1", "source": "walk", "type": "t"}
CE_JSON = {"Content-Type": "application/cloudevents+json"}
PARAMS = {"name": "x", "path": "y", "event_id": "e", "delivery_id": "1", "namespace": "ns",
          "key": "k"}  # fmt: skip


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def routes(schema: dict[str, Any]) -> list[tuple[str, str]]:
    """(method, path) of every operation, its path parameters filled in."""
    found = []
    for path, operations in schema["paths"].items():
        for method in operations:
            found.append((method.upper(), path.format(**PARAMS)))
    return found


def start(tmp_path: Path, config: dict[str, Any], *args: str) -> ApplianceProcess:
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(config))
    return ApplianceProcess(tmp_path / "data", "--config", str(path), *args)


def test_nothing_answers_without_its_credentials(tmp_path: Path) -> None:
    config = yaml.safe_load((DATA / "event-router-config-appliance-v0.8.yaml").read_text())
    hook_port, metrics_port = free_port(), free_port()
    config["eventProvider"]["webhook"]["bindAddress"] = f"127.0.0.1:{hook_port}"
    metrics = config["metricsProvider"]
    metrics["default"]["bindAddress"] = f"127.0.0.1:{metrics_port}"
    metrics["default"]["auth"] = {
        "type": "basic_auth",
        "basicAuth": {"username": METRICS_USER, "password": METRICS_PASSWORD},
    }
    app = start(tmp_path, config, "--webhook-token", HOOK_TOKEN)
    app.start()
    try:
        said = app.log_path.read_text()
        assert (
            f"webhook 127.0.0.1:{hook_port}/webhook: needs the API token (Authorization: Bearer"
            " <token>) or the webhook's bearer token (--webhook-token) or the webhook's basic auth"
        ) in said
        with app.client() as http:
            schema = http.get("/openapi.json").json()
        operations = routes(schema)
        assert len(operations) > 30 and ("POST", "/webhook") in operations
        hook_credentials = [bearer(HOOK_TOKEN), basic(HOOK_USER, HOOK_PASSWORD)]
        not_the_api = [
            {},
            bearer("wrong"),
            basic("x", "y"),
            *hook_credentials,
            basic(METRICS_USER, METRICS_PASSWORD),
        ]
        bodies: list[dict[str, Any]] = [
            {},
            {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
            {"content": b"x" * (20 << 20), "headers": CE_JSON},  # over every body limit
        ]
        answered = []
        api, hook = app.url, f"http://127.0.0.1:{hook_port}"
        with httpx.Client(timeout=60) as client:
            # The API's listener: the token, nothing else, opens anything but /healthz.
            for method, path in operations:
                for headers in not_the_api:
                    for body in bodies if method in ("POST", "PUT", "DELETE") else [{}]:
                        if path == "/webhook" and headers in hook_credentials:
                            continue  # the webhook's own: below
                        r = client.request(
                            method,
                            api + path,
                            headers={**headers, **body.get("headers", {})},
                            content=body.get("content"),
                        )
                        if r.status_code != 401 and path != "/healthz":
                            answered.append((method, path, headers, r.status_code))
                        elif path != "/healthz":
                            assert "error" in r.json() and r.headers["www-authenticate"]
            # The webhook's listener: its own path only, and only with a credential.
            for method, path in operations:
                for headers in not_the_api:
                    if path == "/webhook" and headers in hook_credentials:
                        continue
                    r = client.request(method, hook + path, headers=headers)
                    if r.status_code != 401:
                        answered.append(("webhook listener", method, path, headers, r.status_code))
            for credentials in [*hook_credentials, bearer(app.token)]:
                for url in (api, hook):
                    r = client.post(
                        url + "/webhook",
                        json={**EVENT, "id": f"{url}-{credentials}"},
                        headers={**credentials, **CE_JSON},
                    )
                    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
            r = client.get(hook + "/api/v1/status", headers=bearer(app.token))
            assert r.status_code == 404  # the webhook's listener serves nothing else

            # /stats: its own basic auth only; nothing secret in it.
            stats = f"http://127.0.0.1:{metrics_port}/stats"
            for headers in [{}, bearer(app.token), *hook_credentials, basic(METRICS_USER, "no")]:
                if client.get(stats, headers=headers).status_code != 401:
                    answered.append(("stats", headers))
            shown = client.get(stats, headers=basic(METRICS_USER, METRICS_PASSWORD))
            assert shown.status_code == 200 and shown.json()["cmdline"] == ["veba"]
            for secret in (HOOK_TOKEN, HOOK_PASSWORD, METRICS_PASSWORD, app.token):
                assert secret not in shown.text
        assert answered == []
        assert httpx.get(f"{api}/healthz").status_code == 200
    finally:
        app.stop()


def test_the_webhook_is_open_only_when_the_operator_says_so(tmp_path: Path) -> None:
    event = {**EVENT, "id": "anonymous-1"}
    # By default: the API token, nothing anonymous.
    default = ApplianceProcess(tmp_path / "default" / "data", "--no-simulator").start()
    try:
        assert "/webhook: needs the API token" in default.log_path.read_text()
        assert httpx.post(f"{default.url}/webhook", json=event, headers=CE_JSON).status_code == 401
        with default.client() as http:
            assert http.post("/webhook", json=event, headers=CE_JSON).status_code == 200
    finally:
        default.stop()

    # --webhook-open, said at start.
    opened = ApplianceProcess(tmp_path / "open" / "data", "--no-simulator", "--webhook-open")
    opened.start()
    try:
        said = opened.log_path.read_text()
        assert "/webhook: OPEN, takes events without credentials (--webhook-open)" in said
        r = httpx.post(f"{opened.url}/webhook", json=event, headers=CE_JSON)
        assert r.status_code == 200 and r.json()["accepted"] == 1
        assert httpx.get(f"{opened.url}/api/v1/status").status_code == 401  # the API is not
    finally:
        opened.stop()

    # A RouterConfig webhook without an auth section is open, as VEBA reads it.
    config = yaml.safe_load((DATA / "event-router-config-appliance-v0.8.yaml").read_text())
    hook_port = free_port()
    config["eventProvider"]["webhook"]["bindAddress"] = f"127.0.0.1:{hook_port}"
    del config["eventProvider"]["webhook"]["auth"]
    del config["metricsProvider"]
    (tmp_path / "veba").mkdir()
    routed = start(tmp_path / "veba", config)
    routed.start()
    try:
        said = routed.log_path.read_text()
        assert (
            f"webhook 127.0.0.1:{hook_port}/webhook: OPEN, takes events without credentials"
            " (the RouterConfig's eventProvider.webhook has no auth section, as VEBA reads it)"
        ) in said
        r = httpx.post(f"http://127.0.0.1:{hook_port}/webhook", json=event, headers=CE_JSON)
        assert r.status_code == 200 and r.json()["accepted"] == 1
    finally:
        routed.stop()
