"""The API as the running app serves it (Reflex backend, every middleware)."""

import base64
import os
import socket
from urllib.parse import urlsplit

import httpx
import pytest

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/v1/nope"), ("POST", "/api/v1/subscriptions/unknown"), ("GET", "/api/v1/")],
)
def test_unknown_api_path_is_a_json_404_not_the_app_page(live_app, method, path):
    response = httpx.request(method, live_app.url + path, timeout=30)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["detail"].startswith("No such API endpoint")


FOREIGN = "https://evil.example"


def test_cors_answers_only_the_apps_own_origin(live_app):
    with httpx.Client(base_url=live_app.url, timeout=30) as client:
        own = client.get("/api/v1/health", headers={"Origin": live_app.url, "Cookie": "x=1"})
        assert own.headers.get("access-control-allow-origin") == live_app.url
        foreign = client.get("/api/v1/health", headers={"Origin": FOREIGN, "Cookie": "x=1"})
        assert "access-control-allow-origin" not in foreign.headers
        preflight = client.options(
            "/api/v1/subscriptions/cancel",
            headers={
                "Origin": FOREIGN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert preflight.headers.get("access-control-allow-origin") != FOREIGN
        assert preflight.status_code == 400


def _websocket_handshake(app_url: str, origin: str) -> str:
    """Open Reflex's event websocket as a browser on `origin` would; the HTTP status line."""
    parts = urlsplit(app_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as conn:
        key = base64.b64encode(os.urandom(16)).decode()
        conn.sendall(
            (
                f"GET /_event/?EIO=4&transport=websocket HTTP/1.1\r\n"
                f"Host: {parts.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Origin: {origin}\r\n\r\n"
            ).encode()
        )
        return conn.recv(256).split(b"\r\n", 1)[0].decode()


@pytest.mark.parametrize("origin", [FOREIGN, "http://evil.localhost:3000"])
def test_another_site_cannot_open_the_websocket(live_app, origin):
    # Browsers send the page's Origin on a websocket handshake and let the server decide;
    # a page elsewhere must not drive a logged-in person's session.
    assert _websocket_handshake(live_app.url, origin).split(" ")[1] == "403"
    assert _websocket_handshake(live_app.url, live_app.url).split(" ")[1] == "101"
