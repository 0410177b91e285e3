"""Stripe Checkout, the portal and invoices over REST, against the emulator (both databases).

The emulator delivers no webhooks here (no endpoint is registered): the return path alone
must record the subscription, and `checkout.session.completed` is applied by calling its
handler, as the processor would.
"""

from __future__ import annotations

import threading
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlmodel import func, select

from subscription_app.api import create_api
from subscription_app.billing import catalog, handlers, repository, service, sync
from subscription_app.billing.inbox import ClaimedEvent
from subscription_app.billing.reader import made_by_us
from subscription_app.db import session_scope
from subscription_app.models import Subscription, User, utcnow
from tests.integration.conftest import auth_headers, make_monthly_price, pay_checkout, subscribe


@pytest.fixture
def api(db_engine, stripe_env, settings_env):
    settings_env(APP_URL="http://app.example.test")
    with TestClient(create_api(), raise_server_exceptions=False) as client:
        yield client


def start(api, headers):
    return api.post("/api/v1/subscriptions/checkout-session", headers=headers)


def paid_session_id(api, headers) -> str:
    """Start Checkout, pay 4242 on the emulator's page, and return the session id."""
    created = start(api, headers)
    assert created.status_code == 201, created.text
    answer = pay_checkout(created.json()["url"])
    assert answer.status_code in (302, 303), answer.text[:500]
    back = urlsplit(answer.headers["location"])
    assert back.path == "/checkout/complete" and back.netloc == "app.example.test"
    return parse_qs(back.query)["session_id"][0]


def complete(api, headers, session_id: str):
    return api.post(
        "/api/v1/subscriptions/checkout-session/complete",
        json={"session_id": session_id},
        headers=headers,
    )


def rows(session) -> int:
    session.rollback()
    return session.exec(select(func.count()).select_from(Subscription)).one()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/subscriptions/checkout-session"),
        ("POST", "/api/v1/subscriptions/checkout-session/complete"),
        ("POST", "/api/v1/subscriptions/portal-session"),
        ("GET", "/api/v1/subscriptions/invoices"),
    ],
)
def test_every_new_route_needs_a_login(api, method, path):
    response = api.request(method, path, json={"session_id": "cs_test_x"})
    assert response.status_code == 401


def test_checkout_session_is_created_once_and_records_the_subscription(api, stripe_client, session):
    headers = auth_headers(api, "checkout@example.com")
    first, again = start(api, headers), start(api, headers)
    assert first.status_code == again.status_code == 201
    assert first.json()["url"] == again.json()["url"]  # one open Checkout per person
    cs_id = first.json()["url"].rstrip("/").rsplit("/", 1)[-1]
    created = stripe_client.v1.checkout.sessions.retrieve(cs_id)
    assert created.mode == "subscription" and created.client_reference_id
    assert created.success_url.endswith("/checkout/complete?session_id={CHECKOUT_SESSION_ID}")
    assert created.cancel_url == "http://app.example.test/plan?checkout=cancelled"

    session_id = paid_session_id(api, headers)
    assert session_id == cs_id
    done = complete(api, headers, session_id)
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "active"
    assert done.json()["subscription"]["status"] == "active"
    assert complete(api, headers, session_id).status_code == 200  # idempotent
    assert rows(session) == 1
    me = api.get("/api/v1/subscriptions/me", headers=headers).json()["subscription"]
    assert me["status"] == "active"
    # Subscribed: no second Checkout, no Elements subscription either.
    assert start(api, headers).status_code == 409


def test_someone_elses_or_an_unknown_session_is_refused_and_records_nothing(api, session):
    owner = auth_headers(api, "owner@example.com")
    session_id = paid_session_id(api, owner)
    intruder = auth_headers(api, "intruder@example.com")
    for candidate in (session_id, "cs_test_doesnotexist", "not-a-session-id"):
        refused = complete(api, intruder, candidate)
        assert refused.status_code == 403, refused.text
        assert "not yours" in refused.json()["detail"]
    assert rows(session) == 0
    assert api.get("/api/v1/subscriptions/me", headers=intruder).json()["subscription"] is None


def test_an_unfinished_checkout_is_a_clear_409(api):
    headers = auth_headers(api, "unfinished@example.com")
    url = start(api, headers).json()["url"]
    refused = complete(api, headers, url.rstrip("/").rsplit("/", 1)[-1])
    assert refused.status_code == 409 and "not finished" in refused.json()["detail"]


def _event(session_id: str) -> ClaimedEvent:
    return ClaimedEvent(
        row_id=1,
        event_id="evt_checkout_test",
        type="checkout.session.completed",
        created=utcnow(),
        attempts=1,
        lease_token="test",
        payload={"type": "checkout.session.completed", "data": {"object": {"id": session_id}}},
    )


def test_return_page_and_webhook_at_once_record_one_subscription(api, session):
    headers = auth_headers(api, "race@example.com")
    session_id = paid_session_id(api, headers)
    with session_scope() as s:
        user = s.exec(select(User).where(User.email == "race@example.com")).one()
    start_line = threading.Barrier(4)
    errors: list[BaseException] = []

    def return_page() -> None:
        start_line.wait()
        try:
            with session_scope() as s:
                service.complete_checkout(session=s, user=user, checkout_session_id=session_id)
        except BaseException as exc:
            errors.append(exc)

    def webhook() -> None:
        start_line.wait()
        try:
            with session_scope() as s:
                handlers.dispatch(s, _event(session_id))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=f) for f in (return_page, return_page, webhook, webhook)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert rows(session) == 1


def test_elements_after_an_open_checkout_closes_it_so_one_subscription_results(
    api, make_payment_method, stripe_client, session
):
    headers = auth_headers(api, "mixed@example.com")
    url = start(api, headers).json()["url"]
    assert subscribe(api, headers, make_payment_method()).status_code == 200
    cs_id = url.rstrip("/").rsplit("/", 1)[-1]
    assert stripe_client.v1.checkout.sessions.retrieve(cs_id).status == "expired"
    late = pay_checkout(url)  # the old Checkout tab, submitted after all
    assert late.status_code not in (302, 303)
    assert rows(session) == 1


def test_portal_session_for_a_customer_only(api, make_payment_method, stripe_client):
    headers = auth_headers(api, "portal@example.com")
    refused = api.post("/api/v1/subscriptions/portal-session", headers=headers)
    assert refused.status_code == 409 and "no billing account" in refused.json()["detail"]
    assert subscribe(api, headers, make_payment_method()).status_code == 200
    portal = api.post("/api/v1/subscriptions/portal-session", headers=headers)
    assert portal.status_code == 200, portal.text
    assert portal.json()["url"].startswith("http")


def test_a_past_subscriber_our_records_never_saw_live_still_gets_the_portal(
    api, make_payment_method, stripe_client, session
):
    """Our records first heard of the subscription once it had ended (a database restored
    from before it, a late backlog): Stripe's paid invoice says they subscribed."""
    headers = auth_headers(api, "restored@example.com")
    assert api.post("/api/v1/subscriptions/setup-intent", headers=headers).status_code == 200
    session.rollback()
    user = session.exec(select(User).where(User.email == "restored@example.com")).one()
    customer_id = repository.customer_id_for_user(session, user.id)
    assert customer_id
    card = make_payment_method()
    stripe_client.v1.payment_methods.attach(card, params={"customer": customer_id})
    made = stripe_client.v1.subscriptions.create(
        params={
            "customer": customer_id,
            "items": [{"price": catalog.default_price_id()}],
            "default_payment_method": card,
        }
    )
    assert stripe_client.v1.subscriptions.cancel(made.id).status == "canceled"
    assert rows(session) == 0
    portal = api.post("/api/v1/subscriptions/portal-session", headers=headers)
    assert portal.status_code == 200, portal.text


def test_invoices_are_my_own_newest_first_without_drafts(api, make_payment_method, stripe_client):
    mine = auth_headers(api, "invoices@example.com")
    assert api.get("/api/v1/subscriptions/invoices", headers=mine).json() == {
        "invoices": [],
        "has_more": False,
    }
    assert subscribe(api, mine, make_payment_method()).status_code == 200
    theirs = auth_headers(api, "neighbour@example.com")
    assert subscribe(api, theirs, make_payment_method()).status_code == 200

    listed = api.get("/api/v1/subscriptions/invoices", headers=mine)
    assert listed.status_code == 200
    invoices = listed.json()["invoices"]
    assert len(invoices) == 1
    [invoice] = invoices
    assert set(invoice) == {
        "number",
        "created",
        "amount_paid",
        "currency",
        "status",
        "hosted_invoice_url",
        "invoice_pdf",
    }
    assert invoice["amount_paid"] == 1200 and invoice["status"] == "paid"
    assert invoice["number"] and invoice["hosted_invoice_url"] and invoice["invoice_pdf"]
    # A draft (an invoice not yet finalized) is not a bill: not shown.
    customer = stripe_client.v1.customers.list(params={"email": "invoices@example.com"}).data[0]
    stripe_client.v1.invoice_items.create(
        params={"customer": customer.id, "amount": 500, "currency": "usd"}
    )
    draft = stripe_client.v1.invoices.create(params={"customer": customer.id})
    assert draft.status == "draft"
    again = api.get("/api/v1/subscriptions/invoices", headers=mine).json()["invoices"]
    assert [i["number"] for i in again] == [invoice["number"]]


def _checkout_made_before(stripe_client, customer_id: str, user_id: int | None, price_id: str):
    """A Checkout Session of the person's made before their Elements subscribe closed the
    open ones (made here directly)."""
    return stripe_client.v1.checkout.sessions.create(
        params={
            "mode": "subscription",
            "customer": customer_id,
            "client_reference_id": str(user_id),
            "line_items": [{"price": price_id, "quantity": 1}],
            "success_url": "http://app.example.test/checkout/complete?session_id={CHECKOUT_SESSION_ID}",
            "cancel_url": "http://app.example.test/plan",
        }
    )


def test_a_checkout_completed_beside_a_live_subscription_is_cancelled_not_kept(
    api, make_payment_method, stripe_client, session, stripe_env
):
    """The late Checkout tab that still went through: one subscription stays, the newer goes."""
    headers = auth_headers(api, "late-tab@example.com")
    assert subscribe(api, headers, make_payment_method()).status_code == 200
    user = session.exec(select(User).where(User.email == "late-tab@example.com")).one()
    customer = stripe_client.v1.customers.list(params={"email": "late-tab@example.com"}).data[0]
    late = _checkout_made_before(stripe_client, customer.id, user.id, stripe_env["price_id"])
    assert pay_checkout(late.url).status_code in (302, 303)
    refused = complete(api, headers, late.id)
    assert refused.status_code == 409, refused.text
    assert "already have an active subscription" in refused.json()["detail"]
    # The webhook for it, late and repeated, changes nothing more.
    for _ in range(2):
        with session_scope() as s:
            handlers.dispatch(s, _event(late.id))
    statuses = sorted(
        sub.status
        for sub in stripe_client.v1.subscriptions.list(
            params={"customer": customer.id, "status": "all"}
        ).data
    )
    assert statuses == ["active", "canceled"]
    me = api.get("/api/v1/subscriptions/me", headers=headers).json()["subscription"]
    assert me["status"] == "active"
    session.rollback()
    live = session.exec(
        select(func.count()).select_from(Subscription).where(Subscription.status == "active")
    ).one()
    assert live == 1


def test_the_return_page_after_the_webhook_cancelled_the_duplicate_says_so(
    api, make_payment_method, stripe_client, session, stripe_env, monkeypatch
):
    """The return page and the checkout's webhook both found the other subscription; the
    webhook cancelled this one first. The return page must not take Stripe's refusal to
    cancel it again ("No such subscription") for a checkout that is not the person's."""
    headers = auth_headers(api, "both-cancel@example.com")
    assert subscribe(api, headers, make_payment_method()).status_code == 200
    user = session.exec(select(User).where(User.email == "both-cancel@example.com")).one()
    customer = stripe_client.v1.customers.list(params={"email": "both-cancel@example.com"}).data[0]
    late = _checkout_made_before(stripe_client, customer.id, user.id, stripe_env["price_id"])
    assert pay_checkout(late.url).status_code in (302, 303)
    duplicate = stripe_client.v1.checkout.sessions.retrieve(late.id).subscription
    assert stripe_client.v1.subscriptions.cancel(duplicate).status == "canceled"  # the webhook

    def found_the_other_before_it_was_cancelled(**kwargs):
        raise repository.SecondOpenSubscription("as read before the webhook's cancel")

    monkeypatch.setattr(sync, "sync_subscription", found_the_other_before_it_was_cancelled)
    refused = complete(api, headers, late.id)
    assert refused.status_code == 409, refused.text
    assert "already have an active subscription" in refused.json()["detail"]
    session.rollback()
    assert repository.subscription_row(session, duplicate).status == "canceled"


@pytest.mark.parametrize("second", ["elements", "checkout"])
def test_a_paid_checkout_not_yet_recorded_refuses_a_second_subscription(
    api, make_payment_method, stripe_client, session, second
):
    """Paid in one tab; no return page and no webhook yet; a second attempt in another tab."""
    headers = auth_headers(api, f"paid-unrecorded-{second}@example.com")
    url = start(api, headers).json()["url"]
    assert pay_checkout(url).status_code in (302, 303)  # the return page is never loaded
    assert rows(session) == 0  # and no webhook has come
    if second == "elements":
        refused = subscribe(api, headers, make_payment_method())
    else:
        refused = start(api, headers)
    assert refused.status_code == 409, refused.text
    assert "already have an active subscription" in refused.json()["detail"]
    customer = stripe_client.v1.customers.list(
        params={"email": f"paid-unrecorded-{second}@example.com"}
    ).data[0]
    in_stripe = stripe_client.v1.subscriptions.list(
        params={"customer": customer.id, "status": "all"}
    ).data
    assert [sub.status for sub in in_stripe] == ["active"]  # charged once
    me = api.get("/api/v1/subscriptions/me", headers=headers).json()["subscription"]
    assert me["status"] == "active"  # and the paid Checkout is now recorded


def test_an_expired_checkout_is_replaced_not_handed_out_again(api, stripe_client):
    """Back from Checkout, then its session expired (a card tried meanwhile, or time): the
    next Checkout is a new page, not Stripe's replay of the dead one by idempotency key."""
    headers = auth_headers(api, "expired-checkout@example.com")
    urls = []
    for _ in range(3):
        created = start(api, headers)
        assert created.status_code == 201, created.text
        url = created.json()["url"]
        cs_id = url.rstrip("/").rsplit("/", 1)[-1]
        assert stripe_client.v1.checkout.sessions.retrieve(cs_id).status == "open"
        assert url not in urls
        urls.append(url)
        stripe_client.v1.checkout.sessions.expire(cs_id)
    assert pay_checkout(urls[-1]).status_code not in (302, 303)  # the expired one takes nothing


def test_a_stripe_server_error_kept_under_the_checkout_key_is_not_replayed(
    api, stripe_client, stripe_500_replayed
):
    """Stripe answered the Checkout Session's create with a 500 and keeps that answer under
    its key for a day: the next try (the same request: Checkout has no card to vary) is a
    request of its own, so the person is not kept from Checkout until tomorrow."""
    import stripe

    failed = stripe_500_replayed(stripe.checkout.SessionService)
    headers = auth_headers(api, "checkout-500@example.com")
    assert start(api, headers).status_code == 424
    assert len(failed) == 1
    again = start(api, headers)
    assert again.status_code == 201, again.text
    cs_id = again.json()["url"].rstrip("/").rsplit("/", 1)[-1]
    assert stripe_client.v1.checkout.sessions.retrieve(cs_id).status == "open"


def test_checkout_works_while_the_counter_store_is_down(api, monkeypatch):
    """Checkout needs no Redis of its own: a store that cannot be reached leaves its key
    unmoved, not the person with a 500."""
    from subscription_app import ratelimit

    def unreachable():
        raise ConnectionError("Redis is down")

    headers = auth_headers(api, "no-redis@example.com")
    monkeypatch.setattr(ratelimit, "storage", unreachable)
    created = start(api, headers)
    assert created.status_code == 201, created.text


def test_a_return_page_that_cannot_reach_stripe_does_not_say_nothing_was_charged(api, monkeypatch):
    """Back from paying on Stripe's page, Stripe cannot be asked how it went: "Nothing was
    charged" would be false; the person is told to check their dashboard."""
    import stripe

    from subscription_app.billing import sync

    headers = auth_headers(api, "return-unreachable@example.com")
    session_id = paid_session_id(api, headers)

    def unreachable(*args, **kwargs):
        raise stripe.APIConnectionError("The connection was reset.")

    monkeypatch.setattr(sync, "read_checkout", unreachable)
    answer = complete(api, headers, session_id)
    assert answer.status_code == 424, answer.text
    assert answer.json()["detail"] == service.UNCONFIRMED


def _use_new_price(stripe_client, settings_env) -> str:
    """The merchant moves the plan to a new price."""
    price = make_monthly_price(stripe_client, "Pro, new price", 1500)
    settings_env(STRIPE_PRICE_ID=price.id)
    catalog.forget_default_price()
    return price.id


def test_an_open_checkout_at_a_price_the_plan_no_longer_has_is_replaced(
    api, stripe_client, settings_env
):
    headers = auth_headers(api, "price-moved@example.com")
    old_url = start(api, headers).json()["url"]
    new_price = _use_new_price(stripe_client, settings_env)
    again = start(api, headers)
    assert again.status_code == 201, again.text
    new_url = again.json()["url"]
    assert new_url != old_url
    old = stripe_client.v1.checkout.sessions.retrieve(old_url.rstrip("/").rsplit("/", 1)[-1])
    assert old.status == "expired"  # one open page per person, at the plan's price
    new = stripe_client.v1.checkout.sessions.retrieve(new_url.rstrip("/").rsplit("/", 1)[-1])
    assert new.status == "open" and new.metadata["price"] == new_price
    assert start(api, headers).json()["url"] == new_url  # that one is handed out again


def test_a_checkout_paid_at_the_old_price_is_the_persons_subscription(
    api, stripe_client, session, settings_env
):
    """Paid on a page opened before the merchant changed the plan's price: still the
    person's subscription, shown on their dashboard, and no second one can be bought."""
    headers = auth_headers(api, "paid-old-price@example.com")
    session_id = paid_session_id(api, headers)
    _use_new_price(stripe_client, settings_env)
    done = complete(api, headers, session_id)
    assert done.status_code == 200, done.text
    assert done.json()["subscription"]["status"] == "active"
    me = api.get("/api/v1/subscriptions/me", headers=headers).json()["subscription"]
    assert me is not None and me["status"] == "active"
    assert start(api, headers).status_code == 409
    assert rows(session) == 1
    # Its subscription carries our mark, so its own webhooks agree (see test_webhooks).
    paid = stripe_client.v1.checkout.sessions.retrieve(session_id)
    assert made_by_us(stripe_client.v1.subscriptions.retrieve(paid.subscription))


def test_a_return_page_revisited_after_its_subscription_ended_says_so(api, session, stripe_client):
    """Not "processing" (which a client would wait on for ever): a clear 409."""
    headers = auth_headers(api, "ended-checkout@example.com")
    session_id = paid_session_id(api, headers)
    assert complete(api, headers, session_id).json()["status"] == "active"
    checkout = stripe_client.v1.checkout.sessions.retrieve(session_id)
    stripe_client.v1.subscriptions.cancel(checkout.subscription)

    again = complete(api, headers, session_id)
    assert again.status_code == 409, again.text
    assert "already ended" in again.json()["detail"]
    me = api.get("/api/v1/subscriptions/me", headers=headers).json()["subscription"]
    assert me["status"] == "canceled"


def test_the_invoice_list_says_when_older_invoices_are_not_listed(
    api, make_payment_method, stripe_client, monkeypatch
):
    """The list is the latest few (two years of months); older ones are in the portal, and
    the answer says there are some instead of silently ending."""
    from subscription_app.billing import service

    headers = auth_headers(api, "many-invoices@example.com")
    assert subscribe(api, headers, make_payment_method()).status_code == 200
    me = stripe_client.v1.customers.list(params={"email": "many-invoices@example.com"}).data[0]
    [sub] = stripe_client.v1.subscriptions.list(params={"customer": me.id}).data
    stripe_client.raw_request("post", f"/_config/subscriptions/{sub.id}/renew")  # month two

    everything = api.get("/api/v1/subscriptions/invoices", headers=headers).json()
    assert len(everything["invoices"]) == 2 and everything["has_more"] is False
    monkeypatch.setattr(service, "INVOICE_HISTORY_LIMIT", 1)
    latest = api.get("/api/v1/subscriptions/invoices", headers=headers).json()
    assert len(latest["invoices"]) == 1 and latest["has_more"] is True
    assert latest["invoices"][0]["number"] == everything["invoices"][0]["number"]
