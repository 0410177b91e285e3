"""One live subscription per person, whatever they do (SQLite and PostgreSQL, real SDK calls).

Each test asks Stripe (the emulator) what really exists afterwards, not only our database.
"""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from subscription_app import crypto
from subscription_app.api import create_api
from subscription_app.billing import service, sync
from subscription_app.models import BillingCustomer, User
from tests.integration.conftest import auth_headers, subscribe


@pytest.fixture
def api(db_engine, stripe_env):
    with TestClient(create_api(), raise_server_exceptions=False) as client:
        yield client


def stripe_state(session, stripe_client, email: str) -> tuple[list, list]:
    """(subscriptions, paid invoices) that Stripe holds for this person's customer."""
    session.rollback()  # a fresh snapshot of what the app committed
    user = session.exec(select(User).where(User.email == email)).one()
    customer = session.exec(select(BillingCustomer).where(BillingCustomer.user_id == user.id)).one()
    customer_id = crypto.decrypt(customer.stripe_customer_id_enc, purpose=crypto.Purpose.STRIPE_ID)
    subs = stripe_client.v1.subscriptions.list(
        params={"customer": customer_id, "status": "all"}
    ).data
    invoices = stripe_client.v1.invoices.list(params={"customer": customer_id}).data
    return subs, [i for i in invoices if i.status == "paid"]


def live(subs) -> list:
    return [s for s in subs if s.status in ("active", "trialing", "past_due", "unpaid")]


def test_two_concurrent_subscribes_with_two_cards_make_one_subscription_and_one_charge(
    api, make_payment_method, stripe_client, session
):
    headers = auth_headers(api, "tabs@example.com")
    cards = [make_payment_method("tok_visa"), make_payment_method("tok_mastercard")]
    start = threading.Barrier(len(cards))
    answers = []

    def attempt(card: str) -> None:
        # A client of its own per caller: two tabs, or a page and an API client.
        with TestClient(create_api(), raise_server_exceptions=False) as client:
            start.wait()
            answers.append(subscribe(client, headers, card))

    threads = [threading.Thread(target=attempt, args=(card,)) for card in cards]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    codes = sorted(a.status_code for a in answers)
    assert codes == [200, 409], [a.text for a in answers]
    refused = next(a for a in answers if a.status_code == 409)
    assert "already have an active subscription" in refused.json()["detail"]
    subs, paid = stripe_state(session, stripe_client, "tabs@example.com")
    assert len(subs) == 1 and len(live(subs)) == 1
    assert len(paid) == 1


def test_second_card_while_3ds_is_pending_leaves_exactly_one_live_subscription(
    api, make_payment_method, stripe_client, session
):
    headers = auth_headers(api, "pending@example.com")
    first = subscribe(api, headers, make_payment_method("tok_threeDSecure2Required"))
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "requires_action"
    pending_intent = first.json()["client_secret"].split("_secret_")[0]

    second = subscribe(api, headers, make_payment_method("tok_visa"))
    assert second.status_code == 200, second.text
    assert second.json()["status"] == "active"

    # Completing the first attempt's payment later must not charge a second time.
    with pytest.raises(Exception):
        stripe_client.v1.payment_intents.confirm(pending_intent)
    subs, paid = stripe_state(session, stripe_client, "pending@example.com")
    assert len(subs) == 2 and len(live(subs)) == 1
    assert {s.status for s in subs} - {"active"} <= {"canceled", "incomplete_expired"}
    assert len(paid) == 1
    me = api.get("/api/v1/subscriptions/me", headers=headers).json()["subscription"]
    assert me["status"] == "active"


@pytest.fixture
def recording_dies_once(monkeypatch):
    """The first subscribe dies after Stripe created the subscription, before we record it."""
    real_record = sync.record_created
    calls = []

    def die_once(**kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("worker killed")
        return real_record(**kwargs)

    monkeypatch.setattr(sync, "record_created", die_once)


def test_retry_after_a_request_died_half_way_returns_the_same_subscription(
    api, make_payment_method, stripe_client, session, recording_dies_once
):
    # The first request created the subscription in Stripe, then died before recording it.
    # Only the idempotency key keeps the retry from creating a second one.
    headers = auth_headers(api, "retry@example.com")
    card = make_payment_method("tok_visa")
    assert subscribe(api, headers, card).status_code == 500
    retry = subscribe(api, headers, card)
    assert retry.status_code == 200, retry.text
    assert retry.json()["status"] == "active"
    subs, paid = stripe_state(session, stripe_client, "retry@example.com")
    assert len(subs) == 1 and len(paid) == 1


def test_a_stripe_server_error_kept_under_the_key_is_not_replayed_to_the_next_try(
    api, make_payment_method, stripe_client, session, stripe_500_replayed
):
    """Stripe answered the create with a 500 and keeps that answer under its key for a day:
    the next try, with the same card, is a request of its own, not the same outage replayed
    until tomorrow."""
    import stripe

    failed = stripe_500_replayed(stripe.SubscriptionService)
    headers = auth_headers(api, "replayed-500@example.com")
    card = make_payment_method("tok_visa")
    outage = subscribe(api, headers, card)
    assert outage.status_code == 424, outage.text
    assert len(failed) == 1
    again = subscribe(api, headers, card)
    assert again.status_code == 200, again.text
    assert again.json()["status"] == "active"
    subs, paid = stripe_state(session, stripe_client, "replayed-500@example.com")
    assert len(subs) == 1 and len(paid) == 1


def _made_then_failed_once(monkeypatch, error: Exception) -> list[str]:
    """Stripe makes the first subscription asked for, but its answer does not come back:
    `error` is raised instead (a lost connection, a gateway's 5xx). The ids made, in order."""
    import stripe

    real_create = stripe.SubscriptionService.create
    made: list[str] = []

    def made_then_failed(self, params=None, options=None):
        subscription = real_create(self, params, options)
        made.append(subscription.id)
        if len(made) == 1:
            raise error
        return subscription

    monkeypatch.setattr(stripe.SubscriptionService, "create", made_then_failed)
    return made


def test_a_gateways_5xx_keeps_the_key_so_the_retry_gets_what_stripe_made(
    api, make_payment_method, stripe_client, session, monkeypatch
):
    """A 502 from in front of Stripe's API (no Stripe error body): Stripe may have made the
    subscription, or still be making it. The retry uses the same key and gets it back,
    rather than a new key and (were it not listed yet) a second one."""
    import stripe

    made = _made_then_failed_once(
        monkeypatch, stripe.APIError("Invalid response body from API: <html>", http_status=502)
    )
    headers = auth_headers(api, "gateway-502@example.com")
    card = make_payment_method("tok_visa")
    assert subscribe(api, headers, card).status_code == 424
    retry = subscribe(api, headers, card)
    assert retry.status_code == 200, retry.text
    assert made[0] == made[1]  # the same subscription, replayed by its key
    subs, paid = stripe_state(session, stripe_client, "gateway-502@example.com")
    assert len(subs) == 1 and len(paid) == 1


def test_a_webhook_recording_the_first_subscription_mid_retry_does_not_make_a_second(
    api,
    make_payment_method,
    stripe_client,
    session,
    recording_dies_once,
    monkeypatch,
):
    """The retry leaves the dead request's subscription to its idempotency key; the webhook
    processor records that subscription just after the retry checked the open ones. The
    retry still uses the dead request's key (Stripe answers with that subscription), rather
    than count the new row as a new attempt and create, and charge, a second one."""
    headers = auth_headers(api, "mid-retry@example.com")
    card = make_payment_method("tok_visa")
    assert subscribe(api, headers, card).status_code == 500
    real_settle = service._settle_open_attempts

    def webhook_records_it_meanwhile(client, session_, user):
        real_settle(client, session_, user)
        customer = stripe_client.v1.customers.list(params={"email": user.email}).data[0]
        [first] = stripe_client.v1.subscriptions.list(params={"customer": customer.id}).data
        sync.sync_subscription(session=session_, subscription_id=first.id)

    monkeypatch.setattr(service, "_settle_open_attempts", webhook_records_it_meanwhile)
    retry = subscribe(api, headers, card)
    assert retry.status_code == 200, retry.text
    subs, paid = stripe_state(session, stripe_client, "mid-retry@example.com")
    assert len(subs) == 1 and len(paid) == 1


def test_a_webhook_recording_the_first_attempt_before_it_is_settled_gets_a_new_attempt(
    api, make_payment_method, stripe_client, session, recording_dies_once, monkeypatch
):
    """The dead request's attempt waits for 3-D Secure; the webhook records it just before
    the retry settles the open attempts, which undoes it. The retry then starts a new
    attempt (a new key), not Stripe's replay of the one just undone (a false decline)."""
    headers = auth_headers(api, "settled-mid-retry@example.com")
    card = make_payment_method("tok_threeDSecure2Required")
    assert subscribe(api, headers, card).status_code == 500
    customer = stripe_client.v1.customers.list(
        params={"email": "settled-mid-retry@example.com"}
    ).data[0]
    [first] = stripe_client.v1.subscriptions.list(params={"customer": customer.id}).data
    assert first.status == "incomplete"
    real_adopt = service._adopt_unrecorded

    def webhook_records_it_meanwhile(session_, user, customer_id, **kwargs):
        adopted = real_adopt(session_, user, customer_id, **kwargs)
        sync.sync_subscription(session=session_, subscription_id=first.id)
        return adopted

    monkeypatch.setattr(service, "_adopt_unrecorded", webhook_records_it_meanwhile)
    retry = subscribe(api, headers, card)
    assert retry.status_code == 200, retry.text
    assert retry.json()["status"] == "requires_action"
    undone = stripe_client.v1.subscriptions.retrieve(first.id).status
    assert undone in ("canceled", "incomplete_expired")
    subs, paid = stripe_state(session, stripe_client, "settled-mid-retry@example.com")
    assert sorted(s.status for s in subs) == sorted([undone, "incomplete"]) and paid == []


def test_retry_with_another_card_after_a_request_died_adopts_the_first_subscription(
    api, make_payment_method, stripe_client, session, recording_dies_once
):
    headers = auth_headers(api, "retry2@example.com")
    assert subscribe(api, headers, make_payment_method("tok_visa")).status_code == 500
    again = subscribe(api, headers, make_payment_method("tok_mastercard"))
    assert again.status_code == 409, again.text
    subs, paid = stripe_state(session, stripe_client, "retry2@example.com")
    assert len(subs) == 1 and len(paid) == 1
    me = api.get("/api/v1/subscriptions/me", headers=headers).json()["subscription"]
    assert me["status"] == "active"


def test_subscribing_again_after_cancelling_with_the_same_card_starts_a_new_subscription(
    api, make_payment_method, stripe_client, session
):
    # Keys are per attempt, not per card: the same card later is a new attempt.
    headers = auth_headers(api, "again@example.com")
    card = make_payment_method("tok_visa")
    assert subscribe(api, headers, card).status_code == 200
    ended = api.post("/api/v1/subscriptions/cancel", json={"at_period_end": False}, headers=headers)
    assert ended.status_code == 200
    again = subscribe(api, headers, card)
    assert again.status_code == 200, again.text
    assert again.json()["status"] == "active"
    subs, paid = stripe_state(session, stripe_client, "again@example.com")
    assert sorted(s.status for s in subs) == ["active", "canceled"]
    assert len(paid) == 2


def test_a_retry_after_stripe_may_have_forgotten_the_key_adopts_instead_of_charging_again(
    api, make_payment_method, stripe_client, session, recording_dies_once, monkeypatch
):
    # Stripe keeps an idempotency key for 24 hours: a retry later than that must not rely on
    # it. (Here: as if the first request were that old.)
    from datetime import timedelta

    from subscription_app.billing import service

    monkeypatch.setattr(service, "IDEMPOTENCY_KEYS_KEPT", timedelta(0))
    headers = auth_headers(api, "late-retry@example.com")
    card = make_payment_method("tok_visa")
    assert subscribe(api, headers, card).status_code == 500
    retry = subscribe(api, headers, card)
    assert retry.status_code == 409, retry.text  # recorded from Stripe, not made again
    subs, paid = stripe_state(session, stripe_client, "late-retry@example.com")
    assert len(subs) == 1 and len(paid) == 1
    me = api.get("/api/v1/subscriptions/me", headers=headers).json()["subscription"]
    assert me["status"] == "active"


def test_a_second_open_subscription_made_in_stripe_is_a_conflict_not_an_error(
    api, make_payment_method, stripe_client, session, stripe_env
):
    headers = auth_headers(api, "two-open@example.com")
    assert subscribe(api, headers, make_payment_method()).status_code == 200
    customer = stripe_client.v1.customers.list(params={"email": "two-open@example.com"}).data[0]
    # One more, made in the Stripe dashboard (never recorded here), on the same card.
    stripe_client.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"price": stripe_env["price_id"]}]}
    )
    again = subscribe(api, headers, make_payment_method())
    assert again.status_code == 409, again.text
    assert "already have an active subscription" in again.json()["detail"]


def test_a_3ds_payment_finished_right_after_our_read_is_kept_not_cancelled(
    api, make_payment_method, stripe_client, session, monkeypatch
):
    """A second card while the first waits for 3-D Secure, which finishes in the other tab
    just after we read it as pending: the paid subscription stays, the second card is not
    charged."""
    from subscription_app.billing import service

    headers = auth_headers(api, "raced@example.com")
    first = subscribe(api, headers, make_payment_method("tok_threeDSecure2Required"))
    assert first.json()["status"] == "requires_action"
    secret = first.json()["client_secret"]
    read_payment = service._payment_of
    finished: list[bool] = []

    def then_finished_elsewhere(client, snapshot):
        payment = read_payment(client, snapshot)  # still waiting for the bank, as read
        if not finished:
            finished.append(True)
            stripe_client.raw_request(
                "post",
                f"/v1/payment_intents/{secret.split('_secret_')[0]}/_authenticate",
                client_secret=secret,
                success="true",
            )
        return payment

    monkeypatch.setattr(service, "_payment_of", then_finished_elsewhere)
    second = subscribe(api, headers, make_payment_method("tok_visa"))
    assert second.status_code == 409, second.text
    assert "already have an active subscription" in second.json()["detail"]
    subs, paid = stripe_state(session, stripe_client, "raced@example.com")
    assert [s.status for s in subs] == ["active"] and len(paid) == 1
    me = api.get("/api/v1/subscriptions/me", headers=headers).json()["subscription"]
    assert me["status"] == "active"


def test_a_first_payment_that_starts_processing_as_we_void_it_is_left_alone(
    api, make_payment_method, stripe_client, session, monkeypatch
):
    """A second card while the first waits for 3-D Secure, whose bank check finishes just
    after our read: Stripe then refuses to void the first invoice, its payment processing.
    Nothing is undone and the second card is not charged; the person is told to wait."""
    import stripe

    headers = auth_headers(api, "processing@example.com")
    first = subscribe(api, headers, make_payment_method("tok_threeDSecure2Required"))
    assert first.json()["status"] == "requires_action"
    real_retrieve = stripe.PaymentIntentService.retrieve
    refused: list[str] = []

    # The emulator has no "processing" payments: Stripe's two answers in that moment.
    def void_refused(self, invoice, *args, **kwargs):
        refused.append(invoice)
        raise stripe.InvalidRequestError("This invoice can no longer be voided.", "id")

    def retrieve(self, intent, *args, **kwargs):
        answer = real_retrieve(self, intent, *args, **kwargs)
        if refused:  # read after the refusal: the bank check finished meanwhile
            answer["status"] = "processing"
        return answer

    monkeypatch.setattr(stripe.InvoiceService, "void_invoice", void_refused)
    monkeypatch.setattr(stripe.PaymentIntentService, "retrieve", retrieve)
    second = subscribe(api, headers, make_payment_method("tok_visa"))
    assert second.status_code == 409, second.text
    assert second.json()["detail"] == service.STILL_PROCESSING
    assert len(refused) == 1
    subs, paid = stripe_state(session, stripe_client, "processing@example.com")
    # The first attempt is still there, not cancelled; no second attempt, no charge.
    assert [s.status for s in subs] == ["incomplete"] and paid == []


def test_a_late_retry_whose_first_attempt_expired_makes_a_new_attempt_not_a_replay(
    api, make_payment_method, stripe_client, session, recording_dies_once, monkeypatch
):
    """The first request died after Stripe made an attempt needing 3-D Secure, which then
    expired; the person retries a day later with the same card. The expired attempt is
    recorded, and the retry is a new attempt under a new key: not Stripe's replay of the
    expired one (which Stripe may keep a little longer than the 23 hours we count on)."""
    from datetime import timedelta

    from subscription_app.billing import service

    headers = auth_headers(api, "expired-attempt@example.com")
    card = make_payment_method("tok_threeDSecure2Required")
    assert subscribe(api, headers, card).status_code == 500
    [first] = stripe_state(session, stripe_client, "expired-attempt@example.com")[0]
    stripe_client.v1.invoices.void_invoice(first.latest_invoice)  # it expires unpaid
    monkeypatch.setattr(service, "IDEMPOTENCY_KEYS_KEPT", timedelta(0))  # a day later
    retry = subscribe(api, headers, card)
    assert retry.status_code == 200, retry.text
    assert retry.json()["status"] == "requires_action"
    subs, paid = stripe_state(session, stripe_client, "expired-attempt@example.com")
    assert sorted(s.status for s in subs) == ["incomplete", "incomplete_expired"]
    assert paid == []


def _authenticate(stripe_client, secret: str) -> None:
    """The person finishes the bank's 3-D Secure check for `secret` (in some tab)."""
    stripe_client.raw_request(
        "post",
        f"/v1/payment_intents/{secret.split('_secret_')[0]}/_authenticate",
        client_secret=secret,
        success="true",
    )


def test_confirm_keeps_a_payment_finished_between_its_read_and_the_undo(
    api, make_payment_method, stripe_client, session, monkeypatch
):
    """`/confirm` reads the payment as still waiting for the bank, which then finishes: the
    paid subscription is kept and reported active, never cancelled after payment."""
    from subscription_app.billing import service

    headers = auth_headers(api, "confirm-raced@example.com")
    first = subscribe(api, headers, make_payment_method("tok_threeDSecure2Required"))
    assert first.json()["status"] == "requires_action"
    read_payment = service._payment_of

    def then_finished(client, snapshot):
        payment = read_payment(client, snapshot)  # still waiting for the bank, as read
        if payment is not None and payment.status == "requires_action":
            _authenticate(stripe_client, first.json()["client_secret"])
        return payment

    monkeypatch.setattr(service, "_payment_of", then_finished)
    confirmed = api.post("/api/v1/subscriptions/confirm", headers=headers)
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["status"] == "active"
    subs, paid = stripe_state(session, stripe_client, "confirm-raced@example.com")
    assert [s.status for s in subs] == ["active"] and len(paid) == 1


def test_confirm_of_a_replaced_attempt_leaves_the_newer_one_alone(
    api, make_payment_method, stripe_client, session
):
    """Tab A's bank check ends after tab B started a newer attempt: A's confirm is a 409 and
    B's attempt, its bank check still open, is not undone; B then completes."""
    headers = auth_headers(api, "two-tabs-3ds@example.com")
    tab_a = subscribe(api, headers, make_payment_method("tok_threeDSecure2Required")).json()
    tab_b = subscribe(api, headers, make_payment_method("tok_threeDSecure2Required")).json()
    assert tab_a["status"] == tab_b["status"] == "requires_action"

    late = api.post(
        "/api/v1/subscriptions/confirm",
        json={"payment_intent_id": tab_a["client_secret"].split("_secret_")[0]},
        headers=headers,
    )
    assert late.status_code == 409, late.text
    assert "replaced by a newer one" in late.json()["detail"]
    subs, _ = stripe_state(session, stripe_client, "two-tabs-3ds@example.com")
    assert sorted(s.status for s in subs) == ["incomplete", "incomplete_expired"]

    _authenticate(stripe_client, tab_b["client_secret"])
    done = api.post(
        "/api/v1/subscriptions/confirm",
        json={"payment_intent_id": tab_b["client_secret"].split("_secret_")[0]},
        headers=headers,
    )
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "active"
    subs, paid = stripe_state(session, stripe_client, "two-tabs-3ds@example.com")
    assert len(live(subs)) == 1 and len(paid) == 1


@pytest.mark.parametrize("payment_intent_id", ["seti_123", "pi_" + "a" * 300, 7, "pi_1'; --"])
def test_confirm_refuses_a_malformed_payment_intent_id(api, payment_intent_id):
    headers = auth_headers(api, f"bad-pi-{abs(hash(str(payment_intent_id)))}@example.com")
    answer = api.post(
        "/api/v1/subscriptions/confirm",
        json={"payment_intent_id": payment_intent_id},
        headers=headers,
    )
    assert answer.status_code == 422, answer.text


def test_undoing_an_attempt_that_ended_meanwhile_is_not_a_payment_method_error(
    api, make_payment_method, stripe_client, session, monkeypatch
):
    """The 3-D Secure attempt expires between our read and our cancel: Stripe refuses to
    cancel what has ended (resource_missing). That attempt is undone all the same, and the
    new card goes ahead."""
    from subscription_app.billing import service

    headers = auth_headers(api, "expired-meanwhile@example.com")
    first = subscribe(api, headers, make_payment_method("tok_threeDSecure2Required"))
    assert first.json()["status"] == "requires_action"
    from subscription_app.billing import sync

    real_change = sync.change_subscription
    # The void's end of the attempt is not in our read yet (so we go on to cancel it)...
    monkeypatch.setattr(service, "_void_first_invoice", lambda client, snapshot: True)

    def ended_first(**kwargs):
        # ... and Stripe ends it before our cancel arrives.
        stripe_client.v1.subscriptions.cancel(kwargs["subscription_id"])
        return real_change(**kwargs)

    monkeypatch.setattr(sync, "change_subscription", ended_first)
    second = subscribe(api, headers, make_payment_method("tok_visa"))
    assert second.status_code == 200, second.text
    assert second.json()["status"] == "active"
    subs, paid = stripe_state(session, stripe_client, "expired-meanwhile@example.com")
    assert len(live(subs)) == 1 and len(paid) == 1


def test_an_answer_lost_after_stripe_made_the_subscription_does_not_say_nothing_was_charged(
    api, make_payment_method, stripe_client, session, monkeypatch
):
    """Stripe made (and charged) the subscription, and its answer was lost on the way back:
    the person is not told "Nothing was charged"; their retry gets the same subscription."""
    import stripe

    _made_then_failed_once(monkeypatch, stripe.APIConnectionError("The connection was reset."))
    headers = auth_headers(api, "lost-answer@example.com")
    card = make_payment_method("tok_visa")
    lost = subscribe(api, headers, card)
    assert lost.status_code == 424, lost.text
    assert lost.json()["detail"] == service.UNCONFIRMED
    assert "Nothing was charged" not in lost.text
    retry = subscribe(api, headers, card)
    assert retry.status_code == 200, retry.text
    assert retry.json()["status"] == "active"
    subs, paid = stripe_state(session, stripe_client, "lost-answer@example.com")
    assert len(subs) == 1 and len(paid) == 1


def test_confirm_that_cannot_reach_stripe_does_not_say_nothing_was_charged(
    api, make_payment_method, stripe_client, session, monkeypatch
):
    """The bank's check finished (the payment went through); reading the subscription back
    fails: "Nothing was charged" would be false."""
    import stripe

    headers = auth_headers(api, "confirm-unreachable@example.com")
    first = subscribe(api, headers, make_payment_method("tok_threeDSecure2Required"))
    assert first.json()["status"] == "requires_action"
    _authenticate(stripe_client, first.json()["client_secret"])

    def unreachable(*args, **kwargs):
        raise stripe.APIConnectionError("The connection was reset.")

    monkeypatch.setattr(sync, "fetch_subscription", unreachable)
    confirmed = api.post("/api/v1/subscriptions/confirm", headers=headers)
    assert confirmed.status_code == 424, confirmed.text
    assert confirmed.json()["detail"] == service.UNCONFIRMED
