"""Allowed origins, and the client address the websocket (Reflex's state) sees behind a proxy."""

import asyncio

import pytest

from subscription_app.security import SecurityMiddleware, allowed_origins
from subscription_app.settings import load_settings


@pytest.mark.parametrize(
    ("app_url", "env", "expected"),
    [
        ("https://Billing.Example.org:443/", "development", ["https://billing.example.org"]),
        ("https://billing.example.org:8443", "development", ["https://billing.example.org:8443"]),
        (
            "http://localhost:3000",
            "development",
            ["http://localhost:3000", "http://127.0.0.1:3000", "http://[::1]:3000"],
        ),
    ],
)
def test_allowed_origins_are_the_apps_own_as_browsers_spell_it(app_url, env, expected):
    assert allowed_origins(load_settings(_env_file=None, app_url=app_url, app_env=env)) == expected


def test_a_relative_app_url_is_refused_rather_than_allowing_every_origin():
    with pytest.raises(ValueError, match="APP_URL must be an absolute"):
        load_settings(_env_file=None, app_url="billing.example.org", app_env="development")


def _seen_through_the_middleware(peer: str, headers: list[tuple[str, str]], settings_env):
    """(client, scheme) a websocket app (Reflex's event socket) sees through the middleware."""
    settings_env(TRUSTED_PROXIES="10.0.0.2")
    seen: dict = {}

    async def inner(scope, receive, send):
        seen["client"], seen["scheme"] = scope["client"][0], scope["scheme"]

    scope = {
        "type": "websocket",
        "scheme": "ws",
        "path": "/_event/",
        "headers": [(name.encode(), value.encode()) for name, value in headers],
        "client": (peer, 1234),
    }
    asyncio.run(SecurityMiddleware(inner)(scope, None, None))
    return seen["client"], seen["scheme"]


def _websocket_client(peer: str, forwarded_for: str, settings_env) -> str:
    """The `client` a websocket app sees through the middleware."""
    return _seen_through_the_middleware(peer, [("x-forwarded-for", forwarded_for)], settings_env)[0]


def test_a_proxy_adding_its_own_header_line_is_read_after_the_clients(settings_env):
    """HAProxy's `option forwardfor` adds a line rather than extending the client's: the
    client's forged lines come first and must not be believed."""
    client, scheme = _seen_through_the_middleware(
        "10.0.0.2",
        [
            ("x-forwarded-for", "6.6.6.6"),  # the client's, forged
            ("x-forwarded-proto", "https"),  # the client's, forged
            ("x-forwarded-for", "198.51.100.4"),  # the proxy's
            ("x-forwarded-proto", "http"),  # the proxy's
        ],
        settings_env,
    )
    assert (client, scheme) == ("198.51.100.4", "ws")
    # One line from a proxy that sets the header (deploy/'s nginx): its word.
    assert (
        _seen_through_the_middleware("10.0.0.2", [("x-forwarded-proto", "https")], settings_env)[1]
        == "wss"
    )


def test_the_websocket_sees_the_client_behind_a_trusted_proxy(settings_env):
    # Reflex takes `router.session.client_ip` from the ASGI scope's client, which the
    # middleware rewrites: so card-testing limits in the UI count people, not the proxy.
    assert _websocket_client("10.0.0.2", "6.6.6.6, 198.51.100.4", settings_env) == "198.51.100.4"
    # From an untrusted peer the header is ignored.
    assert _websocket_client("203.0.113.8", "198.51.100.4", settings_env) == "203.0.113.8"
