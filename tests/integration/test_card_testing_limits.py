"""Card testing: subscribe attempts and SetupIntents are limited per person and per address,
and card checks Stripe declined count per person even when our page never saw them.

Run on the memory and Redis counter stores, through the API against the Stripe emulator.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from datetime import timedelta

import pytest
import stripe
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlmodel import select

from subscription_app import notifications, ratelimit
from subscription_app.api import create_api
from subscription_app.api.webhooks import dispatch_webhooks_first
from subscription_app.billing import card_testing, processor, repository, service
from subscription_app.billing import client as client_module
from subscription_app.billing.webhooks import sign
from subscription_app.models import CardDecline, StripeEvent, User, utcnow
from subscription_app.settings import get_settings
from tests.conftest import free_port, stripe_fixture
from tests.integration.conftest import auth_headers, subscribe

BACKENDS = ["memory"] + (["redis"] if os.environ.get("TEST_REDIS_URL") else [])
LIMIT_MESSAGE = "Too many card attempts. Please wait"


@pytest.fixture(params=BACKENDS)
def card_limits(request, settings_env, db_engine, stripe_env):
    redis_url = os.environ.get("TEST_REDIS_URL") if request.param == "redis" else None
    settings_env(
        REDIS_URL=redis_url,
        RATE_LIMIT_CARD_ATTEMPTS_PER_ACCOUNT="3",
        RATE_LIMIT_CARD_ATTEMPTS_PER_ADDRESS="5",
        RATE_LIMIT_SETUP_INTENTS_PER_ACCOUNT="4",
        RATE_LIMIT_SETUP_INTENTS_PER_ADDRESS="6",
        RATE_LIMIT_CARD_WINDOW_SECONDS="3600",
    )
    ratelimit.reset()
    yield request.param
    ratelimit.reset()


def client(peer: str = "198.51.100.7") -> TestClient:
    return TestClient(create_api(), client=(peer, 5000), raise_server_exceptions=False)


def stripe_customers_with_subscription_attempts(stripe_client) -> int:
    return len(stripe_client.v1.subscriptions.list(params={"status": "all", "limit": 100}).data)


def assert_limited(response) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["detail"].startswith(LIMIT_MESSAGE)
    assert 3500 < int(response.headers["Retry-After"]) <= 3600


def test_declined_cards_per_person_are_limited_and_stop_reaching_stripe(
    card_limits, make_payment_method, stripe_client
):
    api = client()
    headers = auth_headers(api, "tester@example.com")
    for _ in range(3):
        declined = subscribe(api, headers, make_payment_method("tok_chargeDeclined"))
        assert declined.status_code == 402
    reached_stripe = stripe_customers_with_subscription_attempts(stripe_client)
    # Even a good card waits now: the limit counts attempts, not the card.
    assert_limited(subscribe(api, headers, make_payment_method()))
    assert stripe_customers_with_subscription_attempts(stripe_client) == reached_stripe
    # Nor is a new card form (SetupIntent) handed out while no attempt is left.
    assert_limited(api.post("/api/v1/subscriptions/setup-intent", headers=headers))
    # Someone else from another address is not affected.
    other = client("203.0.113.99")
    assert (
        subscribe(
            other, auth_headers(other, "owner@example.com"), make_payment_method()
        ).status_code
        == 200
    )


def test_many_accounts_from_one_address_are_limited(card_limits, make_payment_method):
    api = client()
    codes = []
    for i in range(3):
        headers = auth_headers(api, f"mule{i}@example.com")
        for _ in range(2):
            codes.append(subscribe(api, headers, make_payment_method("tok_chargeDeclined")))
    assert [r.status_code for r in codes[:5]] == [402] * 5
    assert_limited(codes[5])


def test_a_malformed_payment_method_is_refused_without_counting(card_limits):
    api = client()
    headers = auth_headers(api, "typo@example.com")
    for _ in range(5):
        assert subscribe(api, headers, "not a payment method").status_code == 422
    setup = api.post("/api/v1/subscriptions/setup-intent", headers=headers)
    assert setup.status_code == 200  # nothing counted against the person


def test_parallel_attempts_cannot_overshoot_the_limit(card_limits, make_payment_method):
    api = client()
    headers = auth_headers(api, "racer@example.com")
    methods = [make_payment_method("tok_chargeDeclined") for _ in range(10)]
    start = threading.Barrier(len(methods))
    codes: list[int] = []

    def attempt(payment_method: str) -> None:
        with client() as own:
            start.wait()
            codes.append(subscribe(own, headers, payment_method).status_code)

    threads = [threading.Thread(target=attempt, args=(pm,)) for pm in methods]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert codes.count(429) == 7  # exactly 3 got past the limit of 3
    assert all(code in (402, 409) for code in codes if code != 429)


def test_setup_intents_are_limited_per_person_and_per_address(card_limits, stripe_client):
    api = client()
    headers = auth_headers(api, "collector@example.com")
    for _ in range(4):
        assert api.post("/api/v1/subscriptions/setup-intent", headers=headers).status_code == 200
    made = len(stripe_client.v1.setup_intents.list(params={"limit": 100}).data)
    assert_limited(api.post("/api/v1/subscriptions/setup-intent", headers=headers))
    assert len(stripe_client.v1.setup_intents.list(params={"limit": 100}).data) == made
    # A second account from the same address gets what the address has left (the refused
    # request above did not count there), no more.
    second = auth_headers(api, "collector2@example.com")
    for _ in range(2):
        assert api.post("/api/v1/subscriptions/setup-intent", headers=second).status_code == 200
    assert_limited(api.post("/api/v1/subscriptions/setup-intent", headers=second))


def test_a_person_over_their_limit_does_not_spend_the_addresss_budget(
    card_limits, make_payment_method
):
    api = client()
    headers = auth_headers(api, "stubborn@example.com")
    for _ in range(3):
        subscribe(api, headers, make_payment_method("tok_chargeDeclined"))
    for _ in range(5):  # refused for the person, and not counted against the address
        assert_limited(subscribe(api, headers, make_payment_method()))
    neighbour = auth_headers(api, "neighbour@example.com")  # same address (a shared NAT)
    assert subscribe(api, neighbour, make_payment_method()).status_code == 200


# Declines Stripe reports by webhook -----------------------------------------------------


def post_event(hook: TestClient, body: str):
    signature = sign(body, get_settings().stripe_webhook_secret.get_secret_value())
    return hook.post(
        "/api/v1/webhooks/stripe",
        content=body.encode(),
        headers={"Content-Type": "application/json", "Stripe-Signature": signature},
    )


def drain() -> int:
    applied = 0
    while (result := processor.process_batch()).claimed:
        applied += result.done
    return applied


@pytest.fixture
def hook(card_limits):
    """The webhook route as the app serves it."""
    with TestClient(dispatch_webhooks_first(create_api()), raise_server_exceptions=False) as hook:
        yield hook


def send_declines(
    hook: TestClient, stripe_client, event_type: str = "setup_intent.setup_failed"
) -> None:
    """Send our webhook route every event of `event_type` the emulator holds, oldest first,
    as Stripe would (those sent before are acknowledged as repeats)."""
    listed = stripe_client.v1.events.list(params={"type": event_type, "limit": 100}).data
    for event in reversed(listed):  # listed newest first
        assert post_event(hook, json.dumps(event.to_dict())).status_code == 200


def deliver_declines(hook: TestClient, stripe_client) -> int:
    """`send_declines`, then apply them; how many were applied."""
    send_declines(hook, stripe_client)
    return drain()


def setup_intent_for(api: TestClient, headers: dict[str, str]) -> str:
    answer = api.post("/api/v1/subscriptions/setup-intent", headers=headers)
    assert answer.status_code == 200, answer.text
    return answer.json()["client_secret"].partition("_secret_")[0]


def check_card_at_stripe(stripe_client, setup_intent_id: str, payment_method: str):
    """What a script holding the client secret does: ask Stripe, never us."""
    return stripe_client.v1.setup_intents.confirm(
        setup_intent_id, params={"payment_method": payment_method}
    )


def decline_cards_at_stripe(stripe_client, make_payment_method, setup_intent_id, times) -> None:
    """Have Stripe decline `times` cards checked on the SetupIntent, behind our back."""
    for _ in range(times):
        with pytest.raises(stripe.CardError):
            check_card_at_stripe(
                stripe_client, setup_intent_id, make_payment_method("tok_chargeDeclined")
            )


def test_declines_checked_straight_at_stripe_count_and_stop_the_setup_intent(
    hook, make_payment_method, stripe_client
):
    api = client()
    headers = auth_headers(api, "script@example.com")
    seti = setup_intent_for(api, headers)
    # A Stripe Checkout page too, handed out before any decline: it takes cards as well.
    page = api.post("/api/v1/subscriptions/checkout-session", headers=headers)
    assert page.status_code == 201, page.text
    [checkout] = stripe_client.v1.checkout.sessions.list(params={"status": "open"}).data
    # Two checks before the first decline's event arrives (Stripe's webhooks take a moment).
    decline_cards_at_stripe(stripe_client, make_payment_method, seti, 2)
    assert deliver_declines(hook, stripe_client) == 2
    # Under the limit of 3, but a declined card form checks no more cards: the SetupIntent
    # is cancelled, and each further check needs a new one, counted per person and address.
    assert stripe_client.v1.setup_intents.retrieve(seti).status == "canceled"
    with pytest.raises(stripe.InvalidRequestError, match="status of canceled"):
        check_card_at_stripe(stripe_client, seti, make_payment_method("tok_chargeDeclined"))
    second = setup_intent_for(api, headers)  # the person still gets a form
    third = setup_intent_for(api, headers)  # (the script collects another, unused)

    decline_cards_at_stripe(stripe_client, make_payment_method, second, 1)
    assert deliver_declines(hook, stripe_client) == 1
    # The third decline reached the limit: the person's SetupIntents are cancelled at
    # Stripe, the one declined on and the other the script holds, so it can check no more
    # cards on either...
    for intent in (seti, second, third):
        assert stripe_client.v1.setup_intents.retrieve(intent).status == "canceled"
        with pytest.raises(stripe.InvalidRequestError, match="status of canceled"):
            check_card_at_stripe(stripe_client, intent, make_payment_method())
    # Its Checkout page is closed too...
    assert stripe_client.v1.checkout.sessions.retrieve(checkout.id).status == "expired"
    # ...and it gets no new one, nor a subscribe attempt, though our page saw no decline.
    made = len(stripe_client.v1.setup_intents.list(params={"limit": 100}).data)
    assert_limited(api.post("/api/v1/subscriptions/setup-intent", headers=headers))
    reached_stripe = stripe_customers_with_subscription_attempts(stripe_client)
    assert_limited(subscribe(api, headers, make_payment_method()))
    # Nor a Stripe Checkout page, where the same cards could be tried on.
    checkouts = len(stripe_client.v1.checkout.sessions.list(params={"limit": 100}).data)
    assert_limited(api.post("/api/v1/subscriptions/checkout-session", headers=headers))
    assert len(stripe_client.v1.checkout.sessions.list(params={"limit": 100}).data) == checkouts
    assert len(stripe_client.v1.setup_intents.list(params={"limit": 100}).data) == made
    assert stripe_customers_with_subscription_attempts(stripe_client) == reached_stripe
    # Someone else is not affected.
    other = client("203.0.113.50")
    setup_intent_for(other, auth_headers(other, "bystander@example.com"))


def test_a_failed_3d_secure_check_leaves_the_card_form_usable(hook, session, stripe_client):
    """Not a decline: the person answers the bank's check again on the same form."""
    api = client()
    seti = setup_intent_for(api, auth_headers(api, "bank-check@example.com"))
    customer = stripe_client.v1.setup_intents.retrieve(seti).customer
    error = {"type": "invalid_request_error", "code": "setup_intent_authentication_failure"}
    event = failed_in_stripes_shape(id=seti, customer=customer, last_setup_error=error)
    assert post_event(hook, json.dumps(event)).status_code == 200
    assert drain() == 1
    assert stripe_client.v1.setup_intents.retrieve(seti).status == "requires_payment_method"


def test_a_decline_on_a_card_form_not_ours_counts_but_leaves_it_usable(
    hook, session, stripe_client
):
    """A SetupIntent without our mark (the customer portal's, where the person is fixing a
    card on Stripe's page): its decline counts towards the limit, but the form is not
    cancelled under them; our own card form's is (as above)."""
    api = client()
    ours = setup_intent_for(api, auth_headers(api, "portal@example.com"))
    customer = stripe_client.v1.setup_intents.retrieve(ours).customer
    portal = stripe_client.v1.setup_intents.create(
        params={"customer": customer, "usage": "off_session"}
    ).id
    declined = {"type": "card_error", "code": "card_declined"}
    for intent_id in (portal, ours):
        intent = stripe_client.v1.setup_intents.retrieve(intent_id).to_dict()
        event = failed_in_stripes_shape(**{**intent, "last_setup_error": declined})
        assert post_event(hook, json.dumps(event, default=str)).status_code == 200
    assert drain() == 2
    assert len(session.exec(select(CardDecline)).all()) == 2  # both count
    assert stripe_client.v1.setup_intents.retrieve(portal).status == "requires_payment_method"
    assert stripe_client.v1.setup_intents.retrieve(ours).status == "canceled"


def test_the_customer_portal_takes_cards_so_only_subscribers_at_no_limit_get_it(
    hook, stripe_client, make_payment_method
):
    """Its SetupIntents are left usable after a decline (above): a throwaway account, with
    a Stripe customer but no subscription, gets no portal to check cards on, and a
    subscriber at the decline limit gets none either."""
    api = client()
    headers = auth_headers(api, "portal-script@example.com")
    customer = stripe_client.v1.setup_intents.retrieve(setup_intent_for(api, headers)).customer
    portal = "/api/v1/subscriptions/portal-session"
    refused = api.post(portal, headers=headers)
    assert refused.status_code == 409 and "no billing account" in refused.json()["detail"]
    assert subscribe(api, headers, make_payment_method()).status_code == 200
    assert api.post(portal, headers=headers).status_code == 200
    # At the decline limit (3 here), as Stripe's webhooks told it: no portal.
    for _ in range(3):
        envelope = failed_in_stripes_shape(customer=customer)
        assert post_event(hook, json.dumps(envelope, default=str)).status_code == 200
    drain()
    assert_limited(api.post(portal, headers=headers))


def test_a_checkout_started_as_the_limit_is_reached_is_refused_under_the_lock(
    card_limits, stripe_client, monkeypatch
):
    """The decline reaching the limit lands between the request's first check and its
    subscribe lock: the check under the lock refuses, and no page reaches Stripe."""
    api = client()
    headers = auth_headers(api, "racing@example.com")
    answers = iter([None, 3600])  # under the limit at first look, over it under the lock
    monkeypatch.setattr(card_testing, "retry_after", lambda *_, **__: next(answers))
    assert_limited(api.post("/api/v1/subscriptions/checkout-session", headers=headers))
    assert stripe_client.v1.checkout.sessions.list(params={"limit": 100}).data == []


def test_the_limit_expires_checkout_pages_under_the_subscribe_lock(
    hook, session, stripe_client, monkeypatch
):
    """So a page being made meanwhile cannot slip between the expiry and its own check."""
    from subscription_app.billing import sync

    api = client()
    headers = auth_headers(api, "locked@example.com")
    customer = stripe_client.v1.setup_intents.retrieve(setup_intent_for(api, headers)).customer
    held: list[int] = []
    seen: list[tuple[str, list[int]]] = []
    real_lock = sync.subscriber_lock

    @contextlib.contextmanager
    def recording_lock(user_id: int):
        with real_lock(user_id):
            held.append(user_id)
            try:
                yield
            finally:
                held.remove(user_id)

    monkeypatch.setattr(sync, "subscriber_lock", recording_lock)
    monkeypatch.setattr(service, "expire_open_checkouts", lambda _, c: seen.append((c, list(held))))
    user_id = session.exec(select(User)).one().id
    for _ in range(3):  # the limit is 3 here
        envelope = failed_in_stripes_shape(customer=customer)
        assert post_event(hook, json.dumps(envelope, default=str)).status_code == 200
    drain()
    assert seen == [(customer, [user_id])]


def failed_in_stripes_shape(
    event_type: str = "setup_intent.setup_failed", **fields: object
) -> dict:
    """A decline event (`setup_intent.setup_failed` or `payment_intent.payment_failed`):
    Stripe's published example event and intent, with the given intent fields."""
    intent = stripe_fixture(event_type.partition(".")[0])
    intent.update(fields)
    envelope = stripe_fixture("event")
    envelope.update(
        id=f"evt_{uuid.uuid4().hex}",
        type=event_type,
        created=int(time.time()),
        data={"object": intent},
    )
    return envelope


def test_a_decline_in_stripes_own_event_shape_is_counted_once(hook, session, stripe_client):
    """Stripe's published example SetupIntent, as `setup_intent.setup_failed` carries it."""
    api = client()
    headers = auth_headers(api, "shape@example.com")
    seti = setup_intent_for(api, headers)
    user_id = repository.user_id_for_customer(
        session, stripe_client.v1.setup_intents.retrieve(seti).customer
    )
    assert user_id is not None
    envelope = failed_in_stripes_shape(
        id=seti,
        customer=stripe_client.v1.setup_intents.retrieve(seti).customer,
        last_setup_error={"type": "card_error", "code": "card_declined"},
    )
    body = json.dumps(envelope, default=str)
    assert post_event(hook, body).json()["duplicate"] is False
    assert post_event(hook, body).json()["duplicate"] is True
    assert drain() == 1
    session.rollback()
    [decline] = session.exec(select(CardDecline)).all()
    assert decline.user_id == user_id and decline.event_id == envelope["id"]
    [stored] = session.exec(select(StripeEvent)).all()
    assert stored.status == "done"


def test_a_decline_applied_twice_counts_once_and_old_ones_stop_counting(card_limits, session):
    """The window and the per-event count, straight on the table (limit 3 per hour)."""
    api = client()
    auth_headers(api, "counted@example.com")
    [user_id] = [u.id for u in session.exec(select(User)).all()]
    now = utcnow()
    record = card_testing.record_decline
    assert record(
        session, user_id=user_id, event_id="evt_1", declined_at=now - timedelta(seconds=3500)
    )
    # Applied again (a lease ran out while a processor was applying it): counted once.
    assert not record(session, user_id=user_id, event_id="evt_1", declined_at=now)
    assert record(
        session, user_id=user_id, event_id="evt_2", declined_at=now - timedelta(seconds=100)
    )
    assert card_testing.retry_after(session, user_id=user_id) is None
    # Older than the window: not counted, and deleted as soon as it is recorded.
    assert record(session, user_id=user_id, event_id="evt_0", declined_at=now - timedelta(hours=2))
    assert card_testing.retry_after(session, user_id=user_id) is None
    assert record(
        session, user_id=user_id, event_id="evt_3", declined_at=now - timedelta(seconds=50)
    )
    # Three in the window: allowed again when the oldest of them (3500 s ago) leaves it.
    assert 95 <= card_testing.retry_after(session, user_id=user_id) <= 100
    session.commit()
    assert {d.event_id for d in session.exec(select(CardDecline)).all()} == {
        "evt_1",
        "evt_2",
        "evt_3",
    }


def test_a_decline_for_a_customer_we_do_not_know_is_skipped(hook, session):
    envelope = failed_in_stripes_shape(customer="cus_NotOurs")
    assert post_event(hook, json.dumps(envelope, default=str)).status_code == 200
    drain()
    session.rollback()
    [stored] = session.exec(select(StripeEvent)).all()
    assert stored.status == "skipped"
    assert session.exec(select(CardDecline)).all() == []


def test_a_cancel_stripe_does_not_answer_keeps_the_decline_and_is_retried(
    hook, session, make_payment_method, stripe_client, settings_env, stripe_env
):
    api = client()
    headers = auth_headers(api, "outage@example.com")
    seti = setup_intent_for(api, headers)
    decline_cards_at_stripe(stripe_client, make_payment_method, seti, 3)
    send_declines(hook, stripe_client)
    # Stripe unreachable while the declines are applied: every cancel fails (the declined
    # SetupIntent's, and at the third the person's every one).
    settings_env(STRIPE_API_BASE=f"http://127.0.0.1:{free_port()}")
    client_module.get_client.cache_clear()
    drain()
    session.rollback()
    assert len(session.exec(select(CardDecline)).all()) == 3  # the declines stay counted
    assert [e.status for e in session.exec(select(StripeEvent)).all()].count("pending") == 3
    assert stripe_client.v1.setup_intents.retrieve(seti).status == "requires_payment_method"
    # The person is refused meanwhile, and the retry (once Stripe answers) cancels.
    settings_env(STRIPE_API_BASE=stripe_env["emulator"].url)
    client_module.get_client.cache_clear()
    assert_limited(api.post("/api/v1/subscriptions/setup-intent", headers=headers))
    session.execute(update(StripeEvent).values(next_attempt_at=utcnow()))  # due now
    session.commit()
    assert drain() == 3
    assert stripe_client.v1.setup_intents.retrieve(seti).status == "canceled"


def test_declines_on_a_first_payment_checked_at_stripe_undo_the_attempt(
    hook, session, make_payment_method, stripe_client
):
    """The other client secret our page hands out: a first payment's, for 3-D Secure. Once
    the bank check failed, its PaymentIntent takes another card, from a script too."""
    api = client()
    headers = auth_headers(api, "pi-script@example.com")
    first = subscribe(api, headers, make_payment_method("tok_threeDSecure2Required"))
    assert first.json()["status"] == "requires_action", first.text
    secret = first.json()["client_secret"]
    intent = secret.partition("_secret_")[0]
    stripe_client.raw_request(  # the bank check fails; the script keeps the secret
        "post", f"/v1/payment_intents/{intent}/_authenticate", client_secret=secret, success="false"
    )

    def decline(times: int) -> None:
        for _ in range(times):
            declined = make_payment_method("tok_chargeDeclined")
            with pytest.raises(stripe.CardError):
                stripe_client.v1.payment_intents.confirm(
                    intent, params={"payment_method": declined}
                )
        send_declines(hook, stripe_client, "payment_intent.payment_failed")
        assert drain() == times

    def attempt_status() -> str:
        customer = stripe_client.v1.payment_intents.retrieve(intent).customer
        [attempt] = stripe_client.v1.subscriptions.list(
            params={"customer": customer, "status": "all"}
        ).data
        return attempt.status

    def messages() -> list[str]:
        session.rollback()  # what was committed
        user_id = session.exec(select(User)).one().id
        return notifications.recent_messages(session, user_id=user_id)

    decline(2)
    assert attempt_status() == "incomplete"  # under the limit of 3: nothing undone
    assert service.ATTEMPT_STOPPED not in messages()
    decline(1)
    # At the limit the attempt is undone: invoice voided (which ends it), and its
    # PaymentIntent takes no more cards. The person is told why (their dashboard lists it).
    assert attempt_status() in ("canceled", "incomplete_expired")
    assert messages().count(service.ATTEMPT_STOPPED) == 1
    # The page (or client) finishing its bank check now hears why, not "nothing to confirm".
    assert_limited(api.post("/api/v1/subscriptions/confirm", headers=headers))
    with pytest.raises(stripe.InvalidRequestError):
        stripe_client.v1.payment_intents.confirm(
            intent, params={"payment_method": make_payment_method()}
        )
    assert_limited(subscribe(api, headers, make_payment_method()))
    assert api.get("/api/v1/subscriptions/me", headers=headers).json()["subscription"] is None
    # The limit applied again (a second processor, the event redelivered) finds nothing left
    # to undo: told once.
    service.stop_first_payments(session=session, user=session.exec(select(User)).one())
    assert messages().count(service.ATTEMPT_STOPPED) == 1


def test_failed_payments_of_a_live_subscription_are_not_card_testing(
    hook, session, make_payment_method, stripe_client
):
    """A renewal's or a past-due invoice's payment failing (Stripe's own event shape):
    nothing counted, the subscription untouched."""
    api = client()
    headers = auth_headers(api, "renewing@example.com")
    assert subscribe(api, headers, make_payment_method()).json()["status"] == "active"
    user_id = session.exec(select(User)).one().id
    customer = repository.customer_id_for_user(session, user_id)
    for _ in range(4):  # over the limit of 3, were they counted
        envelope = failed_in_stripes_shape(
            "payment_intent.payment_failed", customer=customer, status="requires_payment_method"
        )
        assert post_event(hook, json.dumps(envelope, default=str)).status_code == 200
    drain()
    session.rollback()
    assert {e.status for e in session.exec(select(StripeEvent)).all()} == {"skipped"}
    assert session.exec(select(CardDecline)).all() == []
    me = api.get("/api/v1/subscriptions/me", headers=headers).json()["subscription"]
    assert me["status"] == "active"
    # Not refused as a card tester (a subscriber gets "already subscribed", not 429).
    assert api.post("/api/v1/subscriptions/setup-intent", headers=headers).status_code != 429


def test_an_attempt_stripe_will_not_undo_now_is_logged_and_undone_later(
    card_limits, session, make_payment_method, monkeypatch
):
    api = client()
    headers = auth_headers(api, "stuck@example.com")
    first = subscribe(api, headers, make_payment_method("tok_threeDSecure2Required"))
    assert first.json()["status"] == "requires_action"
    user = session.exec(select(User)).one()

    def open_attempts() -> list[str]:
        session.rollback()  # what was committed
        return [a.status for a in repository.open_subscriptions(session, user.id)]

    def refuse(client, snapshot):
        raise stripe.InvalidRequestError("This invoice can't be voided.", param=None)

    for step in ("_payment_of", "_void_first_invoice"):  # reading the payment, undoing it
        with monkeypatch.context() as patched:
            patched.setattr(service, step, refuse)
            # Logged and left: no error for the webhook processor to retry forever.
            service.stop_first_payments(session=session, user=user)
        assert open_attempts() == ["incomplete"]  # not undone
    service.stop_first_payments(session=session, user=user)
    assert open_attempts() == []  # undone
