"""Which token the CLI sends where, `veba login`, and HTTPS with --tls-no-verify.

The data directory's token goes only to the appliance that wrote it; any other
gateway gets only a token given for it (`veba login`, `--token`, `VEBA_TOKEN`).
The "other gateway" here is a small real HTTP server in the test that records
the Authorization header of every request it gets.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.e2e.harness import write_function, write_stack

HELLO = """
def handle(req):
    return "hello from veba"
"""

# Uses the appliance's store: under HTTPS, workers reach the API over TLS too.
COUNTS = """
from veba.sdk import store

def handle(req):
    entry = store().get("calls")
    calls = (entry.value if entry else 0) + 1
    store().put("calls", calls)
    return str(calls)
"""


class OtherGateway:
    """Someone else's gateway: records the Authorization header of each request;
    accepts only the bearer token `accepts`."""

    def __init__(self, accepts: str) -> None:
        self.seen: list[tuple[str, str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                auth = self.headers.get("Authorization")
                outer.seen.append((self.command, self.path, auth))
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                if auth != f"Bearer {accepts}":
                    self._send(401, {"detail": "missing or wrong API token"})
                elif self.path.startswith("/system/functions") and self.command == "POST":
                    self._send(200, {"result": {"name": "hello"}})
                elif self.path == "/system/functions":
                    self._send(200, [])
                else:
                    self._send(200, {"provider": {"provider": "other"}})

            def _send(self, status: int, body: object) -> None:
                data = json.dumps(body).encode() + b"\n"
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def tokens(self) -> set[str | None]:
        return {auth for _, _, auth in self.seen}


@pytest.fixture
def other_gateway() -> Iterator[OtherGateway]:
    gateway = OtherGateway(accepts="their-token")
    gateway.thread.start()
    yield gateway
    gateway.server.shutdown()
    gateway.server.server_close()
    gateway.thread.join(timeout=30)


def _hello_stack(folder: Path, gateway: str) -> Path:
    write_function(folder / "hello", HELLO)
    stack = write_stack(folder / "stack.yml", {"hello": {"lang": "python3", "handler": "./hello"}})
    stack.write_text(stack.read_text().replace("http://127.0.0.1:8080", gateway))
    return stack


def test_a_stack_naming_another_gateway_never_gets_the_appliance_token(
    appliance_factory: type, other_gateway: OtherGateway, tmp_path: Path
) -> None:
    app = appliance_factory.start("--no-simulator")
    no_url = {"VEBA_URL": None}  # the gateway comes from the stack.yml, as with faas-cli

    # Someone else's stack.yml: the CLI asks that gateway without a token, and says what to do.
    theirs = _hello_stack(tmp_path / "theirs", other_gateway.url)
    result = app.cli("deploy", "-f", str(theirs), check=False, env=no_url)
    assert result.returncode == 1
    assert f"veba login --gateway {other_gateway.url}" in result.stderr
    assert f"belongs to {app.url}" in result.stderr
    assert app.cli("list", "--gateway", other_gateway.url, check=False).returncode == 1
    assert other_gateway.seen and other_gateway.tokens() == {None}

    # A stack.yml naming the appliance itself (as `veba new` writes it) still works.
    ours = _hello_stack(tmp_path / "ours", app.url.replace("127.0.0.1", "localhost"))
    assert "hello: deployed" in app.cli("deploy", "-f", str(ours), env=no_url).stderr

    # A token given for the other gateway goes there: --token, VEBA_TOKEN, `veba login`.
    app.cli("list", "--gateway", other_gateway.url, "--token", "their-token")
    app.cli("list", "--gateway", other_gateway.url, env={"VEBA_TOKEN": "their-token"})
    app.cli("login", "--gateway", other_gateway.url, "--password-stdin", input="their-token\n")
    deployed = app.cli("deploy", "-f", str(theirs), env=no_url)
    assert "hello: deployed" in deployed.stderr
    assert other_gateway.tokens() == {None, "Bearer their-token"}
    assert app.token not in json.dumps(other_gateway.seen)


def test_login_checks_saves_privately_and_is_used(appliance_factory: type, tmp_path: Path) -> None:
    app = appliance_factory.start("--no-simulator")
    # A CLI on another machine: its data directory has no token of this appliance.
    elsewhere = {"VEBA_DATA_DIR": str(tmp_path / "client")}
    saved = tmp_path / "config" / "veba" / "credentials.json"

    before = app.cli("list", check=False, env=elsewhere)
    assert before.returncode == 1
    assert f"veba login --gateway {app.url} --password-stdin" in before.stderr

    wrong = app.cli(
        "login", "--password-stdin", input="not-the-token\n", check=False, env=elsewhere
    )
    assert wrong.returncode == 1 and "refused this token; nothing saved" in wrong.stderr
    assert not saved.exists()
    user = app.cli("login", "-u", "bob", "--password-stdin", input=app.token, check=False)
    assert user.returncode == 1 and "one user, admin" in user.stderr

    # VEBA's guides: `export OPENFAAS_URL=...; faas-cli login --username admin --password-stdin`
    right = app.cli(
        "login", "--username", "admin", "--password-stdin", input=app.token + "\n",
        env={**elsewhere, "VEBA_URL": None, "OPENFAAS_URL": app.url},
    )  # fmt: skip
    assert f"credentials saved for admin at {app.url}" in right.stderr
    assert app.token not in right.stdout + right.stderr
    assert saved.stat().st_mode & 0o777 == 0o600
    assert saved.parent.stat().st_mode & 0o777 == 0o700
    assert app.cli("list", "-o", "json", env=elsewhere).stdout.strip() == "[]"

    # --password works too, with faas-cli's warning.
    loud = app.cli("login", "--password", app.token, env=elsewhere)
    assert "WARNING! Using --password is insecure" in loud.stderr

    assert f"credentials removed for {app.url}" in app.cli("logout", env=elsewhere).stderr
    assert app.cli("list", check=False, env=elsewhere).returncode == 1
    again = app.cli("logout", check=False, env=elsewhere)
    assert again.returncode == 1 and "no token saved" in again.stderr


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that no CA signed."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "veba test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "tls.crt", folder / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_no_verify_against_an_appliance_serving_https(
    appliance_factory: type, tmp_path: Path
) -> None:
    cert, key = _self_signed(tmp_path)
    app = appliance_factory.start("--no-simulator", "--tls-cert", str(cert), "--tls-key", str(key))
    assert app.url.startswith("https://")
    write_function(tmp_path / "fn" / "counts", COUNTS)
    stack = write_stack(
        tmp_path / "fn" / "stack.yml", {"counts": {"lang": "python3", "handler": "./counts"}}
    )

    # The seed guide's `faas-cli deploy -f hello-world.yml --tls-no-verify`, without the flag:
    refused = app.cli("deploy", "-f", str(stack), check=False)
    assert refused.returncode == 1
    assert "TLS certificate is not trusted" in refused.stderr
    assert "--tls-no-verify" in refused.stderr and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 2  # "deploying to", then the error

    # With it: deployed, and the function's workers reach the store over TLS.
    app.cli("deploy", "-f", str(stack), "--tls-no-verify")
    app.cli("up", "-f", str(stack), "--tls-no-verify")
    assert app.cli("invoke", "counts", "--data", "", "--tls-no-verify").stdout.strip() == "1"
    assert app.cli("invoke", "counts", "--data", "", "--tls-no-verify").stdout.strip() == "2"
    app.cli("secret", "create", "s", "--from-literal", "v", "--tls-no-verify")

    # The flag is for one call: verification stays on, and a trusted CA passes it.
    assert app.cli("list", check=False).returncode == 1
    assert "counts" in app.cli("list", env={"SSL_CERT_FILE": str(cert)}).stdout
    login = app.cli("login", "--password-stdin", input=app.token, check=False)
    assert login.returncode == 1 and "--tls-no-verify" in login.stderr
    app.cli("login", "--password-stdin", "--tls-no-verify", input=app.token)
