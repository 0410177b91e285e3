"""Integration fixtures: the Stripe emulator (settings pointing at it), a local SMTP server,
Stripe-shaped objects for webhook tests, and paying on the emulator's Checkout page."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from html.parser import HTMLParser
from urllib.parse import urljoin

import httpx
import pytest
from aiosmtpd.controller import Controller

from devtools.stripe_emulator import reset, start_in_background
from subscription_app import crypto
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


def make_monthly_price(stripe_client, product_name: str, unit_amount: int):
    """Another monthly USD price in the same Stripe account."""
    product = stripe_client.v1.products.create(params={"name": product_name})
    return stripe_client.v1.prices.create(
        params={
            "product": product.id,
            "unit_amount": unit_amount,
            "currency": "usd",
            "recurring": {"interval": "month"},
        }
    )


def subscribe(api, headers: dict[str, str], payment_method_id: str):
    """POST /api/v1/subscriptions/subscribe with this payment method."""
    return api.post(
        "/api/v1/subscriptions/subscribe",
        json={"payment_method_id": payment_method_id},
        headers=headers,
    )


class Inbox:
    """aiosmtpd handler keeping every message it receives (`delay`: seconds per message)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.delay = 0.0
        self.messages: list[str] = []

    async def handle_DATA(self, server, session, envelope):
        if self.delay:
            await asyncio.sleep(self.delay)
        self.messages.append(envelope.content.decode("utf-8", errors="replace"))
        return "250 OK"


@pytest.fixture
def smtp(settings_env):
    """A local SMTP server, with SMTP_URL pointing at it; yields its `Inbox`."""
    inbox = Inbox(free_port())
    controller = Controller(inbox, hostname="127.0.0.1", port=inbox.port)
    controller.start()
    settings_env(SMTP_URL=f"smtp://127.0.0.1:{inbox.port}")
    yield inbox
    controller.stop()


# Stripe objects for webhook tests: an hour ago, so "now" is always later.
T0 = int(time.time()) - 3600


def subscription_object(sub_id="sub_A", cus_id="cus_A", status="active", **extra) -> dict:
    return {
        "id": sub_id,
        "object": "subscription",
        "customer": cus_id,
        "status": status,
        "start_date": T0,
        "cancel_at_period_end": False,
        "canceled_at": None,
        "items": {
            "data": [
                {
                    "price": {"id": "price_1"},
                    "current_period_start": T0,
                    "current_period_end": T0 + 30 * 86400,
                }
            ]
        },
        **extra,
    }


def event_body(event_type: str, obj: dict, created: int = T0, event_id: str | None = None) -> str:
    return json.dumps(
        {
            "id": event_id or f"evt_{uuid.uuid4().hex}",
            "object": "event",
            "type": event_type,
            "created": created,
            "livemode": False,
            "data": {"object": obj},
        }
    )


# Settings of a production deployment (HTTPS-only, trusted proxies), for tests that need one.
PRODUCTION = {
    "APP_ENV": "production",
    "APP_SECRET_KEY": "q" * 20 + "Z7x9Lm2Pk4Rt8Wv1Yb3N",
    "APP_URL": "https://billing.example.org",
    "DATABASE_URL": "postgresql://app@db/app",  # the test engine stands in for it
    "STRIPE_SECRET_KEY": "sk_test_51ProdLikeKey",
    "STRIPE_PUBLISHABLE_KEY": "pk_test_51ProdLikeKey",
    "STRIPE_WEBHOOK_SECRET": "whsec_prodlike",
    "STRIPE_PRICE_ID": "price_123",
    "TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1",
    "APP_BLIND_INDEX_KEY": crypto.generate_key(),
}


class _FormReader(HTMLParser):
    """The first form of a page: its action, its fields by label, and hidden fields."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.labels: dict[str, str] = {}  # field id -> label text
        self.fields: dict[str, str] = {}  # field id -> field name
        self.values: dict[str, str] = {}  # field name -> preset value
        self._label_for: str | None = None
        self._in_form = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "form" and self.action is None:
            self.action, self._in_form = attributes.get("action") or "", True
        elif tag == "label":
            self._label_for = attributes.get("for")
        elif tag in ("input", "select") and self._in_form and attributes.get("name"):
            name = attributes["name"] or ""
            self.fields[attributes.get("id") or name] = name
            self.values[name] = attributes.get("value") or ""

    def handle_endtag(self, tag):
        if tag == "label":
            self._label_for = None
        elif tag == "form":
            self._in_form = False

    def handle_data(self, data):
        if self._label_for and data.strip():
            self.labels[self._label_for] = self.labels.get(self._label_for, "") + data.strip()


def pay_checkout(url: str, card: str = "4242 4242 4242 4242") -> httpx.Response:
    """Pay on the emulator's hosted Checkout page as a person would: fields by their labels.

    Returns the answer to the form (a redirect to the success URL when it worked).
    """
    page = httpx.get(url, timeout=30)
    page.raise_for_status()
    form = _FormReader()
    form.feed(page.text)
    answers = {
        "Card number": card,
        "Expiry date": "12 / 34",
        "CVC": "123",
        "Cardholder name": "Ada Lovelace",
    }
    data = dict(form.values)
    for field_id, label in form.labels.items():
        if label in answers and field_id in form.fields:
            data[form.fields[field_id]] = answers[label]
    return httpx.post(urljoin(url, form.action or url), data=data, timeout=30)


@pytest.fixture
def stripe_500_replayed(monkeypatch):
    """Install on an SDK service class (e.g. `stripe.SubscriptionService`): its first `create`
    gets a Stripe 500, and, as Stripe does, every later request with that idempotency key
    gets the same 500 replayed (Stripe keeps a key's first answer for a day, errors too)."""
    import stripe

    failed: set[str | None] = set()

    def install(service_class) -> set[str | None]:
        real = service_class.create

        def create(self, params=None, options=None):
            key = (options or {}).get("idempotency_key")
            if not failed or key in failed:
                failed.add(key)
                body = {"error": {"type": "api_error", "message": "An unknown error occurred."}}
                raise stripe.APIError("An unknown error occurred.", http_status=500, json_body=body)
            return real(self, params, options)

        monkeypatch.setattr(service_class, "create", create)
        return failed

    return install
