"""`/api/v1/subscriptions` against the Stripe emulator, on SQLite and PostgreSQL."""

import pytest
import stripe
from fastapi.testclient import TestClient
from sqlmodel import func, select

from subscription_app import crypto, ratelimit
from subscription_app.api import create_api
from subscription_app.billing import repository, service
from subscription_app.billing.reader import made_by_us
from subscription_app.models import BillingCustomer, Subscription, User
from tests.integration.conftest import auth_headers, subscribe


@pytest.fixture
def api(db_engine, stripe_env):
    with TestClient(create_api(), raise_server_exceptions=False) as client:
        yield client


def count(session, model) -> int:
    session.rollback()  # a fresh snapshot of what the app committed
    return session.exec(select(func.count()).select_from(model)).one()


def test_subscribe_succeeds_and_me_reports_it(api, make_payment_method, stripe_client):
    headers = auth_headers(api, "ok@example.com")
    assert api.get("/api/v1/subscriptions/me", headers=headers).json() == {"subscription": None}

    response = subscribe(api, headers, make_payment_method("tok_visa"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "active"
    sub = body["subscription"]
    assert sub["status"] == "active"
    assert sub["price"] == "$12.00 / month"
    assert sub["amount_cents"] == 1200
    assert sub["started_at"] and sub["current_period_end"]
    assert sub["current_period_end"] > sub["started_at"]
    assert "sub_" not in response.text and "cus_" not in response.text

    me = api.get("/api/v1/subscriptions/me", headers=headers).json()["subscription"]
    assert me == sub
    # Marked as made by our form, so each of its webhooks knows it for our plan's.
    [made] = stripe_client.v1.subscriptions.list(params={"status": "all"}).data
    assert made_by_us(made)


def test_declined_card_gets_402_and_leaves_nothing(api, make_payment_method, session):
    headers = auth_headers(api, "declined@example.com")
    response = subscribe(api, headers, make_payment_method("tok_chargeDeclined"))
    assert response.status_code == 402, response.text
    assert "declined" in response.json()["detail"]
    assert count(session, Subscription) == 0
    me = api.get("/api/v1/subscriptions/me", headers=headers).json()
    assert me == {"subscription": None}


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("tok_chargeDeclinedInsufficientFunds", "Your card has insufficient funds."),
        ("tok_chargeDeclinedExpiredCard", "Your card has expired."),
    ],
)
def test_specific_declines_get_specific_messages(api, make_payment_method, session, token, message):
    headers = auth_headers(api, "specific@example.com")
    response = subscribe(api, headers, make_payment_method(token))
    assert response.status_code == 402, response.text
    assert response.json()["detail"].startswith(message)
    assert count(session, Subscription) == 0


def test_already_subscribed_is_refused(api, make_payment_method, session):
    headers = auth_headers(api, "twice@example.com")
    assert subscribe(api, headers, make_payment_method()).status_code == 200
    again = subscribe(api, headers, make_payment_method())
    assert again.status_code == 409
    assert "already have an active subscription" in again.json()["detail"]
    assert count(session, Subscription) == 1


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Token abc"}],
)
def test_missing_or_bad_token_gets_401(api, headers):
    response = api.post(
        "/api/v1/subscriptions/subscribe", json={"payment_method_id": "pm_123"}, headers=headers
    )
    assert response.status_code == 401
    assert api.get("/api/v1/subscriptions/me", headers=headers).status_code == 401


def test_someone_elses_payment_method_is_refused(api, make_payment_method, session):
    alice = auth_headers(api, "alice@example.com")
    bob = auth_headers(api, "bob@example.com")
    alice_pm = make_payment_method()
    assert subscribe(api, alice, alice_pm).status_code == 200  # now attached to Alice
    response = subscribe(api, bob, alice_pm)
    assert response.status_code == 422
    assert response.json() == {"detail": "That payment method was not found."}
    assert count(session, Subscription) == 1
    assert api.get("/api/v1/subscriptions/me", headers=bob).json() == {"subscription": None}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "payment_method_id"),
        ({"payment_method_id": 42}, "payment_method_id"),
        ({"payment_method_id": "card_123"}, "pm_"),
        ({"payment_method_id": "pm_<script>"}, "pm_"),
        ({"payment_method_id": "pm_123", "extra": 1}, "extra"),
        ({"payment_method_id": "pm_" + "a" * 300}, "payment_method_id"),
    ],
)
def test_malformed_body_is_422_and_changes_nothing(api, session, body, fragment):
    headers = auth_headers(api, "malformed@example.com")
    response = api.post("/api/v1/subscriptions/subscribe", json=body, headers=headers)
    assert response.status_code == 422, response.text
    assert fragment in response.json()["detail"]
    assert count(session, Subscription) == 0


def test_invalid_json_is_400(api):
    headers = auth_headers(api, "json@example.com")
    response = api.post(
        "/api/v1/subscriptions/subscribe",
        content=b"{oops",
        headers={**headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 400


def test_unknown_payment_method_is_a_clear_422(api, session):
    headers = auth_headers(api, "ghost@example.com")
    response = subscribe(api, headers, "pm_doesnotexist123")
    assert response.status_code == 422
    assert response.json() == {"detail": "That payment method was not found."}
    assert count(session, Subscription) == 0


def test_stripe_outage_is_a_clear_error_and_changes_nothing(api, session, settings_env):
    from subscription_app.billing import client

    headers = auth_headers(api, "outage@example.com")
    settings_env(STRIPE_API_BASE="http://127.0.0.1:9")  # nothing listens on the discard port
    client.get_client.cache_clear()
    response = subscribe(api, headers, "pm_whatever123")
    assert response.status_code == 424
    assert "could not reach our payment provider" in response.json()["detail"]
    assert "sk_test" not in response.text and "Traceback" not in response.text
    assert count(session, Subscription) == 0


def test_stripe_not_set_up_is_a_clear_424_not_a_500(api, make_payment_method, settings_env):
    from subscription_app.billing import client

    headers = auth_headers(api, "nokeys@example.com")
    card = make_payment_method("tok_visa")
    settings_env(STRIPE_SECRET_KEY=None)
    client.get_client.cache_clear()
    for response in (
        api.post("/api/v1/subscriptions/setup-intent", headers=headers),
        subscribe(api, headers, card),
    ):
        assert response.status_code == 424, response.text
        assert "payments are not set up" in response.json()["detail"]
        assert "STRIPE_SECRET_KEY" not in response.text  # what to set goes to the log only


def test_a_missing_price_is_a_clear_424(api, make_payment_method, settings_env, session):
    from subscription_app.billing import catalog

    headers = auth_headers(api, "noprice@example.com")
    settings_env(STRIPE_PRICE_LOOKUP_KEY="no_such_lookup_key")
    catalog.forget_default_price()
    response = subscribe(api, headers, make_payment_method("tok_visa"))
    assert response.status_code == 424, response.text
    assert "payments are not set up" in response.json()["detail"]
    assert count(session, Subscription) == 0


def test_a_configured_price_stripe_does_not_know_is_a_clear_424(
    api, make_payment_method, settings_env, session, caplog
):
    """STRIPE_PRICE_ID names a price this Stripe account does not have (a test-mode id
    deployed with a live key, a deleted price): not "That payment method was not found"
    for everyone who tries, and the operator is told what to fix."""
    from subscription_app.billing import catalog

    headers = auth_headers(api, "unknown-price@example.com")
    settings_env(STRIPE_PRICE_ID="price_NotInThisAccount")
    catalog.forget_default_price()
    for response in (
        subscribe(api, headers, make_payment_method("tok_visa")),
        api.post("/api/v1/subscriptions/checkout-session", headers=headers),
    ):
        assert response.status_code == 424, response.text
        assert "payments are not set up" in response.json()["detail"]
    assert count(session, Subscription) == 0
    assert "STRIPE_PRICE_ID" in caplog.text


@pytest.mark.parametrize("path", ["card form", "subscribe", "checkout", "portal"])
def test_a_customer_deleted_in_stripe_is_replaced_not_a_dead_end(
    api, make_payment_method, stripe_client, session, path
):
    """Support deleted the person's customer in the Stripe dashboard: their next card form,
    subscribe, Checkout or billing portal links a new customer and goes ahead, instead of
    failing for good with a message about a payment method."""
    email = f"deleted-customer-{path.replace(' ', '-')}@example.com"
    headers = auth_headers(api, email)
    if path == "portal":  # the portal is for people who have subscribed
        assert subscribe(api, headers, make_payment_method()).status_code == 200
    else:
        assert api.post("/api/v1/subscriptions/setup-intent", headers=headers).status_code == 200
    [deleted] = stripe_client.v1.customers.list(params={"email": email}).data
    stripe_client.v1.customers.delete(deleted.id)

    def go():
        if path == "card form":
            return api.post("/api/v1/subscriptions/setup-intent", headers=headers)
        if path == "subscribe":
            return subscribe(api, headers, make_payment_method())
        if path == "checkout":
            return api.post("/api/v1/subscriptions/checkout-session", headers=headers)
        return api.post("/api/v1/subscriptions/portal-session", headers=headers)

    answer = go()
    assert answer.status_code in (200, 201), answer.text
    [linked] = stripe_client.v1.customers.list(params={"email": email}).data
    assert linked.id != deleted.id
    assert linked_customer(session, email) == linked.id
    if path != "subscribe":  # and the next request uses it: no further customer
        assert go().status_code in (200, 201)
        assert [c.id for c in stripe_client.v1.customers.list(params={"email": email}).data] == [
            linked.id
        ]


def test_a_customer_stripe_does_not_know_is_not_replaced(api, make_payment_method, session):
    """An id this Stripe account has never seen (a key of another account deployed): the
    error stands and the person's customer link is left alone."""
    headers = auth_headers(api, "other-account@example.com")
    assert api.post("/api/v1/subscriptions/setup-intent", headers=headers).status_code == 200
    foreign = "cus_OfAnotherAccount1"
    relink(session, "other-account@example.com", foreign)
    answer = subscribe(api, headers, make_payment_method())
    assert answer.status_code == 422, answer.text
    assert linked_customer(session, "other-account@example.com") == foreign


def test_a_missing_payment_method_leaves_the_customer_alone(api, stripe_client, session):
    headers = auth_headers(api, "bad-card@example.com")
    assert api.post("/api/v1/subscriptions/setup-intent", headers=headers).status_code == 200
    before = linked_customer(session, "bad-card@example.com")
    answer = subscribe(api, headers, "pm_doesnotexist1234")
    assert answer.status_code == 422
    assert answer.json()["detail"] == "That payment method was not found."
    assert linked_customer(session, "bad-card@example.com") == before


def linked_customer(session, email: str) -> str | None:
    session.rollback()
    user = session.exec(select(User).where(User.email == email)).one()
    return repository.customer_id_for_user(session, user.id)


def relink(session, email: str, customer_id: str) -> None:
    session.rollback()
    user = session.exec(select(User).where(User.email == email)).one()
    row = session.exec(select(BillingCustomer).where(BillingCustomer.user_id == user.id)).one()
    row.stripe_customer_id_enc = crypto.encrypt(customer_id, purpose=crypto.Purpose.STRIPE_ID)
    row.stripe_customer_id_hash = crypto.blind_index(customer_id)
    session.add(row)
    session.commit()


def test_replacing_a_customer_only_replaces_the_one_still_linked(api, session):
    """Of two requests replacing a deleted customer at once, the second keeps the first's."""
    headers = auth_headers(api, "replaced-twice@example.com")
    assert api.post("/api/v1/subscriptions/setup-intent", headers=headers).status_code == 200
    first = linked_customer(session, "replaced-twice@example.com")
    user = session.exec(select(User).where(User.email == "replaced-twice@example.com")).one()
    assert repository.replace_customer(session, user.id, first, "cus_NewOne000001") == (
        "cus_NewOne000001"
    )
    # The second still thinks `first` is linked: nothing changes, the first's new one stays.
    assert repository.replace_customer(session, user.id, first, "cus_NewTwo000002") == (
        "cus_NewOne000001"
    )
    session.commit()
    assert linked_customer(session, "replaced-twice@example.com") == "cus_NewOne000001"


def test_a_portal_refused_to_someone_who_never_subscribed_links_no_new_customer(
    api, session, stripe_client, monkeypatch
):
    """Their customer was deleted in Stripe: refused as anyone who never subscribed, with no
    new Stripe customer made and linked on the way."""
    email = "never-subscribed@example.com"
    headers = auth_headers(api, email)
    assert api.post("/api/v1/subscriptions/setup-intent", headers=headers).status_code == 200
    [deleted] = stripe_client.v1.customers.list(params={"email": email}).data
    stripe_client.v1.customers.delete(deleted.id)
    # Stripe may answer a deleted customer's invoice list with "No such customer" (the
    # emulator lists none): stubbed at the SDK so.
    real_list = stripe.InvoiceService.list

    def no_such_customer(self, params=None, *args, **kwargs):
        if (params or {}).get("customer") == deleted.id:
            raise stripe.InvalidRequestError(
                f"No such customer: '{deleted.id}'", "customer", code="resource_missing"
            )
        return real_list(self, params, *args, **kwargs)

    monkeypatch.setattr(stripe.InvoiceService, "list", no_such_customer)
    refused = api.post("/api/v1/subscriptions/portal-session", headers=headers)
    assert refused.status_code == 409 and "no billing account" in refused.json()["detail"]
    assert stripe_client.v1.customers.list(params={"email": email}).data == []
    assert linked_customer(session, email) == deleted.id


def test_a_customer_stripe_does_not_know_is_an_account_problem_in_portal_and_invoices(
    api, session, make_payment_method
):
    """Not 'That payment method was not found.' where no payment method is involved."""
    headers = auth_headers(api, "unknown-account@example.com")
    assert subscribe(api, headers, make_payment_method()).status_code == 200  # may use it
    relink(session, "unknown-account@example.com", "cus_OfAnotherAccount2")
    for answer in (
        api.post("/api/v1/subscriptions/portal-session", headers=headers),
        api.get("/api/v1/subscriptions/invoices", headers=headers),
    ):
        assert answer.status_code == 409, answer.text
        assert "billing account could not be found" in answer.json()["detail"]
    assert linked_customer(session, "unknown-account@example.com") == "cus_OfAnotherAccount2"


def test_a_persons_own_stripe_requests_are_limited(api, session, make_payment_method, settings_env):
    """One account looping over its invoices, the billing portal or made-up Checkout return
    pages must not use up the Stripe account's rate limit, which everyone's subscribe and
    every webhook re-read share."""
    settings_env(RATE_LIMIT_STRIPE_REQUESTS_PER_MINUTE="3")
    headers = auth_headers(api, "looping@example.com")
    assert subscribe(api, headers, make_payment_method()).status_code == 200
    madeup = {"session_id": "cs_test_MadeUpByAScript"}

    def ask() -> list[int]:
        return [
            api.get("/api/v1/subscriptions/invoices", headers=headers).status_code,
            api.post("/api/v1/subscriptions/portal-session", headers=headers).status_code,
            api.post(
                "/api/v1/subscriptions/checkout-session/complete", json=madeup, headers=headers
            ).status_code,
        ]

    assert ask() == [200, 200, 403]
    assert ask() == [429, 429, 429]
    refused = api.get("/api/v1/subscriptions/invoices", headers=headers)
    assert 0 < int(refused.headers["retry-after"]) <= 60
    assert refused.json()["detail"].startswith("Too many requests. Please wait")
    # Someone else is not held back by it.
    others = auth_headers(api, "patient@example.com")
    assert api.get("/api/v1/subscriptions/invoices", headers=others).status_code == 200
    # The live dashboard's re-read after a change is paced by Stripe's events, not counted.
    user = session.exec(select(User).where(User.email == "looping@example.com")).one()
    assert service.list_invoices(session=session, user=user, asked=False).invoices


def test_changes_and_checkout_starts_count_as_stripe_requests_too(
    api, make_payment_method, settings_env
):
    settings_env(RATE_LIMIT_STRIPE_REQUESTS_PER_MINUTE="2")
    headers = auth_headers(api, "toggling@example.com")
    assert subscribe(api, headers, make_payment_method()).status_code == 200
    assert api.post("/api/v1/subscriptions/cancel", headers=headers).status_code == 200
    assert api.post("/api/v1/subscriptions/resume", headers=headers).status_code == 200
    assert api.post("/api/v1/subscriptions/cancel", headers=headers).status_code == 429
    assert api.post("/api/v1/subscriptions/checkout-session", headers=headers).status_code == 429


def test_requests_that_ask_stripe_nothing_are_not_counted(api, settings_env):
    settings_env(RATE_LIMIT_STRIPE_REQUESTS_PER_MINUTE="1")
    headers = auth_headers(api, "no-customer-yet@example.com")
    for _ in range(3):  # no Stripe customer yet: nothing to ask Stripe
        assert api.get("/api/v1/subscriptions/invoices", headers=headers).json() == {
            "invoices": [],
            "has_more": False,
        }
    for _ in range(2):  # nothing to cancel: refused before Stripe is asked
        assert api.post("/api/v1/subscriptions/cancel", headers=headers).status_code == 409


def test_the_stripe_request_limit_lets_calls_through_when_its_store_is_down(
    api, make_payment_method, settings_env, monkeypatch
):
    """It guards a budget: a person's invoices must not fail because Redis did."""
    settings_env(RATE_LIMIT_STRIPE_REQUESTS_PER_MINUTE="1")
    headers = auth_headers(api, "store-down@example.com")
    assert subscribe(api, headers, make_payment_method()).status_code == 200

    class Unreachable:
        def hit(self, *args, **kwargs):
            raise ConnectionError("Redis could not be reached")

    monkeypatch.setattr(ratelimit, "_limiter", Unreachable)
    for _ in range(3):
        assert api.get("/api/v1/subscriptions/invoices", headers=headers).status_code == 200
