"""The emulator's Stripe Checkout, customer portal, invoices and held webhooks.

Driven like the app and a browser would: the real stripe SDK for the API and
``httpx`` for the hosted pages (read by label, button and link name). One
emulator serves the module; every test makes its own customer.
"""

from __future__ import annotations

import re
import time
import uuid

import httpx
import pytest
import stripe

from devtools.liveapp import free_port
from devtools.stripe_emulator import (
    hold_webhooks,
    renew_subscription,
    reset,
    start_in_background,
)
from tests.devtools.conftest import Page, read_page, submit, webhook_receiver

CARD_OK = "4242 4242 4242 4242"
CARD_DECLINED = "4000 0000 0000 0002"
CARD_INSUFFICIENT_FUNDS = "4000 0000 0000 9995"
CARD_3DS = "4000 0027 6000 3184"
CARD_FAILS_LATER = "4000 0000 0000 0341"
CARD_OTHER = "5555 5555 5555 4444"
SUCCESS_URL = "https://app.example/billing/done?session_id={CHECKOUT_SESSION_ID}"
CANCEL_URL = "https://app.example/billing"
CARD_LABELS = ("Card number", "Expiry date", "CVC", "Cardholder name")


@pytest.fixture(scope="module")
def price(client: stripe.StripeClient) -> stripe.Price:
    product = client.v1.products.create({"name": "Pro"})
    return client.v1.prices.create(
        {
            "product": product.id,
            "unit_amount": 1200,
            "currency": "usd",
            "recurring": {"interval": "month"},
        }
    )


@pytest.fixture
def http():
    with httpx.Client(timeout=10) as client:
        yield client


def _customer(client: stripe.StripeClient) -> stripe.Customer:
    return client.v1.customers.create({"email": f"u_{uuid.uuid4().hex[:10]}@example.com"})


def _session(client, price, customer: stripe.Customer | None = None, **extra):
    params = {
        "mode": "subscription",
        "client_reference_id": "42",
        "line_items": [{"price": price.id, "quantity": 1}],
        "metadata": {"user_id": "42"},
        "subscription_data": {"metadata": {"user_id": "42"}},
        "success_url": SUCCESS_URL,
        "cancel_url": CANCEL_URL,
        **extra,
    }
    if customer is not None:
        params["customer"] = customer.id
    return client.v1.checkout.sessions.create(
        params, {"idempotency_key": f"checkout-{uuid.uuid4().hex}"}
    )


def _card(number: str, expiry: str = "12 / 34", cvc: str = "123") -> dict[str, str]:
    return {
        "Card number": number,
        "Expiry date": expiry,
        "CVC": cvc,
        "Cardholder name": "Ada Lovelace",
    }


def _pay(http: httpx.Client, session, number: str, **card) -> httpx.Response:
    page = read_page(http.get(session.url))
    return submit(http, page, "Subscribe", _card(number, **card))


def _success(session_id: str) -> str:
    return SUCCESS_URL.replace("{CHECKOUT_SESSION_ID}", session_id)


def _subscriptions(client, customer_id: str) -> list:
    return list(client.v1.subscriptions.list({"customer": customer_id, "status": "all"}).data)


def _newest_event(client) -> str | None:
    listed = client.v1.events.list({"limit": 1}).data
    return listed[0].id if listed else None


def _events_since(client, marker: str | None) -> list[stripe.Event]:
    """Events created after ``marker``, oldest first."""
    newer = []
    for event in client.v1.events.list({"limit": 100}).data:  # newest first
        if event.id == marker:
            break
        newer.append(event)
    return newer[::-1]


def _subscribed(client, price, http) -> tuple[stripe.Customer, stripe.checkout.Session]:
    customer = _customer(client)
    session = _session(client, price, customer)
    assert _pay(http, session, CARD_OK).status_code == 303
    return customer, client.v1.checkout.sessions.retrieve(session.id)


# --------------------------------------------------------------------------
# Checkout
# --------------------------------------------------------------------------


def test_checkout_session_is_stripe_shaped_and_its_page_is_a_labelled_form(
    client, price, http, emulator
):
    customer = _customer(client)
    key = f"checkout-{uuid.uuid4().hex}"
    params = {
        "mode": "subscription",
        "customer": customer.id,
        "client_reference_id": "42",
        "line_items": [{"price": price.id, "quantity": 1}],
        "metadata": {"user_id": "42"},
        "subscription_data": {"metadata": {"user_id": "42"}},
        "success_url": SUCCESS_URL,
        "cancel_url": CANCEL_URL,
    }
    session = client.v1.checkout.sessions.create(params, {"idempotency_key": key})
    again = client.v1.checkout.sessions.create(params, {"idempotency_key": key})

    assert again.id == session.id
    assert session.id.startswith("cs_test_")
    assert session.object == "checkout.session"
    assert (session.mode, session.status, session.payment_status) == (
        "subscription",
        "open",
        "unpaid",
    )
    assert session.customer == customer.id
    assert session.client_reference_id == "42"
    assert session.metadata.to_dict() == {"user_id": "42"}
    assert session.subscription is None
    assert session.invoice is None
    assert (session.success_url, session.cancel_url) == (SUCCESS_URL, CANCEL_URL)
    assert session.amount_total == 1200
    assert session.livemode is False
    assert session.expires_at - session.created == 24 * 3600
    assert session.url == f"{emulator.url}/checkout/pay/{session.id}"

    response = http.get(session.url)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = read_page(response)
    for label in ("Email", *CARD_LABELS):
        assert page.field(label)
    assert page.field("Email")["value"] == customer.email
    assert page.field("Expiry date")["placeholder"] == "MM / YY"
    assert "Subscribe" in page.buttons()
    assert page.link("Back") == CANCEL_URL
    assert "Pro" in page.text
    assert "$12.00 / month" in page.text
    # Plain HTML: no scripts, no external assets, a viewport for phones.
    assert "script" not in page.tags and "img" not in page.tags
    assert 'name="viewport"' in response.text
    assert "src=" not in response.text


def test_paying_with_a_good_card_subscribes_and_redirects_to_success(client, price, http, emulator):
    customer = _customer(client)
    session = _session(client, price, customer)
    marker = _newest_event(client)

    response = _pay(http, session, CARD_OK)

    assert response.status_code == 303
    assert response.headers["location"] == _success(session.id)
    done = client.v1.checkout.sessions.retrieve(
        session.id, {"expand": ["subscription", "subscription.latest_invoice"]}
    )
    assert (done.status, done.payment_status) == ("complete", "paid")
    assert done.url is None
    assert done.customer_details.email == customer.email
    sub = done.subscription
    assert sub.status == "active"
    assert sub.customer == customer.id
    assert sub.metadata.to_dict() == {"user_id": "42"}
    assert sub["items"].data[0].price.id == price.id
    assert done.invoice == sub.latest_invoice.id
    assert sub.latest_invoice.status == "paid"
    assert sub.latest_invoice.amount_paid == 1200
    pm = client.v1.payment_methods.retrieve(sub.default_payment_method)
    assert pm.customer == customer.id
    assert pm.card.last4 == "4242"
    assert (
        client.v1.customers.retrieve(customer.id).invoice_settings.default_payment_method == pm.id
    )

    events = _events_since(client, marker)
    types = [e.type for e in events]
    for expected in (
        "payment_method.attached",
        "customer.subscription.created",
        "invoice.created",
        "invoice.finalized",
        "invoice.paid",
        "invoice.payment_succeeded",
    ):
        assert expected in types
    assert types[-1] == "checkout.session.completed"
    completed = events[-1].data.object
    assert completed.id == session.id
    assert completed.status == "complete"
    assert completed.subscription == sub.id
    assert client.v1.events.list({"limit": 1}).data[0].id == events[-1].id

    # The page now says the session is complete and still offers the way back.
    page = read_page(http.get(f"{emulator.url}/checkout/pay/{session.id}"))
    assert "complete" in page.text
    assert page.link("Back") == CANCEL_URL
    assert "Subscribe" not in page.buttons()


def test_submitting_twice_makes_one_subscription(client, price, http):
    customer = _customer(client)
    session = _session(client, price, customer)
    page = read_page(http.get(session.url))

    first = submit(http, page, "Subscribe", _card(CARD_OK))
    second = submit(http, page, "Subscribe", _card(CARD_OK))

    assert first.status_code == second.status_code == 303
    assert second.headers["location"] == _success(session.id)
    assert len(_subscriptions(client, customer.id)) == 1


def test_declined_card_stays_on_the_page_and_creates_nothing(client, price, http):
    customer = _customer(client)
    session = _session(client, price, customer)
    marker = _newest_event(client)

    declined = _pay(http, session, CARD_DECLINED)
    assert declined.status_code == 200
    page = read_page(declined)
    assert "Your card was declined." in page.text
    assert page.field("Email")["value"] == customer.email
    assert "Subscribe" in page.buttons()

    poor = read_page(_pay(http, session, CARD_INSUFFICIENT_FUNDS))
    assert "Your card has insufficient funds." in poor.text

    assert client.v1.checkout.sessions.retrieve(session.id).status == "open"
    assert _subscriptions(client, customer.id) == []
    assert list(client.v1.customers.payment_methods.list(customer.id).data) == []
    assert _events_since(client, marker) == []

    # The same session then takes a good card.
    assert _pay(http, session, CARD_OK).status_code == 303


@pytest.mark.parametrize(
    ("number", "expiry", "cvc", "message"),
    [
        ("4242 4242 4242 4241", "12 / 34", "123", "Your card number is invalid."),
        ("4242 4242 4242", "12 / 34", "123", "Your card number is incomplete."),
        (CARD_OK, "13 / 34", "123", "Your card's expiration month is invalid."),
        (CARD_OK, "01 / 20", "123", "Your card's expiration date is in the past."),
        (CARD_OK, "12", "123", "Your card's expiration date is incomplete."),
        (CARD_OK, "12 / 34", "12", "Your card's security code is incomplete."),
    ],
)
def test_invalid_card_details_are_explained_on_the_page(
    client, price, http, number, expiry, cvc, message
):
    customer = _customer(client)
    session = _session(client, price, customer)
    response = _pay(http, session, number, expiry=expiry, cvc=cvc)
    assert response.status_code == 200
    assert message in read_page(response).text
    assert client.v1.checkout.sessions.retrieve(session.id).status == "open"


def _challenge(http: httpx.Client, session, number: str = CARD_3DS) -> Page:
    response = _pay(http, session, number)
    assert response.status_code == 303
    challenge = http.get(httpx.URL(session.url).join(response.headers["location"]))
    page = read_page(challenge)
    assert page.buttons() == ["Complete authentication", "Fail authentication"]
    return page


def test_3d_secure_completed_subscribes(client, price, http):
    customer = _customer(client)
    session = _session(client, price, customer)
    page = _challenge(http, session)
    assert _subscriptions(client, customer.id) == []

    response = submit(http, page, "Complete authentication")

    assert response.status_code == 303
    assert response.headers["location"] == _success(session.id)
    done = client.v1.checkout.sessions.retrieve(session.id, {"expand": ["subscription"]})
    assert done.status == "complete"
    assert done.subscription.status == "active"


def test_3d_secure_failed_returns_to_the_page_with_a_message(client, price, http):
    customer = _customer(client)
    session = _session(client, price, customer)
    page = _challenge(http, session)

    response = submit(http, page, "Fail authentication")

    assert response.status_code == 303
    back = read_page(http.get(httpx.URL(page.url).join(response.headers["location"])))
    assert "unable to authenticate your payment method" in back.text
    assert "Subscribe" in back.buttons()
    assert client.v1.checkout.sessions.retrieve(session.id).status == "open"
    assert _subscriptions(client, customer.id) == []
    assert list(client.v1.customers.payment_methods.list(customer.id).data) == []


def test_card_that_fails_later_pays_now_and_declines_at_renewal(client, price, http, emulator):
    customer = _customer(client)
    session = _session(client, price, customer)
    assert _pay(http, session, CARD_FAILS_LATER).status_code == 303
    sub_id = client.v1.checkout.sessions.retrieve(session.id).subscription
    assert client.v1.subscriptions.retrieve(sub_id).status == "active"

    assert renew_subscription(emulator.url, sub_id)["status"] == "past_due"


def test_session_without_customer_creates_one_from_the_email(client, price, http):
    email = f"new_{uuid.uuid4().hex[:8]}@example.com"
    session = _session(client, price, customer_email=email)
    page = read_page(http.get(session.url))
    assert page.field("Email")["value"] == email
    assert "readonly" not in page.field("Email")

    assert submit(http, page, "Subscribe", _card(CARD_OK)).status_code == 303
    done = client.v1.checkout.sessions.retrieve(session.id, {"expand": ["customer"]})
    assert done.customer.email == email
    assert len(_subscriptions(client, done.customer.id)) == 1


def test_expire_only_open_sessions_and_unknown_ids(client, price, http, emulator):
    customer = _customer(client)
    session = _session(client, price, customer)

    expired = client.v1.checkout.sessions.expire(session.id)
    assert (expired.status, expired.url) == ("expired", None)
    with pytest.raises(stripe.InvalidRequestError) as again:
        client.v1.checkout.sessions.expire(session.id)
    assert again.value.http_status == 400
    assert 'status of "expired"' in again.value.user_message

    page = read_page(http.get(session.url))
    assert page.status == 200
    assert "expired" in page.text
    assert page.link("Back") == CANCEL_URL
    assert "Subscribe" not in page.buttons()
    posted = http.post(session.url, data={"card_number": CARD_OK})
    assert "expired" in read_page(posted).text
    assert _subscriptions(client, customer.id) == []

    _, completed = _subscribed(client, price, http)
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.checkout.sessions.expire(completed.id)

    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.checkout.sessions.retrieve("cs_test_doesnotexist")
    assert missing.value.http_status == 404
    assert missing.value.code == "resource_missing"
    assert http.get(f"{emulator.url}/checkout/pay/cs_test_doesnotexist").status_code == 404


def test_list_sessions_filters_and_pages(client, price, http):
    customer = _customer(client)
    first = _session(client, price, customer)
    second = _session(client, price, customer)
    third = _session(client, price, customer)
    assert _pay(http, second, CARD_OK).status_code == 303
    sub_id = client.v1.checkout.sessions.retrieve(second.id).subscription

    listed = client.v1.checkout.sessions.list({"customer": customer.id})
    assert [s.id for s in listed.data] == [third.id, second.id, first.id]
    complete = client.v1.checkout.sessions.list({"customer": customer.id, "status": "complete"})
    assert [s.id for s in complete.data] == [second.id]
    by_sub = client.v1.checkout.sessions.list(
        {"subscription": sub_id, "expand": ["data.subscription"]}
    )
    assert [s.id for s in by_sub.data] == [second.id]
    assert by_sub.data[0].subscription.id == sub_id

    page = client.v1.checkout.sessions.list({"customer": customer.id, "limit": 1})
    assert page.has_more is True
    rest = client.v1.checkout.sessions.list(
        {"customer": customer.id, "limit": 2, "starting_after": page.data[0].id}
    )
    assert [s.id for s in rest.data] == [second.id, first.id]
    assert rest.has_more is False


# --------------------------------------------------------------------------
# Customer portal
# --------------------------------------------------------------------------


def _portal(client, customer, http) -> tuple[stripe.billing_portal.Session, Page]:
    portal = client.v1.billing_portal.sessions.create(
        {"customer": customer.id, "return_url": "https://app.example/account"}
    )
    page = read_page(http.get(portal.url))
    assert page.status == 200
    return portal, page


def _follow(http: httpx.Client, page: Page, response: httpx.Response) -> Page:
    assert response.status_code == 303, response.text
    return read_page(http.get(httpx.URL(page.url).join(response.headers["location"])))


def test_portal_session_shows_the_plan_and_cancels_and_undoes(client, price, http):
    customer, session = _subscribed(client, price, http)
    sub = client.v1.subscriptions.retrieve(session.subscription)
    portal, page = _portal(client, customer, http)

    assert portal.id.startswith("bps_")
    assert portal.object == "billing_portal.session"
    assert (portal.customer, portal.return_url) == (customer.id, "https://app.example/account")
    assert portal.livemode is False and portal.created > 0
    assert "Pro" in page.text and "$12.00 / month" in page.text and "Active" in page.text
    renews = time.gmtime(sub["items"].data[0].current_period_end)
    assert (
        f"Renews on {time.strftime('%B', renews)} {renews.tm_mday}, {renews.tm_year}" in page.text
    )
    assert page.link("Return to...") == "https://app.example/account"
    assert "Don't cancel" not in page.buttons()

    marker = _newest_event(client)
    page = _follow(http, page, submit(http, page, "Cancel subscription"))
    canceled = client.v1.subscriptions.retrieve(sub.id)
    # As Stripe's portal does in flexible billing mode (new subscriptions' default): the end
    # is scheduled through cancel_at alone, at the period's end.
    assert canceled.cancel_at_period_end is False
    assert canceled.cancel_at == canceled.items.data[0].current_period_end
    assert "Cancels on" in page.text
    assert "Don't cancel" in page.buttons()
    assert "Cancel subscription" not in page.buttons()
    [updated] = _events_since(client, marker)
    assert updated.type == "customer.subscription.updated"
    assert updated.data.previous_attributes.cancel_at is None

    marker = _newest_event(client)
    page = _follow(http, page, submit(http, page, "Don't cancel"))
    renewing = client.v1.subscriptions.retrieve(sub.id)
    assert renewing.cancel_at is None and renewing.cancel_at_period_end is False
    assert "Renews on" in page.text
    [undone] = _events_since(client, marker)
    assert undone.type == "customer.subscription.updated"
    assert undone.data.object.cancel_at is None


def test_portal_updates_the_payment_method(client, price, http, emulator):
    customer, session = _subscribed(client, price, http)
    sub_id = session.subscription
    old_pm = client.v1.subscriptions.retrieve(sub_id).default_payment_method
    _, home = _portal(client, customer, http)
    form = read_page(submit(http, home, "Update payment method"))
    for label in CARD_LABELS:
        assert form.field(label)
    assert "Email" not in form.labels
    assert "Save" in form.buttons()

    declined = submit(http, form, "Save", _card(CARD_DECLINED))
    assert declined.status_code == 200
    assert "Your card was declined." in read_page(declined).text

    marker = _newest_event(client)
    home = _follow(http, form, submit(http, form, "Save", _card(CARD_OTHER)))
    assert "Your payment method has been updated." in home.text
    assert "4444" in home.text
    new_pm = client.v1.customers.retrieve(customer.id).invoice_settings.default_payment_method
    assert new_pm != old_pm
    assert client.v1.payment_methods.retrieve(new_pm).customer == customer.id
    assert client.v1.subscriptions.retrieve(sub_id).default_payment_method == new_pm
    types = [e.type for e in _events_since(client, marker)]
    assert types[:2] == ["payment_method.attached", "customer.updated"]
    assert "customer.subscription.updated" in types

    renewed = renew_subscription(emulator.url, sub_id)
    invoice = client.v1.invoices.retrieve(renewed["latest_invoice"], {"expand": ["payment_intent"]})
    assert invoice.status == "paid"


def test_portal_card_needing_3d_secure_is_saved_only_when_authenticated(client, price, http):
    customer, session = _subscribed(client, price, http)
    old_pm = client.v1.customers.retrieve(customer.id).invoice_settings.default_payment_method
    _, home = _portal(client, customer, http)
    form = read_page(submit(http, home, "Update payment method"))

    challenge = _follow(http, form, submit(http, form, "Save", _card(CARD_3DS)))
    failed = _follow(http, challenge, submit(http, challenge, "Fail authentication"))
    assert "unable to authenticate your payment method" in failed.text
    assert "Save" in failed.buttons()
    assert [pm.id for pm in client.v1.customers.payment_methods.list(customer.id).data] == [old_pm]

    challenge = _follow(http, failed, submit(http, failed, "Save", _card(CARD_3DS)))
    home = _follow(http, challenge, submit(http, challenge, "Complete authentication"))
    assert "Your payment method has been updated." in home.text
    new_pm = client.v1.customers.retrieve(customer.id).invoice_settings.default_payment_method
    assert new_pm != old_pm
    assert client.v1.subscriptions.retrieve(session.subscription).default_payment_method == new_pm


def test_unknown_portal_session_is_a_clear_404_page(emulator, http):
    response = http.get(f"{emulator.url}/billing/portal/bps_doesnotexist")
    assert response.status_code == 404
    assert "invalid or has expired" in read_page(response).text


# --------------------------------------------------------------------------
# Invoices
# --------------------------------------------------------------------------


def test_invoices_have_numbers_pages_and_pdfs_newest_first(client, price, http, emulator):
    customer, session = _subscribed(client, price, http)
    renew_subscription(emulator.url, session.subscription)

    invoices = list(client.v1.invoices.list({"customer": customer.id}).data)
    assert len(invoices) == 2
    newest, oldest = invoices
    assert newest.billing_reason == "subscription_cycle"
    assert oldest.id == session.invoice
    for invoice in invoices:
        assert re.fullmatch(r"EMU-\d{4}", invoice.number)
    assert int(newest.number[4:]) > int(oldest.number[4:])

    page = read_page(http.get(oldest.hosted_invoice_url))
    assert page.status == 200
    assert oldest.number in page.text
    assert "$12.00" in page.text and "Paid" in page.text
    assert page.link("Download PDF") == oldest.invoice_pdf

    pdf = http.get(oldest.invoice_pdf)
    assert pdf.status_code == 200
    assert pdf.headers["content-type"] == "application/pdf"
    body = pdf.content
    assert body.startswith(b"%PDF-")
    assert body.rstrip().endswith(b"%%EOF")
    assert oldest.number.encode() in body
    # The cross-reference table is where startxref says, and each object where it says.
    xref = int(body.rsplit(b"startxref", 1)[1].split()[0])
    assert body[xref:].startswith(b"xref")
    entries = body[xref:].split(b"\n")[3:8]
    for number, entry in enumerate(entries, start=1):
        assert body[int(entry[:10]) :].startswith(b"%d 0 obj" % number)

    # The portal lists them with the same links.
    _, portal = _portal(client, customer, http)
    assert portal.link(oldest.number) == oldest.hosted_invoice_url
    assert newest.number in portal.text


def test_drafts_have_no_number_and_no_pages(client, price, http, emulator):
    customer, session = _subscribed(client, price, http)
    draft = client.v1.invoices.create(
        {"customer": customer.id, "subscription": session.subscription}
    )
    assert draft.status == "draft"
    assert (draft.number, draft.hosted_invoice_url, draft.invoice_pdf) == (None, None, None)
    assert http.get(f"{emulator.url}/invoice/{draft.id}").status_code == 404
    assert http.get(f"{emulator.url}/invoice/{draft.id}/pdf").status_code == 404
    listed = client.v1.invoices.list({"customer": customer.id, "status": "draft"})
    assert [i.id for i in listed.data] == [draft.id]


# --------------------------------------------------------------------------
# Holding webhooks
# --------------------------------------------------------------------------


def test_held_webhooks_are_listed_then_delivered_in_order_or_dropped(client, emulator):
    with webhook_receiver(emulator, ["customer.created"]) as receiver:

        def arrived(ids: list[str], seconds: float) -> list[str]:
            # Earlier tests' customer.created events may still come in: keep ours.
            return [e.data.object.id for e in receiver.collect(seconds) if e.data.object.id in ids]

        assert hold_webhooks(emulator.url, True)["hold"] is True
        try:
            held = [_customer(client).id for _ in range(3)]
            listed = client.v1.events.list({"type": "customer.created", "limit": 3}).data
            assert [e.data.object.id for e in listed] == held[::-1]
            assert arrived(held, 1.5) == []

            released = hold_webhooks(emulator.url, False)
            assert released["released"] >= 3
            # Sent before the call returned, one after the other, in order.
            assert arrived(held, 0.2) == held

            hold_webhooks(emulator.url, True)
            dropped = [_customer(client).id]
            assert hold_webhooks(emulator.url, False, drop=True)["dropped"] >= 1
            assert arrived(dropped, 1.5) == []
            assert client.v1.events.list({"limit": 1}).data[0].data.object.id == dropped[0]

            # Not held any more: events flow again.
            flowing = _customer(client).id
            receiver.wait(lambda e: e.data.object.id == flowing)
        finally:
            hold_webhooks(emulator.url, False)


def test_allowed_payment_method_types_on_payment_intents(client):
    pi = client.v1.payment_intents.create(
        {"amount": 500, "currency": "usd", "allowed_payment_method_types": ["card"]}
    )
    assert pi.status == "requires_payment_method"
    assert pi.payment_method_types == ["card"]


def test_reset_ends_a_hold_and_forgets_the_held_events():
    with start_in_background(free_port()) as emulator:
        hold_webhooks(emulator.url, True)
        client = stripe.StripeClient(
            "sk_test_12345", base_addresses={"api": emulator.url}, max_network_retries=0
        )
        _customer(client)
        assert httpx.get(f"{emulator.url}/_config/webhooks/hold").json() == {
            "hold": True,
            "held": 1,
        }
        reset(emulator.url)
        assert httpx.get(f"{emulator.url}/_config/webhooks/hold").json() == {
            "hold": False,
            "held": 0,
        }
