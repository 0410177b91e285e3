"""The Stripe emulator speaks today's API to the real stripe SDK.

One emulator subprocess serves the module (started on a free port); every
test creates its own objects with unique lookup keys, so order does not
matter. A second, short-lived emulator checks start/stop/reset.
"""

from __future__ import annotations

import http.server
import json
import queue
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import stripe

from devtools.stripe_emulator import (
    EmulatorProcess,
    register_webhook,
    reset,
    start_in_background,
)

CARD_OK = "4242424242424242"
CARD_DECLINED_ON_ATTACH = "4000000000000002"
CARD_DECLINED_ON_CHARGE = "4000000000000341"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorProcess]:
    with start_in_background(_free_port()) as running:
        yield running


@pytest.fixture(scope="module")
def client(emulator: EmulatorProcess) -> stripe.StripeClient:
    # No retries: a failing request must fail the test, not be replayed.
    return stripe.StripeClient(
        "sk_test_12345",
        base_addresses={"api": emulator.url},
        max_network_retries=0,
    )


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def _price(client: stripe.StripeClient, amount: int = 900, **extra) -> stripe.Price:
    product = client.v1.products.create({"name": _unique("Plan")})
    params = {
        "product": product.id,
        "unit_amount": amount,
        "currency": "usd",
        "recurring": {"interval": "month"},
        **extra,
    }
    return client.v1.prices.create(params)


def _card_pm(client: stripe.StripeClient, number: str) -> stripe.PaymentMethod:
    return client.v1.payment_methods.create(
        {
            "type": "card",
            "card": {"number": number, "exp_month": 12, "exp_year": 2034, "cvc": "123"},
        }
    )


def _customer_with_card(
    client: stripe.StripeClient, number: str = CARD_OK
) -> tuple[stripe.Customer, stripe.PaymentMethod]:
    customer = client.v1.customers.create({"email": f"{_unique('u')}@example.com"})
    pm = _card_pm(client, number)
    client.v1.payment_methods.attach(pm.id, {"customer": customer.id})
    return customer, pm


def _subscriptions_of(client: stripe.StripeClient, customer_id: str) -> list:
    listed = client.v1.subscriptions.list({"customer": customer_id, "status": "all"})
    return list(listed.data)


def test_price_create_retrieve_and_list_by_lookup_key(client):
    key = _unique("pro_monthly")
    price = _price(client, 1200, lookup_key=key, nickname="Pro", metadata={"tier": "pro"})
    other = _price(client, 500, lookup_key=_unique("basic_monthly"))

    assert price.id.startswith("price_")
    assert price.object == "price"
    assert price.type == "recurring"
    assert price.unit_amount == 1200
    assert price.currency == "usd"
    assert price.recurring.interval == "month"
    assert price.recurring.interval_count == 1
    assert price.lookup_key == key
    assert price.nickname == "Pro"
    assert price.metadata.to_dict() == {"tier": "pro"}
    assert price.active is True

    fetched = client.v1.prices.retrieve(price.id, {"expand": ["product"]})
    assert fetched.id == price.id
    assert fetched.product.object == "product"

    listed = client.v1.prices.list({"lookup_keys": [key], "active": True})
    assert listed.object == "list"
    assert [p.id for p in listed.data] == [price.id]
    assert listed.has_more is False

    # The backing plan has the same id, which is what subscriptions use.
    assert client.v1.plans.retrieve(price.id).amount == 1200

    # Archived prices drop out of active=true listings.
    client.v1.prices.update(other.id, {"active": False})
    active_keys = {p.id for p in client.v1.prices.list({"active": True, "limit": 100})}
    assert price.id in active_keys
    assert other.id not in active_keys


def test_price_lookup_keys_are_unique_unless_transferred(client):
    key = _unique("team_monthly")
    first = _price(client, lookup_key=key)
    with pytest.raises(stripe.InvalidRequestError) as excinfo:
        _price(client, lookup_key=key)
    assert excinfo.value.code == "lookup_key_already_exists"

    second = _price(client, 1500, lookup_key=key, transfer_lookup_key=True)
    listed = client.v1.prices.list({"lookup_keys": [key]})
    assert [p.id for p in listed.data] == [second.id]
    assert client.v1.prices.retrieve(first.id).lookup_key is None


def test_missing_price_is_resource_missing(client):
    with pytest.raises(stripe.InvalidRequestError) as excinfo:
        client.v1.prices.retrieve("price_doesnotexist")
    assert excinfo.value.http_status == 404
    assert excinfo.value.code == "resource_missing"


def test_subscription_with_price_and_default_payment_method_is_active(client):
    price = _price(client, 900)
    customer, pm = _customer_with_card(client)

    sub = client.v1.subscriptions.create(
        {
            "customer": customer.id,
            "items": [{"price": price.id}],
            "default_payment_method": pm.id,
            "payment_behavior": "allow_incomplete",
            "expand": [
                "latest_invoice.payment_intent",
                "latest_invoice.confirmation_secret",
                "pending_setup_intent",
            ],
        }
    )

    assert sub.status == "active"
    assert sub.default_payment_method == pm.id
    item = sub["items"].data[0]
    assert item.price.id == price.id
    assert item.price.unit_amount == 900
    assert item.current_period_end > item.current_period_start
    assert sub.latest_invoice.status == "paid"
    assert sub.latest_invoice.amount_paid == 900
    assert sub.latest_invoice.payment_intent.status == "succeeded"
    assert sub.latest_invoice.confirmation_secret.client_secret.startswith("pi_")
    assert sub.pending_setup_intent is None

    customer = client.v1.customers.retrieve(customer.id)
    assert customer.invoice_settings.default_payment_method == pm.id
    assert [s.id for s in _subscriptions_of(client, customer.id)] == [sub.id]


def test_subscription_charges_customer_default_set_by_update(client):
    price = _price(client)
    customer = client.v1.customers.create({"email": f"{_unique('u')}@example.com"})
    pm = client.v1.payment_methods.create({"type": "card", "card": {"token": "tok_visa"}})

    # Like Stripe, a default payment method has to be attached first.
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.customers.update(
            customer.id, {"invoice_settings": {"default_payment_method": pm.id}}
        )
    client.v1.payment_methods.attach(pm.id, {"customer": customer.id})
    client.v1.customers.update(customer.id, {"invoice_settings": {"default_payment_method": pm.id}})

    sub = client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id}]})
    assert sub.status == "active"
    fetched = client.v1.subscriptions.retrieve(sub.id, {"expand": ["latest_invoice"]})
    assert fetched.latest_invoice.status == "paid"


def test_retried_subscription_create_with_same_idempotency_key(client):
    price = _price(client)
    customer, pm = _customer_with_card(client)
    params = {
        "customer": customer.id,
        "items": [{"price": price.id}],
        "default_payment_method": pm.id,
    }
    key = _unique("create-sub")

    first = client.v1.subscriptions.create(params, {"idempotency_key": key})
    again = client.v1.subscriptions.create(params, {"idempotency_key": key})

    assert again.id == first.id
    assert again.last_response.headers.get("Idempotent-Replayed") == "true"
    assert [s.id for s in _subscriptions_of(client, customer.id)] == [first.id]

    # A key reused for a different request is rejected, as Stripe does.
    with pytest.raises(stripe.IdempotencyError):
        client.v1.subscriptions.create(
            {**params, "metadata": {"other": "request"}}, {"idempotency_key": key}
        )
    assert len(_subscriptions_of(client, customer.id)) == 1

    # Without a shared key two creates are two subscriptions.
    client.v1.subscriptions.create(params)
    assert len(_subscriptions_of(client, customer.id)) == 2


def test_declined_card_is_a_card_error(client):
    customer = client.v1.customers.create({"email": f"{_unique('u')}@example.com"})
    pm = _card_pm(client, CARD_DECLINED_ON_ATTACH)

    with pytest.raises(stripe.CardError) as excinfo:
        client.v1.payment_methods.attach(pm.id, {"customer": customer.id})

    assert excinfo.value.code == "card_declined"
    assert excinfo.value.http_status == 402
    assert excinfo.value.error.type == "card_error"
    assert client.v1.payment_methods.retrieve(pm.id).customer is None


def test_charge_decline_with_error_if_incomplete_creates_no_subscription(client):
    price = _price(client)
    customer, pm = _customer_with_card(client, CARD_DECLINED_ON_CHARGE)

    with pytest.raises(stripe.CardError) as excinfo:
        client.v1.subscriptions.create(
            {
                "customer": customer.id,
                "items": [{"price": price.id}],
                "default_payment_method": pm.id,
                "payment_behavior": "error_if_incomplete",
            }
        )
    assert excinfo.value.code == "card_declined"
    assert _subscriptions_of(client, customer.id) == []

    # allow_incomplete keeps an incomplete subscription with an open invoice.
    sub = client.v1.subscriptions.create(
        {
            "customer": customer.id,
            "items": [{"price": price.id}],
            "payment_behavior": "allow_incomplete",
            "expand": ["latest_invoice"],
        }
    )
    assert sub.status == "incomplete"
    assert sub.latest_invoice.status == "open"


def test_cancel_at_period_end_then_cancel(client):
    price = _price(client)
    customer, pm = _customer_with_card(client)
    sub = client.v1.subscriptions.create(
        {
            "customer": customer.id,
            "items": [{"price": price.id}],
            "default_payment_method": pm.id,
        }
    )
    period_end = sub["items"].data[0].current_period_end
    assert sub.cancel_at_period_end is False
    assert sub.cancel_at is None

    scheduled = client.v1.subscriptions.update(sub.id, {"cancel_at_period_end": True})
    assert scheduled.cancel_at_period_end is True
    assert scheduled.status == "active"
    assert scheduled.cancel_at == period_end
    assert scheduled.canceled_at is not None

    resumed = client.v1.subscriptions.update(sub.id, {"cancel_at_period_end": False})
    assert resumed.cancel_at_period_end is False
    assert resumed.cancel_at is None

    canceled = client.v1.subscriptions.cancel(sub.id)
    assert canceled.status == "canceled"
    assert canceled.ended_at is not None
    assert canceled.canceled_at is not None
    assert client.v1.subscriptions.retrieve(sub.id).status == "canceled"
    # Like Stripe, the default listing hides canceled subscriptions.
    assert list(client.v1.subscriptions.list({"customer": customer.id}).data) == []


def test_setup_intent_confirmed_by_fake_stripe_js_attaches_card(client, emulator):
    customer = client.v1.customers.create({"email": f"{_unique('u')}@example.com"})
    seti = client.v1.setup_intents.create(
        {
            "customer": customer.id,
            "usage": "off_session",
            "payment_method_types": ["card"],
        }
    )
    assert seti.status == "requires_payment_method"

    # Exactly what the emulator's Stripe.js sends for confirmCardSetup().
    def confirm(number: str) -> httpx.Response:
        body = {
            "key": "pk_test_12345",
            "use_stripe_sdk": True,
            "client_secret": seti.client_secret,
            "payment_method_data": {
                "type": "card",
                "card": {
                    "number": number,
                    "exp_month": 12,
                    "exp_year": 2034,
                    "cvc": "123",
                },
            },
        }
        return httpx.post(
            f"{emulator.url}/v1/setup_intents/{seti.id}/confirm",
            content=json.dumps(body),
            timeout=10,
        )

    declined = confirm(CARD_DECLINED_ON_ATTACH)
    assert declined.status_code == 402
    assert declined.json()["error"]["code"] == "card_declined"
    # Still usable for another card, as on Stripe.
    assert client.v1.setup_intents.retrieve(seti.id).status == "requires_payment_method"

    confirmed = confirm(CARD_OK)
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["status"] == "succeeded"
    pm_id = confirmed.json()["payment_method"]

    assert client.v1.payment_methods.retrieve(pm_id).customer == customer.id
    attached = client.v1.customers.payment_methods.list(customer.id)
    assert [pm.id for pm in attached.data] == [pm_id]
    # ...so it can become the default and pay a subscription.
    client.v1.customers.update(customer.id, {"invoice_settings": {"default_payment_method": pm_id}})
    sub = client.v1.subscriptions.create(
        {"customer": customer.id, "items": [{"price": _price(client).id}]}
    )
    assert sub.status == "active"


def test_default_incomplete_waits_for_payment_intent_confirmation(client):
    price = _price(client, 2500)
    customer = client.v1.customers.create({"email": f"{_unique('u')}@example.com"})

    sub = client.v1.subscriptions.create(
        {
            "customer": customer.id,
            "items": [{"price": price.id}],
            "payment_behavior": "default_incomplete",
            "payment_settings": {"save_default_payment_method": "on_subscription"},
            "expand": ["latest_invoice.confirmation_secret", "latest_invoice.payments"],
        }
    )
    assert sub.status == "incomplete"
    invoice = sub.latest_invoice
    assert invoice.status == "open"
    assert invoice.amount_due == 2500
    secret = invoice.confirmation_secret.client_secret
    pi_id = secret.split("_secret_")[0]
    assert invoice.payments.data[0].payment.payment_intent == pi_id

    pi = client.v1.payment_intents.confirm(pi_id, {"payment_method": "pm_card_visa"})
    assert pi.status == "succeeded"

    sub = client.v1.subscriptions.retrieve(sub.id, {"expand": ["latest_invoice"]})
    assert sub.status == "active"
    assert sub.latest_invoice.status == "paid"
    assert sub.default_payment_method == pi.payment_method


def test_stripe_version_header_of_the_sdk_is_accepted(client, emulator):
    price = _price(client)
    response = httpx.get(
        f"{emulator.url}/v1/prices/{price.id}",
        headers={
            "Authorization": "Bearer sk_test_12345",
            "Stripe-Version": stripe.api_version,
        },
        timeout=10,
    )
    assert stripe.api_version == "2026-10-28.endive"
    assert response.status_code == 200
    assert response.json()["id"] == price.id


class _WebhookSink(http.server.BaseHTTPRequestHandler):
    received: queue.Queue

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.put((body, self.headers.get("Stripe-Signature")))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_registered_webhook_receives_signed_events(client, emulator):
    received: queue.Queue = queue.Queue()
    handler = type("Sink", (_WebhookSink,), {"received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    secret = "whsec_test_" + uuid.uuid4().hex
    try:
        register_webhook(
            emulator.url,
            f"http://127.0.0.1:{server.server_address[1]}/stripe/webhook",
            secret,
            endpoint_id=_unique("test"),
            events=["customer.created"],
        )
        customer = client.v1.customers.create({"email": f"{_unique('u')}@example.com"})

        deadline = time.monotonic() + 10
        event = None
        while event is None:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "no customer.created webhook for our customer"
            body, signature = received.get(timeout=remaining)
            candidate = stripe.Webhook.construct_event(body, signature, secret)
            if candidate.data.object.id == customer.id:
                event = candidate
        assert event.type == "customer.created"
    finally:
        server.shutdown()
        server.server_close()


def test_background_emulator_reset_and_clean_stop():
    port = _free_port()
    emulator = start_in_background(port)
    try:
        assert emulator.url == f"http://127.0.0.1:{port}"
        assert emulator.js_url == f"http://127.0.0.1:{port}/js.stripe.com/v3/"
        js = httpx.get(emulator.js_url, timeout=10)
        assert js.status_code == 200
        assert "confirmCardSetup" in js.text

        client = stripe.StripeClient(
            "sk_test_12345", base_addresses={"api": emulator.url}, max_network_retries=0
        )
        customer = client.v1.customers.create({"email": "reset@example.com"})
        reset(emulator.url)
        with pytest.raises(stripe.InvalidRequestError):
            client.v1.customers.retrieve(customer.id)
    finally:
        exit_code = emulator.stop()

    assert exit_code == 0, emulator.logs()
    with pytest.raises(httpx.TransportError):
        httpx.get(emulator.js_url, timeout=2)
