"""Integration fixtures: the local Stripe emulator, with the app's settings pointing at it."""

from __future__ import annotations

import pytest

from devtools.stripe_emulator import reset, start_in_background
from tests.conftest import free_port


@pytest.fixture(scope="session")
def stripe_emulator():
    """One emulator process for the session (real Stripe SDK calls go to it)."""
    with start_in_background(free_port()) as emulator:
        yield emulator


@pytest.fixture
def stripe_env(stripe_emulator, settings_env):
    """App settings pointing at a clean emulator with the default price seeded."""
    from subscription_app.billing import catalog, client

    reset(stripe_emulator.url)
    settings = settings_env(
        STRIPE_SECRET_KEY="sk_test_integration",
        STRIPE_PUBLISHABLE_KEY="pk_test_integration",
        STRIPE_WEBHOOK_SECRET="whsec_integration",
        STRIPE_API_BASE=stripe_emulator.url,
        STRIPE_JS_URL=stripe_emulator.js_url,
        STRIPE_PRICE_ID=None,
    )
    client.get_client.cache_clear()
    catalog.forget_default_price()
    price_id = catalog.ensure_default_price()
    yield {"settings": settings, "price_id": price_id, "emulator": stripe_emulator}
    client.get_client.cache_clear()
    catalog.forget_default_price()


@pytest.fixture
def stripe_client(stripe_env):
    """The app's own configured Stripe client (pointed at the emulator)."""
    from subscription_app.billing.client import get_client

    return get_client()


@pytest.fixture
def make_payment_method(stripe_client):
    """Create an unattached card payment method from a Stripe test token (`tok_visa`...)."""

    def _make(token: str = "tok_visa") -> str:
        pm = stripe_client.v1.payment_methods.create(
            params={"type": "card", "card": {"token": token}}
        )
        return pm.id

    return _make


def auth_headers(api, email: str, password: str = "s3cret-pass") -> dict[str, str]:
    """Register `email` through the API and return its bearer-token header."""
    registered = api.post("/api/v1/auth/register", json={"email": email, "password": password})
    assert registered.status_code == 201, registered.text
    token = api.post("/api/v1/auth/login", json={"email": email, "password": password})
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


def subscribe(api, headers: dict[str, str], payment_method_id: str):
    """POST /api/v1/subscriptions/subscribe with this payment method."""
    return api.post(
        "/api/v1/subscriptions/subscribe",
        json={"payment_method_id": payment_method_id},
        headers=headers,
    )
