"""Security by default: the API needs the token, webhooks can require auth,
secrets are encrypted at rest, reach only the functions that declare them, and
never show in logs."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.e2e.harness import wait_for, write_function, write_stack

SECRET = "vc-password-Sup3rS3cret!"

READS_SECRET = """
import json, os

def handle(req):
    folder = os.environ["VEBA_SECRETS_DIR"]
    value = open(os.path.join(folder, "vcenter")).read()
    print("connecting with password", value)  # careless, and still redacted
    return json.dumps({"files": sorted(os.listdir(folder)), "len": len(value),
                       "token_visible": "VEBA_TOKEN" in os.environ})
"""


def test_api_requires_the_token(appliance_factory: type) -> None:
    app = appliance_factory.start("--no-simulator")
    assert httpx.get(f"{app.url}/healthz").status_code == 200
    for path in ("/system/functions", "/api/v1/events", "/metrics", "/docs", "/openapi.json"):
        r = httpx.get(f"{app.url}{path}")
        assert r.status_code == 401, path
        assert "token" in r.json()["error"]
        assert (
            httpx.get(f"{app.url}{path}", headers={"Authorization": "Bearer wrong"}).status_code
            == 401
        )
    with app.client() as http:
        assert http.get("/system/functions").status_code == 200
        assert "/webhook" in http.get("/openapi.json").json()["paths"]
    assert (app.data_dir / "token").stat().st_mode & 0o777 == 0o600


def test_webhook_can_require_basic_auth(appliance_factory: type) -> None:
    app = appliance_factory.start(
        "--no-simulator", "--webhook-user", "vc", "--webhook-password", "hook-pass"
    )
    event = {"specversion": "1.0", "id": "a1", "source": "s", "type": "t"}
    headers = {"Content-Type": "application/cloudevents+json"}
    r = httpx.post(f"{app.url}/webhook", json=event, headers=headers)
    assert r.status_code == 401
    r = httpx.post(f"{app.url}/webhook", json=event, headers=headers, auth=("vc", "wrong"))
    assert r.status_code == 401
    r = httpx.post(f"{app.url}/webhook", json=event, headers=headers, auth=("vc", "hook-pass"))
    assert r.status_code == 200 and r.json()["accepted"] == 1


def test_secrets_are_encrypted_scoped_and_redacted(appliance_factory: type, tmp_path: Path) -> None:
    app = appliance_factory.start("--no-simulator")
    secret_file = tmp_path / "password.txt"
    secret_file.write_text(SECRET)
    app.cli("secret", "create", "vcenter", "--from-file", str(secret_file))
    app.cli("secret", "create", "other", "--from-literal", "not-for-you")
    listed = json.loads(app.cli("secret", "list", "-o", "json").stdout)
    assert [s["name"] for s in listed] == ["other", "vcenter"]

    write_function(tmp_path / "fn" / "reader", READS_SECRET)
    stack = write_stack(
        tmp_path / "fn" / "stack.yml",
        {"reader": {"lang": "python3-flask", "handler": "./reader", "secrets": ["vcenter"]}},
    )
    app.cli("up", "-f", str(stack))
    seen = json.loads(app.cli("invoke", "reader", "--data", "{}").stdout)
    assert seen == {"files": ["vcenter"], "len": len(SECRET), "token_visible": False}

    # At rest, no byte of the value anywhere under the data directory.
    for path in app.data_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path

    def logged() -> str:
        text = app.cli("logs", "reader").stdout
        return text if "connecting with password" in text else ""

    log_text = wait_for(logged, 30, "the handler's print in its log")
    assert SECRET not in log_text and "[REDACTED]" in log_text

    # A function that declares a secret that does not exist is refused, by name.
    bad = write_stack(
        tmp_path / "fn" / "bad.yml",
        {"reader": {"lang": "python3", "handler": "./reader", "secrets": ["nope"]}},
    )
    result = app.cli("up", "-f", str(bad), check=False)
    assert result.returncode != 0 and "functions.reader.secrets" in result.stderr
    assert "'nope' does not exist" in result.stderr


def test_replacing_a_secret_restarts_the_functions_that_use_it(
    appliance_factory: type, tmp_path: Path
) -> None:
    app = appliance_factory.start("--no-simulator")
    app.cli("secret", "create", "vcenter", "--from-literal", "first-value")
    write_function(tmp_path / "fn" / "reader", READS_SECRET)
    stack = write_stack(
        tmp_path / "fn" / "stack.yml",
        {"reader": {"lang": "python3-flask", "handler": "./reader", "secrets": ["vcenter"]}},
    )
    app.cli("up", "-f", str(stack))
    assert json.loads(app.cli("invoke", "reader", "--data", "{}").stdout)["len"] == 11
    refused = app.cli("secret", "create", "vcenter", "--from-literal", "x", check=False)
    assert refused.returncode != 0 and "--replace" in refused.stderr
    app.cli("secret", "create", "vcenter", "--from-literal", "second-longer-value", "--replace")
    assert json.loads(app.cli("invoke", "reader", "--data", "{}").stdout)["len"] == 19
    assert "restarted: secret 'vcenter' changed" in app.cli("logs", "reader").stdout
