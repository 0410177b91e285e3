"""The Stripe emulator speaks today's API to the real stripe SDK.

One emulator subprocess serves the module (the ``emulator`` and ``client``
fixtures of conftest.py); every test creates its own objects with unique
lookup keys, so order does not matter. A second, short-lived emulator checks
start/stop/reset.
"""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest
import stripe

from devtools.liveapp import free_port
from devtools.stripe_emulator import renew_subscription, reset, start_in_background
from tests.devtools.conftest import webhook_receiver

CARD_OK = "4242424242424242"
CARD_DECLINED_ON_ATTACH = "4000000000000002"
CARD_DECLINED_ON_CHARGE = "4000000000000341"
MONTH_SECONDS = (28 * 86400, 31 * 86400)


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


def test_a_setup_intent_for_a_deleted_customer_is_refused_as_stripe_does(client):
    customer = client.v1.customers.create(params={"email": "gone@example.com"})
    client.v1.customers.delete(customer.id)
    with pytest.raises(stripe.InvalidRequestError) as excinfo:
        client.v1.setup_intents.create(params={"customer": customer.id})
    assert excinfo.value.http_status == 400
    assert (excinfo.value.code, excinfo.value.param) == ("resource_missing", "customer")
    # Still found, as Stripe finds it: `{"id": ..., "deleted": true}`.
    found = client.v1.customers.retrieve(customer.id)
    assert (found.id, found.deleted) == (customer.id, True)


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


def test_a_cancelled_setup_intent_checks_no_more_cards(client, emulator):
    customer = client.v1.customers.create({"email": f"{_unique('u')}@example.com"})
    seti = client.v1.setup_intents.create({"customer": customer.id, "usage": "off_session"})
    assert client.v1.setup_intents.cancel(seti.id).status == "canceled"
    pm = client.v1.payment_methods.create({"type": "card", "card": {"token": "tok_visa"}})
    with pytest.raises(stripe.InvalidRequestError, match="status of canceled") as refused:
        client.v1.setup_intents.confirm(seti.id, {"payment_method": pm.id})
    assert refused.value.code == "setup_intent_unexpected_state"
    with pytest.raises(stripe.InvalidRequestError, match="status of canceled"):
        client.v1.setup_intents.cancel(seti.id)


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
    # And Stripe tells the account, though the check never passed through it.
    [failed] = client.v1.events.list({"type": "setup_intent.setup_failed", "limit": 1}).data
    assert failed.data.object.id == seti.id
    assert failed.data.object.customer == customer.id
    assert failed.data.object.last_setup_error.code == "card_declined"

    confirmed = confirm(CARD_OK)
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["status"] == "succeeded"
    pm_id = confirmed.json()["payment_method"]
    # A SetupIntent that saved a card takes no other, and can no longer be cancelled.
    again = confirm(CARD_OK)
    assert again.status_code == 400
    assert again.json()["error"]["code"] == "setup_intent_unexpected_state"
    with pytest.raises(stripe.InvalidRequestError, match="status of succeeded"):
        client.v1.setup_intents.cancel(seti.id)

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


def test_a_first_payment_that_fails_stays_open_for_another_card(client):
    """Stripe keeps a `default_incomplete` subscription incomplete when its first payment
    fails (the bank check, then a declined card): its PaymentIntent takes another card."""
    customer = client.v1.customers.create({"email": f"{_unique('u')}@example.com"})
    sub = client.v1.subscriptions.create(
        {
            "customer": customer.id,
            "items": [{"price": _price(client).id}],
            "payment_behavior": "default_incomplete",
            "expand": ["latest_invoice.confirmation_secret"],
        }
    )
    secret = sub.latest_invoice.confirmation_secret.client_secret
    pi_id = secret.split("_secret_")[0]
    pi = client.v1.payment_intents.confirm(
        pi_id, {"payment_method": "pm_card_threeDSecure2Required"}
    )
    assert pi.status == "requires_action"
    client.raw_request(
        "post", f"/v1/payment_intents/{pi_id}/_authenticate", client_secret=secret, success="false"
    )
    assert client.v1.subscriptions.retrieve(sub.id).status == "incomplete"

    # A card Stripe declines is declined here too (localstripe only refused it on attach),
    # with Stripe's specific reason where its test card has one.
    with pytest.raises(stripe.CardError):
        client.v1.payment_intents.confirm(pi_id, {"payment_method": "pm_card_chargeDeclined"})
    with pytest.raises(stripe.CardError) as declined:
        client.v1.payment_intents.confirm(
            pi_id, {"payment_method": "pm_card_chargeDeclinedInsufficientFunds"}
        )
    assert declined.value.error.decline_code == "insufficient_funds"
    [failed] = client.v1.events.list({"type": "payment_intent.payment_failed", "limit": 1}).data
    assert failed.data.object.id == pi_id
    assert client.v1.subscriptions.retrieve(sub.id).status == "incomplete"

    assert client.v1.payment_intents.confirm(pi_id, {"payment_method": "pm_card_visa"}).status == (
        "succeeded"
    )
    assert client.v1.subscriptions.retrieve(sub.id).status == "active"


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


def test_registered_webhook_receives_signed_events(client, emulator):
    with webhook_receiver(emulator, ["customer.created"]) as receiver:
        customer = client.v1.customers.create({"email": f"{_unique('u')}@example.com"})
        event = receiver.wait(lambda e: e.data.object.id == customer.id)
    assert event.type == "customer.created"


def _subscribed(client: stripe.StripeClient, amount: int = 1200):
    price = _price(client, amount)
    customer = client.v1.customers.create({"email": f"{_unique('u')}@example.com"})
    pm = client.v1.payment_methods.create({"type": "card", "card": {"token": "tok_visa"}})
    client.v1.payment_methods.attach(pm.id, {"customer": customer.id})
    sub = client.v1.subscriptions.create(
        {"customer": customer.id, "items": [{"price": price.id}], "default_payment_method": pm.id}
    )
    assert sub.status == "active"
    return customer, sub


def _period(sub) -> tuple[int, int]:
    item = sub["items"]["data"][0]
    return item["current_period_start"], item["current_period_end"]


def test_renewal_with_a_card_that_fails_later_makes_the_subscription_past_due(client, emulator):
    customer, sub = _subscribed(client, 1200)
    first_invoice = sub.latest_invoice
    old_start, old_end = _period(sub)

    # The card attaches fine; every charge to it is declined.
    failing = client.v1.payment_methods.create(
        {"type": "card", "card": {"token": "tok_chargeCustomerFail"}}
    )
    client.v1.payment_methods.attach(failing.id, {"customer": customer.id})
    client.v1.customers.update(
        customer.id, {"invoice_settings": {"default_payment_method": failing.id}}
    )
    client.v1.subscriptions.update(sub.id, {"default_payment_method": failing.id})

    with webhook_receiver(
        emulator, ["invoice.payment_failed", "customer.subscription.updated"]
    ) as receiver:
        renewed = renew_subscription(emulator.url, sub.id)

        assert renewed["id"] == sub.id
        assert renewed["object"] == "subscription"
        assert renewed["status"] == "past_due"
        start, end = _period(renewed)
        assert start == old_end
        assert MONTH_SECONDS[0] <= end - start <= MONTH_SECONDS[1]
        assert (renewed["current_period_start"], renewed["current_period_end"]) == (start, end)

        fetched = client.v1.subscriptions.retrieve(sub.id, {"expand": ["latest_invoice"]})
        assert fetched.status == "past_due"
        invoice = fetched.latest_invoice
        assert invoice.id not in (first_invoice, None)
        assert invoice.status == "open"
        assert invoice.billing_reason == "subscription_cycle"
        assert invoice.amount_due == 1200
        assert invoice.amount_paid == 0
        assert invoice.parent.subscription_details.subscription == sub.id
        assert invoice.subscription == sub.id
        assert (invoice.period_start, invoice.period_end) == (old_start, old_end)
        assert (invoice.lines.data[0].period.start, invoice.lines.data[0].period.end) == (
            start,
            end,
        )
        pi = client.v1.payment_intents.retrieve(invoice.payments.data[0].payment.payment_intent)
        assert pi.status == "requires_payment_method"
        assert pi.payment_method == failing.id
        assert pi.last_payment_error.code == "card_declined"

        failed = receiver.wait(
            lambda e: e.type == "invoice.payment_failed" and e.data.object.id == invoice.id
        )
        # What the app reads to find the subscription, in both API shapes.
        assert failed.data.object.parent.subscription_details.subscription == sub.id
        assert failed.data.object.subscription == sub.id
        assert failed.data.object.status == "open"
        assert failed.created > 0
        updated = receiver.wait(
            lambda e: (
                e.type == "customer.subscription.updated"
                and e.data.object.id == sub.id
                and e.data.object.status == "past_due"
            )
        )
        assert updated.data.previous_attributes.status == "active"
        assert updated.data.object["items"].data[0].current_period_end == end
        assert updated.created > 0


def test_renewal_with_a_good_card_stays_active_and_advances_the_period(client, emulator):
    _, sub = _subscribed(client, 900)
    _, old_end = _period(sub)

    renewed = renew_subscription(emulator.url, sub.id)
    assert renewed["status"] == "active"
    start, end = _period(renewed)
    assert start == old_end
    assert MONTH_SECONDS[0] <= end - start <= MONTH_SECONDS[1]
    invoice = client.v1.invoices.retrieve(renewed["latest_invoice"])
    assert invoice.id != sub.latest_invoice
    assert invoice.status == "paid"
    assert invoice.amount_paid == 900
    assert invoice.billing_reason == "subscription_cycle"
    assert invoice.status_transitions.paid_at is not None

    # Periods keep counting from the start: the next one follows on.
    again = renew_subscription(emulator.url, sub.id)
    assert _period(again)[0] == end
    assert client.v1.subscriptions.retrieve(sub.id).status == "active"


def test_renewal_of_past_due_with_a_good_card_again_is_active(client, emulator):
    customer, sub = _subscribed(client)
    good = sub.default_payment_method
    failing = client.v1.payment_methods.create(
        {"type": "card", "card": {"token": "tok_chargeCustomerFail"}}
    )
    client.v1.payment_methods.attach(failing.id, {"customer": customer.id})
    client.v1.subscriptions.update(sub.id, {"default_payment_method": failing.id})
    assert renew_subscription(emulator.url, sub.id)["status"] == "past_due"

    client.v1.subscriptions.update(sub.id, {"default_payment_method": good})
    renewed = renew_subscription(emulator.url, sub.id)
    assert renewed["status"] == "active"
    assert client.v1.invoices.retrieve(renewed["latest_invoice"]).status == "paid"


def test_renewal_ends_a_subscription_set_to_cancel_at_period_end(client, emulator):
    _, sub = _subscribed(client)
    _, period_end = _period(sub)
    client.v1.subscriptions.update(sub.id, {"cancel_at_period_end": True})

    ended = renew_subscription(emulator.url, sub.id)
    assert ended["status"] == "canceled"
    assert ended["ended_at"] == period_end
    assert ended["latest_invoice"] == sub.latest_invoice  # nothing more was billed


def test_renewal_errors_are_stripe_shaped(client, emulator):
    with pytest.raises(httpx.HTTPStatusError) as missing:
        renew_subscription(emulator.url, "sub_doesnotexist")
    assert missing.value.response.status_code == 404
    error = missing.value.response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "resource_missing"

    _, sub = _subscribed(client)
    client.v1.subscriptions.cancel(sub.id)
    with pytest.raises(httpx.HTTPStatusError) as canceled:
        renew_subscription(emulator.url, sub.id)
    assert canceled.value.response.status_code == 400
    assert "canceled" in canceled.value.response.json()["error"]["message"]


def test_background_emulator_reset_and_clean_stop():
    port = free_port()
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


def test_state_survives_a_restart_after_a_crash_and_after_a_clean_stop(tmp_path):
    state = tmp_path / "emulator.pickle"

    def client_of(emulator) -> stripe.StripeClient:
        return stripe.StripeClient(
            "sk_test_12345", base_addresses={"api": emulator.url}, max_network_retries=0
        )

    emulator = start_in_background(free_port(), state_file=state)
    try:
        before_crash = client_of(emulator).v1.customers.create({"email": "crash@example.com"})
        # Saved in the background within about a second, off the request path...
        deadline = time.monotonic() + 10
        while not state.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert state.exists(), emulator.logs()
    finally:
        # ...so a crash (SIGKILL: no shutdown handlers) after that loses nothing.
        emulator.process.kill()
        emulator.stop()

    emulator = start_in_background(free_port(), state_file=state)
    try:
        client = client_of(emulator)
        assert client.v1.customers.retrieve(before_crash.id).email == "crash@example.com"
        # Written just before a clean stop: the shutdown saves it.
        last = client.v1.customers.create({"email": "last@example.com"})
        client.v1.customers.update(before_crash.id, {"name": "Renamed"})
    finally:
        assert emulator.stop() == 0, emulator.logs()

    emulator = start_in_background(free_port(), state_file=state)
    try:
        client = client_of(emulator)
        assert client.v1.customers.retrieve(last.id).email == "last@example.com"
        assert client.v1.customers.retrieve(before_crash.id).name == "Renamed"
    finally:
        assert emulator.stop() == 0, emulator.logs()
