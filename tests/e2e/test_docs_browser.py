"""`/docs` from a browser: a real headless Chromium (Debian's `chromium`, driven
by Playwright) opens it on a real `veba serve`, is sent to the sign-in form,
signs in with the token, and sees Swagger UI list the operations and run one,
loading nothing from outside the appliance and logging no console error.
Then the session cookie's rules over plain HTTP, and the OpenAPI document
built without a duplicate operation id."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from playwright.sync_api import ConsoleMessage, sync_playwright

from tests.e2e.harness import ApplianceProcess
from tests.e2e.test_gateway_auth import _self_signed
from veba.api.app import create_app
from veba.appliance import Appliance
from veba.settings import ApplianceSettings

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def test_docs_in_a_browser_sign_in_offline(appliance_factory: type) -> None:
    app: ApplianceProcess = appliance_factory.start("--simulator-rate", "0")
    own = urlsplit(app.url).netloc
    requested: list[str] = []
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page()
            page.on("request", lambda r: requested.append(r.url))
            page.on("console", on_console)
            page.on("pageerror", lambda exc: errors.append(str(exc)))

            page.goto(f"{app.url}/docs")
            assert urlsplit(page.url).path == "/login"  # sent to sign in first
            page.fill("input[name=token]", "not-the-token")
            page.click("button[type=submit]")
            assert "Wrong token." in page.content()
            # The refusal is a 401, which the browser reports; that one is expected.
            assert errors == [
                "Failed to load resource: the server responded with a status of 401 (Unauthorized)"
            ]
            errors.clear()
            page.fill("input[name=token]", app.token)
            page.click("button[type=submit]")
            page.wait_for_url(f"{app.url}/docs")

            # Swagger UI renders every operation from /openapi.json.
            page.wait_for_selector(".opblock", timeout=60_000)
            assert page.locator(".opblock").count() > 30
            # "Try it out" on GET /api/v1/status runs with the session cookie.
            status = page.locator("#operations-veba-get_api_v1_status")
            status.locator(".opblock-summary").click()
            status.get_by_role("button", name="Try it out").click()
            status.get_by_role("button", name="Execute").click()
            page.wait_for_selector(
                "#operations-veba-get_api_v1_status .live-responses-table tr.response .response-col_status",
                timeout=30_000,
            )
            shown = status.locator(
                ".live-responses-table tr.response .response-col_status"
            ).first.inner_text()
            assert shown.strip() == "200", shown
            # A change from the page itself passes the cross-site check.
            answered = page.evaluate(
                """() => fetch('/api/v1/dlq/redrive', {method: 'POST',
                    headers: {'Content-Type': 'application/json'},
                    body: JSON.stringify({all: true, dry_run: true})}).then(r => r.status)"""
            )
            assert answered == 200
        finally:
            browser.close()

    # blob: URLs are the page's own objects (Swagger's downloads), not fetches.
    outside = [
        url for url in requested if urlsplit(url).netloc != own and not url.startswith("blob:")
    ]
    assert outside == [], outside
    assert any(url.endswith("/docs/static/swagger-ui-bundle.js") for url in requested)
    assert errors == [], errors


def test_the_session_cookie_rules(appliance_factory: type) -> None:
    app: ApplianceProcess = appliance_factory.start("--no-simulator")
    with httpx.Client(base_url=app.url, timeout=30) as anonymous:
        r = anonymous.get("/docs", headers={"Accept": "text/html"})  # a browser
        assert r.status_code == 303 and r.headers["location"] == "/login?next=/docs"
        assert anonymous.get("/docs").status_code == 401  # a script
        assert anonymous.get("/openapi.json").status_code == 401
        assert anonymous.get("/docs/static/swagger-ui-bundle.js").status_code == 401
        assert anonymous.get("/login").status_code == 200
        r = anonymous.post("/login", data={"token": "wrong", "next": "/docs"})
        assert r.status_code == 401 and "set-cookie" not in r.headers
        # Only a path of this appliance to go back to.
        r = anonymous.post("/login", data={"token": app.token, "next": "//evil.example/"})
        assert r.status_code == 400 and "set-cookie" not in r.headers
        assert "error" in r.json()

    with httpx.Client(base_url=app.url, timeout=30) as browser:
        r = browser.post("/login", data={"token": app.token, "next": "/docs"})
        assert r.status_code == 303 and r.headers["location"] == "/docs"
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
        value = browser.cookies["veba_session"]
        assert app.token not in value
        assert browser.get("/docs").status_code == 200
        assert browser.get("/openapi.json").status_code == 200
        assert browser.get("/api/v1/status").status_code == 200

        # A change with only the cookie: refused unless from the appliance's own page.
        redrive = {"all": True, "dry_run": True}
        r = browser.post("/api/v1/dlq/redrive", json=redrive)
        assert r.status_code == 403 and "Origin" in r.json()["error"]
        r = browser.post(
            "/api/v1/dlq/redrive", json=redrive, headers={"Origin": "http://evil.example"}
        )
        assert r.status_code == 403
        r = browser.post("/api/v1/dlq/redrive", json=redrive, headers={"Origin": app.url})
        assert r.status_code == 200
        r = browser.post(
            "/api/v1/dlq/redrive", json=redrive, headers={"Referer": f"{app.url}/docs"}
        )
        assert r.status_code == 200

        # A tampered cookie is no cookie.
        tampered = value[:-1] + ("0" if value[-1] != "0" else "1")
        r = httpx.get(f"{app.url}/api/v1/status", cookies={"veba_session": tampered})
        assert r.status_code == 401
        r = httpx.get(f"{app.url}/api/v1/status", cookies={"veba_session": app.token})
        assert r.status_code == 401  # the token itself is not a session

        r = browser.post("/logout", headers={"Origin": app.url})
        assert r.status_code == 303 and "veba_session" not in browser.cookies
        assert browser.get("/api/v1/status").status_code == 401

    # Scripts are not affected: the bearer token needs no Origin.
    with app.client() as http:
        assert http.post("/api/v1/dlq/redrive", json={"all": True}).status_code == 200


def test_the_openapi_document_has_one_id_per_operation(tmp_path: Path) -> None:
    settings = ApplianceSettings(data_dir=tmp_path / "data", listen="127.0.0.1:1", simulator=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        schema = create_app(Appliance(settings)).openapi()
    assert [str(w.message) for w in caught if "Operation ID" in str(w.message)] == []
    ids = [op["operationId"] for ops in schema["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids)) and len(ids) > 30
    assert "post_login" in ids and "get_api_v1_status" in ids


def test_under_tls_the_session_cookie_is_secure(appliance_factory: type, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    app = appliance_factory.start("--no-simulator", "--tls-cert", str(cert), "--tls-key", str(key))
    with httpx.Client(base_url=app.url, verify=False, timeout=30) as browser:
        r = browser.post("/login", data={"token": app.token, "next": "/docs"})
        assert r.status_code == 303
        assert "Secure" in r.headers["set-cookie"] and "HttpOnly" in r.headers["set-cookie"]
