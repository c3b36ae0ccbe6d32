"""Secrets with several keys from the CLI and the API, as Kubernetes makes them
(VEBA v0.8's `kubectl create secret generic ... --from-literal k=v`), beside
faas-cli's single-value forms (VEBA v0.7's `faas-cli secret create vcconfig
--from-file vcconfig.toml`): a function gets one file per key."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.harness import ApplianceProcess, write_function, write_stack

# Every file of the function's secrets folder, by name, with its content in hex:
# the values themselves would be scrubbed from the answer.
READS_FILES = """
import json, os

def handle(req):
    folder = os.environ["VEBA_SECRETS_DIR"]
    return json.dumps({name: open(os.path.join(folder, name), "rb").read().hex()
                       for name in sorted(os.listdir(folder))})
"""


def read_files(app: ApplianceProcess) -> dict[str, str]:
    answer = json.loads(app.cli("invoke", "reader", "--data", "{}").stdout)
    return {name: bytes.fromhex(value).decode() for name, value in answer.items()}


def test_keys_from_the_cli_become_one_file_each(appliance_factory: type, tmp_path: Path) -> None:
    app = appliance_factory.start("--no-simulator")
    # kubectl's repeated --from-literal: every value kept, one key each.
    made = app.cli(
        "secret", "create", "vsphere-creds",
        "--from-literal", "username=administrator@vsphere.local",
        "--from-literal=password=VMware1!=x",  # the first '=' splits, the rest is the value
    )  # fmt: skip
    assert "created with keys password, username" in made.stderr
    assert "VMware1!" not in made.stdout + made.stderr
    # kubectl's one --from-file KEY=PATH (VEBA v0.8 examples): a secret with one key.
    slack = tmp_path / "slack_secret.json"
    slack.write_text('{"url": "https://hooks.slack.example/T0"}')
    app.cli("secret", "create", "slack-secret", f"--from-file=SLACK_SECRET={slack}")
    # Several --from-file PATH: the file names are the keys; '-' reads stdin.
    (tmp_path / "ca.crt").write_text("CA")
    (tmp_path / "tls.key").write_text("KEY")
    app.cli(
        "secret", "create", "certs",
        "--from-file", str(tmp_path / "ca.crt"),
        "--from-file", str(tmp_path / "tls.key"),
        "--from-file", "pin=-",
        input="1234",
    )  # fmt: skip
    # faas-cli's one --from-file PATH (VEBA v0.7 examples): one value, named after the secret.
    toml = tmp_path / "vcconfig.toml"
    toml.write_text('[vcenter]\nserver = "vcsa.lab.local"\n')
    app.cli("secret", "create", "vcconfig", "--from-file", str(toml))
    # faas-cli's value on stdin, trimmed as faas-cli does.
    app.cli("secret", "create", "api-key", input="s3cr3t-api-key\n")

    listed = app.cli("secret", "list", "-o", "json").stdout
    assert json.loads(listed) == [
        {"name": "api-key", "keys": None},
        {"name": "certs", "keys": ["ca.crt", "pin", "tls.key"]},
        {"name": "slack-secret", "keys": ["SLACK_SECRET"]},
        {"name": "vcconfig", "keys": None},
        {"name": "vsphere-creds", "keys": ["password", "username"]},
    ]
    table = app.cli("secret", "list").stdout
    assert "password, username" in table and "(one value)" in table
    for value in ("VMware1!", "administrator@", "hooks.slack", "1234", "s3cr3t"):
        assert value not in listed + table

    write_function(tmp_path / "fn" / "reader", READS_FILES)
    secrets = ["vsphere-creds", "slack-secret", "certs", "vcconfig", "api-key"]
    stack = write_stack(
        tmp_path / "fn" / "stack.yml",
        {"reader": {"lang": "python3", "handler": "./reader", "secrets": secrets}},
    )
    app.cli("up", "-f", str(stack))
    files = read_files(app)
    assert files == {
        "SLACK_SECRET": '{"url": "https://hooks.slack.example/T0"}',
        "api-key": "s3cr3t-api-key",
        "ca.crt": "CA",
        "password": "VMware1!=x",
        "pin": "1234",
        "tls.key": "KEY",
        "username": "administrator@vsphere.local",
        "vcconfig": '[vcenter]\nserver = "vcsa.lab.local"\n',
    }

    # Replacing a secret with keys restarts the function, which sees the new keys.
    replaced = app.cli(
        "secret", "create", "vsphere-creds", "--replace",
        "--from-literal", "username=svc-veba", "--from-literal", "password=n3w",
    )  # fmt: skip
    assert "restarted reader" in replaced.stderr
    files = read_files(app)
    assert (files["username"], files["password"]) == ("svc-veba", "n3w")


def test_flags_that_would_lose_or_mix_up_a_value_are_refused(
    appliance_factory: type, tmp_path: Path
) -> None:
    app = appliance_factory.start("--no-simulator")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.json").write_text("1")
    (tmp_path / "b" / "x.json").write_text("2")

    def refused(*flags: str, input: str | None = None) -> str:
        result = app.cli("secret", "create", "s", *flags, check=False, input=input)
        assert result.returncode == 1, result
        assert "Traceback" not in result.stderr
        return result.stderr

    assert "key 'user' is given twice" in refused(
        "--from-literal", "user=a", "--from-literal", "user=b"
    )
    assert "key 'x.json' is given twice" in refused(
        "--from-file", str(tmp_path / "a" / "x.json"), "--from-file", str(tmp_path / "b" / "x.json")
    )
    assert "key 'bad/key' is not valid" in refused(
        "--from-literal", "bad/key=1", "--from-literal", "ok=2"
    )
    # A value without KEY= among other flags: no key to file it under (and never echoed).
    alone = refused("--from-literal", "hunter2", "--from-literal", "user=a")
    assert "goes alone" in alone and "hunter2" not in alone
    # One literal ending in '=' (base64 padding) would be a key with an empty value.
    padded = refused("--from-literal", "c2VjcmV0dG9rZW4=")
    assert "empty VALUE" in padded and "stdin" in padded and "c2VjcmV0dG9rZW4" not in padded
    assert "no-such.json" in refused(
        "--from-file", str(tmp_path / "no-such.json"), "--from-literal", "a=1"
    )
    assert "stdin can be read once only" in refused(
        "--from-file", "a=-", "--from-file", "b=-", input="x"
    )
    assert "value is empty" in refused(input="")
    assert json.loads(app.cli("secret", "list", "-o", "json").stdout) == []


def test_the_secrets_api_refuses_bad_bodies_with_400(appliance_factory: type) -> None:
    app = appliance_factory.start("--no-simulator")
    bad: list[tuple[object, str]] = [
        ([], "JSON object"),
        ({"value": "x"}, "name"),
        ({"name": "s"}, "exactly one of value, rawValue or keys"),
        ({"name": "s", "value": "x", "keys": {"a": "eA=="}}, "exactly one"),
        ({"name": "s", "value": 5}, "value: expected a string"),
        ({"name": "s", "rawValue": "not base64!"}, "rawValue: not valid base64"),
        ({"name": "s", "keys": ["a"]}, "keys: expected an object"),
        ({"name": "s", "keys": {}}, "at least one key"),
        ({"name": "s", "keys": {"a": "%%"}}, "keys.a: not valid base64"),
        ({"name": "s", "keys": {"a": 1}}, "keys.a: expected a string"),
        ({"name": "s", "keys": {"../etc": "eA=="}}, "key '../etc' is not valid"),
        ({"name": "no/slash", "value": "x"}, "secret name 'no/slash' is not valid"),
        ({"name": "s", "value": "x", "replace": "yes"}, "replace: expected true or false"),
    ]
    with app.client() as http:
        r = http.post("/system/secrets", content=b"{not json")
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
        for body, why in bad:
            r = http.post("/system/secrets", json=body)
            assert r.status_code == 400, (body, r.text)
            assert why in r.json()["error"], (body, r.json())
        r = http.request("DELETE", "/system/secrets", content=b"nope")
        assert r.status_code == 400
        assert http.get("/system/secrets").json() == []

        # The good shapes: OpenFaaS's value and rawValue, and keys.
        assert http.post("/system/secrets", json={"name": "a", "value": "x"}).status_code == 201
        assert (
            http.post("/system/secrets", json={"name": "b", "rawValue": "eA=="}).status_code == 201
        )
        r = http.post("/system/secrets", json={"name": "c", "keys": {"k1": "eA==", "k2": ""}})
        assert r.status_code == 201
        r = http.post("/system/secrets", json={"name": "c", "keys": {"k1": "eA=="}})
        assert r.status_code == 409 and "already exists" in r.json()["error"]
        assert http.get("/system/secrets").json() == [
            {"name": "a", "keys": None},
            {"name": "b", "keys": None},
            {"name": "c", "keys": ["k1", "k2"]},
        ]
