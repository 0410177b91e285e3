"""HTTPS-only in production, the trusted-proxy rule, security headers, failing closed."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import func, select
from starlette.websockets import WebSocketDisconnect

from subscription_app import crypto
from subscription_app.api import create_api
from subscription_app.api.webhooks import dispatch_webhooks_first
from subscription_app.models import StripeEvent
from subscription_app.security import SecurityMiddleware
from tests.integration.conftest import PRODUCTION


@pytest.fixture
def production(settings_env, db_engine):
    settings_env(**PRODUCTION, APP_ENCRYPTION_KEYS=crypto.generate_key())
    # As served: webhook deliveries take the fast path, everything else the middleware.
    return dispatch_webhooks_first(SecurityMiddleware(create_api()))


def client(app, *, https=False, peer="203.0.113.9"):
    base = "https://billing.example.org" if https else "http://billing.example.org"
    return TestClient(app, base_url=base, client=(peer, 40000), follow_redirects=False)


def test_headers_in_development(db_engine):
    response = TestClient(SecurityMiddleware(create_api())).get("/api/v1/health")
    assert response.status_code == 200
    csp = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp
    assert "default-src 'self'" in csp
    assert "https://js.stripe.com" in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "strict-origin-when-cross-origin"
    assert "strict-transport-security" not in response.headers


def test_a_header_the_app_set_itself_is_kept_not_repeated(db_engine):
    async def framed(scope, receive, send):
        headers = [(b"x-frame-options", b"SAMEORIGIN"), (b"content-type", b"text/plain")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    response = TestClient(SecurityMiddleware(framed)).get("/embeddable")

    assert response.headers.get_list("x-frame-options") == ["SAMEORIGIN"]
    assert response.headers.get_list("x-content-type-options") == ["nosniff"]
    assert len(response.headers.get_list("content-security-policy")) == 1


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_plain_http_reads_are_redirected_to_https(production, method):
    response = client(production).request(method, "/api/v1/health?x=1")
    assert response.status_code == 308
    assert response.headers["location"] == "https://billing.example.org/api/v1/health?x=1"


def test_redirect_ignores_a_forged_host_header(production):
    response = client(production).get("/plan", headers={"Host": "evil.example"})
    assert response.headers["location"] == "https://billing.example.org/plan"


@pytest.mark.parametrize(
    "path", ["/api/v1/auth/login", "/api/v1/auth/register", "/api/v1/webhooks/stripe"]
)
def test_plain_http_writes_are_refused(production, session, path):
    response = client(production).post(path, json={"email": "a@b.co", "password": "x" * 10})
    assert response.status_code == 403
    assert "HTTPS is required" in response.text
    session.rollback()  # a fresh snapshot
    assert session.exec(select(func.count()).select_from(StripeEvent)).one() == 0


def test_https_gets_hsts(production):
    response = client(production, https=True).get("/api/v1/health")
    assert response.status_code == 200
    assert response.headers["strict-transport-security"].startswith("max-age=")
    # The webhook fast path keeps the security headers (an unsigned delivery: 400).
    response = client(production, https=True).post("/api/v1/webhooks/stripe", content=b"{}")
    assert response.status_code == 400
    assert response.headers["strict-transport-security"].startswith("max-age=")
    assert response.headers["x-content-type-options"] == "nosniff"


def test_forwarded_proto_from_a_trusted_proxy_is_believed(production):
    response = client(production, peer="10.1.2.3").get(
        "/api/v1/health", headers={"X-Forwarded-Proto": "https"}
    )
    assert response.status_code == 200
    assert "strict-transport-security" in response.headers


def test_forged_forwarded_proto_from_an_untrusted_peer_is_ignored(production):
    response = client(production, peer="203.0.113.9").get(
        "/api/v1/health", headers={"X-Forwarded-Proto": "https"}
    )
    assert response.status_code == 308
    forged_post = client(production, peer="203.0.113.9").post(
        "/api/v1/auth/login", headers={"X-Forwarded-Proto": "https"}, json={}
    )
    assert forged_post.status_code == 403


def test_plain_websocket_is_refused_in_production(production):
    with pytest.raises(WebSocketDisconnect), client(production).websocket_connect("/_event"):
        pass


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/nope"),
        ("POST", "/api/v1/subscriptions/unknown"),
        ("DELETE", "/api/v1/auth/whatever/deeper"),
        ("GET", "/api/v1/webhooks"),
    ],
)
def test_unknown_api_path_is_a_json_404(db_engine, method, path):
    with TestClient(create_api(), raise_server_exceptions=False) as api:
        response = api.request(method, path)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["detail"].startswith("No such API endpoint")


def _start_config(**env: str) -> subprocess.CompletedProcess:
    """Load the app's configuration (what `reflex run` does first) in a fresh process."""
    base = {k: v for k, v in os.environ.items() if k not in ("APP_ENV", "REDIS_URL")}
    return subprocess.run(
        [sys.executable, "-c", "import rxconfig"],
        cwd=Path(__file__).resolve().parents[2],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"APP_URL": "https://billing.example.org"}, "APP_ENV is not set but APP_URL"),
        ({"GRANIAN_WORKERS": "3"}, "3 backend workers need REDIS_URL"),
        ({"WEB_CONCURRENCY": "2"}, "2 backend workers need REDIS_URL"),
    ],
)
def test_the_app_refuses_to_start_where_it_would_fail_open(env, message):
    refused = _start_config(**env)
    assert refused.returncode != 0
    assert message in refused.stderr
    assert _start_config().returncode == 0  # the same process starts with the defaults


def test_only_content_named_build_files_are_cached_for_good(tmp_path, db_engine):
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    (tmp_path / "assets").mkdir()
    for name in ("assets/root-ClBo06lq.js", "assets/styles.css", "checkout.js", "index.html"):
        (tmp_path / name).write_text("x")
    files = Starlette(routes=[Mount("/", StaticFiles(directory=tmp_path, html=True))])
    client = TestClient(SecurityMiddleware(files))

    built = client.get("/assets/root-ClBo06lq.js")
    assert built.status_code == 200
    assert built.headers["cache-control"] == "public, max-age=31536000, immutable"
    # Anything that may change under its name is asked for again as before: a build file
    # without a content hash, our own assets, pages, and what is not there.
    for path in ("/assets/styles.css", "/checkout.js", "/", "/assets/gone-ClBo06lq.js"):
        assert "cache-control" not in client.get(path).headers, path


def test_checkout_js_is_cached_for_good_only_at_the_address_naming_its_content(tmp_path):
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    from subscription_app import routes

    served = Path(__file__).resolve().parents[2] / "assets" / "checkout.js"
    (tmp_path / "checkout.js").write_bytes(served.read_bytes())
    files = Starlette(routes=[Mount("/", StaticFiles(directory=tmp_path))])
    client = TestClient(SecurityMiddleware(files))

    # The pages' address names today's content.
    digest = hashlib.sha256(served.read_bytes()).hexdigest()
    version = routes.CHECKOUT_SCRIPT_URL.split("?v=")[1]
    assert routes.CHECKOUT_SCRIPT_URL.startswith("/checkout.js?v=") and digest.startswith(version)
    kept = client.get(routes.CHECKOUT_SCRIPT_URL)
    assert kept.status_code == 200 and kept.content == served.read_bytes()
    assert kept.headers["cache-control"] == "public, max-age=31536000, immutable"
    # An old or made-up version gets today's file, which must not be kept under that name.
    for address in ("/checkout.js?v=0123456789abcdef", f"/checkout.js?v={version}&x=1"):
        answer = client.get(address)
        assert answer.status_code == 200 and "cache-control" not in answer.headers, address
