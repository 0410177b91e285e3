"""A subscribe in Chromium over HTTPS through the reverse proxy shipped in deploy/.

The app behind the proxy runs as production runs it (`APP_ENV=production`, PostgreSQL), so
HTTPS-only, HSTS and the `__Host-` session cookie are what a real browser meets. Generated
where TEST_DATABASE_URL is set (`.ci/run` sets it when PostgreSQL answers).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from string import Template

import httpx
import pytest
from playwright.sync_api import BrowserType, expect

from devtools.liveapp import CHROMIUM, CHROMIUM_ARGS, ROOT, free_port, start_live_app
from devtools.pgschema import fresh_schema
from tests.conftest import LOCAL_NAMES, issue_certificate, write_pem
from tests.e2e.conftest import fill_card, path_is, register, unique_email

pytestmark = pytest.mark.e2e
DATABASE = os.environ.get("TEST_DATABASE_URL")


def pytest_generate_tests(metafunc):
    """Production needs PostgreSQL: only where it is available."""
    if "https_proxy" in metafunc.fixturenames:
        metafunc.parametrize("database", ["postgresql"] if DATABASE else [], scope="module")


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, signed by itself."""
    return write_pem(directory, "tls", *issue_certificate("127.0.0.1", LOCAL_NAMES))


@pytest.fixture(scope="module")
def production_app(tmp_path_factory, database):
    """The app in production mode on a fresh PostgreSQL schema, trusting a proxy on 127.0.0.1."""
    workdir = tmp_path_factory.mktemp("proxied_app")
    https_port = free_port()
    public_url = f"https://127.0.0.1:{https_port}"
    with fresh_schema(DATABASE, prefix="e2e_tls") as database_url:
        # Reflex's page assumes HTTPS is on port 443 unless told the public backend URL; this
        # app gets its own build (REFLEX_WEB_WORKDIR) so the shared e2e app is not disturbed.
        app = start_live_app(
            workdir,
            APP_ENV="production",
            APP_URL=public_url,
            APP_SECRET_KEY=secrets.token_urlsafe(48),
            STRIPE_WEBHOOK_SECRET="whsec_" + secrets.token_hex(24),
            DATABASE_URL=database_url,
            TRUSTED_PROXIES="127.0.0.1",
            REFLEX_API_URL=public_url,
            REFLEX_WEB_WORKDIR=str(workdir / "web"),
        )
        try:
            yield app, https_port
        finally:
            app.stop()


@pytest.fixture(scope="module")
def https_proxy(tmp_path_factory, production_app):
    """nginx from deploy/nginx.conf.template in front of an app that trusts it."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.fail("nginx is not installed; `make test` installs it (Debian package nginx)")
    workdir = tmp_path_factory.mktemp("nginx")
    cert, key = self_signed_certificate(workdir)
    live_app, https_port = production_app
    http_port = free_port()
    public_url = f"https://127.0.0.1:{https_port}"
    template = Template((ROOT / "deploy" / "nginx.conf.template").read_text())
    config = template.safe_substitute(
        SERVER_NAME="127.0.0.1",
        HTTP_PORT=http_port,
        HTTPS_PORT=https_port,
        APP_UPSTREAM=live_app.url.removeprefix("http://"),
        TLS_CERT=cert,
        TLS_KEY=key,
        ACCESS_LOG=workdir / "access.log",
    )
    (workdir / "nginx.conf").write_text(config)
    (workdir / "logs").mkdir()
    proc = subprocess.Popen(
        [
            nginx,
            "-p",
            str(workdir),
            "-c",
            str(workdir / "nginx.conf"),
            "-g",
            f"daemon off; pid {workdir}/nginx.pid; error_log {workdir}/error.log;",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = public_url
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited: {proc.stderr.read().decode()}")
        try:
            if httpx.get(f"{url}/api/v1/health", verify=str(cert), timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("nginx did not answer in time")
        time.sleep(0.2)  # polling interval while nginx starts
    yield {"https": url, "http": f"http://127.0.0.1:{http_port}", "log": workdir / "access.log"}
    proc.terminate()
    proc.wait(timeout=10)


def test_plain_http_is_sent_to_https(https_proxy):
    response = httpx.get(f"{https_proxy['http']}/plan?x=1", follow_redirects=False)
    assert response.status_code == 301
    assert response.headers["location"] == f"{https_proxy['https']}/plan?x=1"


def test_subscribe_over_https_through_the_proxy(https_proxy, browser_type: BrowserType):
    # The local emulator serves its Stripe.js over plain HTTP; Stripe's own is HTTPS. Only
    # this test browser may load that one insecure script into the HTTPS page.
    browser = browser_type.launch(
        executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, "--allow-running-insecure-content"]
    )
    context = browser.new_context(ignore_https_errors=True, base_url=https_proxy["https"])
    page = context.new_page()
    websockets = []
    page.on("websocket", lambda ws: websockets.append(ws.url))
    try:
        register(page, unique_email("https"))
        page.goto("/plan")
        page.get_by_role("button", name="Subscribe", exact=True).click()
        expect(page).to_have_url(path_is("/checkout"))
        expect(page.get_by_role("heading", name="Checkout")).to_be_visible()
        subscribe = page.get_by_role("button", name="Subscribe", exact=True)
        expect(subscribe).to_be_enabled(timeout=15_000)
        fill_card(page, "4242424242424242")
        page.get_by_role("button", name="Subscribe", exact=True).click()
        expect(page.get_by_role("status")).to_contain_text("You're subscribed!", timeout=20_000)
        page.goto("/dashboard")
        expect(page.get_by_text("Active", exact=True)).to_be_visible()
        assert page.url.startswith("https://")
        assert websockets and all(url.startswith("wss://") for url in websockets)
        # Production's cookie: `__Host-` prefixed, which the browser accepts only when Secure,
        # Path=/ and without Domain.
        cookie = next(c for c in context.cookies() if c["name"] == "__Host-sa_session")
        assert cookie["httpOnly"] is True and cookie["secure"] is True and cookie["path"] == "/"
        assert "sa_session" not in {c["name"] for c in context.cookies()}
        # A reload is still logged in: the page found its session through the cookie.
        page.reload()
        expect(page.get_by_text("Active", exact=True)).to_be_visible()
    finally:
        context.close()
        browser.close()
    # nginx logs a websocket once it closes. Its URL carries the tab's Reflex token, which
    # the access log leaves out with every query string.
    deadline = time.monotonic() + 10
    while "/_event/" not in https_proxy["log"].read_text():
        assert time.monotonic() < deadline, "nginx never logged the closed websockets"
        time.sleep(0.1)  # polling interval while nginx writes its log
    logged = https_proxy["log"].read_text()
    assert "token=" not in logged and "?" not in logged
